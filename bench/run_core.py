#!/usr/bin/env python3
"""Side-by-side benchmark: courier-pyfilter against the original courier-pythonfilter 3.0.6.

One run of this script:

1. builds the C load generator ``bench/cload.c`` with ``gcc -O2`` into a cache directory;
2. installs courier-pythonfilter 3.0.6 from PyPI into its own virtual environment
   (cached under ``~/.cache/courier-pyfilter-bench``);
3. writes a realistic Courier control file and a small message into a temporary
   directory, plus bench-owned filter modules (``noop`` and ``sleepy``) for both daemons;
4. throughput: starts each daemon with a trivial chain and drives it through its real
   socket at each concurrency level (default 1, 50 and 500 connections): a warm-up,
   then the measured batch; prints msg/s and p50/p99 latency;
5. memory: starts each daemon with a slow chain (a filter that sleeps), puts 1,000
   messages in flight at once with Courier's connect policy (5 retries, 1 s apart on
   EAGAIN) and reports refused/retried connections, the peak RSS of each daemon and the
   time until all messages were answered;
6. prints a table and the verdict against the targets.

Run it with ``python bench/run_core.py`` (``--help`` for the knobs).  Nothing here is
part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CLOAD_SRC = BENCH_DIR / "cload.c"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
    "courier-pyfilter-bench"
)
ORIGINAL_VERSION = "3.0.6"
DEFAULT_OURS = Path(sys.prefix) / "bin" / "pythonfilter"
if not DEFAULT_OURS.exists():
    DEFAULT_OURS = Path("/work/venv/bin/pythonfilter")

MESSAGE_ID = "M00000000001A2B3C.0000000067A0B1C2.0000000000004D2E"

CONTROL_FILE = textwrap.dedent(
    f"""\
    salice@example.org
    fdns; mail.example.org (mail.example.org [192.0.2.25])
    e
    t
    {MESSAGE_ID}
    rbob@courier.test
    rbob@courier.test
    N
    rcarol@courier.test
    rcarol@courier.test
    NSF
    OTCPREMOTEIP=192.0.2.25
    usmtp
    E1796210427
    p1795634427
    W1795620027
    T
    """
)

DATA_FILE = textwrap.dedent(
    """\
    Received: from mail.example.org (mail.example.org [192.0.2.25])
      by mx.courier.test with ESMTP; Mon, 24 Nov 2025 10:15:02 +0000
      id 00000000001A2B3C.0000000067A0B1C2.0000000000004D2E
    From: Alice Example <alice@example.org>
    To: Bob <bob@courier.test>, Carol <carol@courier.test>
    Subject: Quarterly figures
    Date: Mon, 24 Nov 2025 10:15:01 +0000
    Message-ID: <20251124101501.4711@mail.example.org>
    MIME-Version: 1.0
    Content-Type: text/plain; charset=utf-8
    Content-Transfer-Encoding: 8bit

    Hello Bob, hello Carol,

    the figures for the last quarter are attached to the shared folder as
    usual.  Revenue is up 4 % and the support queue is down to 17 tickets.

    Could you both have a look before Thursday's meeting?

    Thanks,
    Alice
    """
)

# Legacy (3.0.6-style) filters, loaded by the original from the bench's own directory.
LEGACY_NOOP = '''\
"""Bench filter: no decision."""


def do_filter(body_path, control_paths):
    return ""
'''

LEGACY_SLEEPY = '''\
"""Bench filter: hold the message for {seconds} s, then no decision."""
import time


def do_filter(body_path, control_paths):
    time.sleep({seconds})
    return ""
'''

# courier-pyfilter filters, loaded by ours from the bench's own directory.
ASYNC_NOOP = '''\
"""Bench filter: no decision."""
from courier_pyfilter.decision import CONTINUE


async def check(message, ctx):
    return CONTINUE
'''

ASYNC_SLEEPY = '''\
"""Bench filter: hold the message for {seconds} s, then no decision."""
import asyncio

from courier_pyfilter.decision import CONTINUE


async def check(message, ctx):
    await asyncio.sleep({seconds})
    return CONTINUE
'''

# Runs the original's main script with the modules.conf search redirected and the bench
# filter directory appended to the ``pythonfilter`` package path.
ORIGINAL_WRAPPER = """\
import runpy
import sys

import courier.config
import pythonfilter

courier.config._standard_config_paths = [sys.argv[1]]
pythonfilter.__path__.append(sys.argv[3])
sys.argv = [sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class BenchError(RuntimeError):
    """The benchmark could not be set up or a daemon misbehaved."""


def log(msg: str) -> None:
    """Print a progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def build_cload(cache: Path) -> Path:
    """Compile bench/cload.c into ``cache/build/cload`` unless an up-to-date binary exists."""
    out = cache / "build" / "cload"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_mtime >= CLOAD_SRC.stat().st_mtime:
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("gcc not found (apt-get install -y --no-install-recommends gcc libc6-dev)")
    log(f"building {out}")
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(CLOAD_SRC)], check=True)
    return out


def install_original(cache: Path) -> Path:
    """Install courier-pythonfilter 3.0.6 into ``cache/original-3.0.6/venv``; return the venv."""
    root = cache / f"original-{ORIGINAL_VERSION}"
    venv = root / "venv"
    marker = root / "installed"
    if marker.exists() and (venv / "bin" / "pythonfilter").exists():
        return venv
    log(f"installing courier-pythonfilter {ORIGINAL_VERSION} into {venv}")
    root.mkdir(parents=True, exist_ok=True)
    sdist_dir = root / "dist"
    sdist_dir.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"courier-pythonfilter=={ORIGINAL_VERSION}",
            "-d",
            str(sdist_dir),
        ],
        check=True,
    )
    sdists = sorted(sdist_dir.glob(f"courier*pythonfilter-{ORIGINAL_VERSION}.tar.gz"))
    if not sdists:
        raise BenchError(f"no sdist downloaded into {sdist_dir}")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    venv_pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*venv_pip, "install", str(sdists[0])], check=True)
    marker.write_text(ORIGINAL_VERSION + "\n")
    return venv


@dataclass(frozen=True)
class Workload:
    """The files every request points at, shared by both daemons."""

    tmp_dir: Path
    data: Path
    control: Path


def write_workload(top: Path) -> Workload:
    """Create the message data file and its control file in a Courier-like spool ``tmp``."""
    tmp_dir = top / "spool" / "tmp"
    msgs = tmp_dir / "19756"
    msgs.mkdir(parents=True)
    data = msgs / "D1715004"
    control = msgs / "1764000000.19756.mx.courier.test"
    data.write_text(DATA_FILE)
    control.write_text(CONTROL_FILE)
    return Workload(tmp_dir=tmp_dir, data=data, control=control)


def write_filters(top: Path, sleep_s: float) -> tuple[Path, Path]:
    """Write the bench filter modules; return (legacy dir, async dir)."""
    legacy = top / "filters-legacy"
    modern = top / "filters-async"
    legacy.mkdir()
    modern.mkdir()
    (legacy / "noop.py").write_text(LEGACY_NOOP)
    (legacy / "sleepy.py").write_text(LEGACY_SLEEPY.format(seconds=sleep_s))
    (modern / "noop.py").write_text(ASYNC_NOOP)
    (modern / "sleepy.py").write_text(ASYNC_SLEEPY.format(seconds=sleep_s))
    return legacy, modern


# --------------------------------------------------------------------------- daemons


@dataclass
class Daemon:
    """A running filter daemon, its socket and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    socket: Path
    log_path: Path
    rss_samples_kb: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """Process id of the daemon."""
        return self.proc.pid

    def status(self) -> dict[str, int]:
        """Numeric ``kB`` fields of /proc/PID/status (VmRSS, VmHWM, Threads, ...)."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                parts = value.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0])
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used so far."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """Last lines of the daemon's stderr."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 15.0) -> None:
        """Close stdin (the shutdown signal) and wait; escalate to SIGTERM/SIGKILL."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
        log(f"{self.name}: did not exit on stdin EOF within {grace} s, sending SIGTERM")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn(
    name: str, argv: Sequence[str], sock: Path, log_path: Path, cwd: Path, env: dict[str, str]
) -> Daemon:
    """Start a daemon with stdin held open and a readiness pipe on fd 3; wait until ready.

    Ready means: fd 3 reached EOF (courierfilter's convention), or the socket has existed for
    half a second (for a daemon that leaves fd 3 alone).
    """
    rfd, wfd = os.pipe()
    shell = f'exec 3>&{wfd} {wfd}>&-; exec "$@"'
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", shell, "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            pass_fds=(wfd,),
            start_new_session=True,
        )
    os.close(wfd)
    daemon = Daemon(name=name, proc=proc, socket=sock, log_path=log_path)
    deadline = time.monotonic() + 60
    seen_socket: float | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited during start-up:\n{daemon.log_tail()}")
            if time.monotonic() > deadline:
                daemon.stop(2)
                raise BenchError(f"{name} not ready after 60 s:\n{daemon.log_tail()}")
            ready, _, _ = select.select([rfd], [], [], 0.05)
            if ready and os.read(rfd, 4096) == b"":
                break
            if sock.exists():
                seen_socket = seen_socket or time.monotonic()
                if time.monotonic() - seen_socket > 0.5:
                    break
    finally:
        os.close(rfd)
    if not sock.exists():
        daemon.stop(2)
        raise BenchError(f"{name} signalled readiness but {sock} does not exist")
    return daemon


def start_original(
    venv: Path,
    top: Path,
    chain: Sequence[str],
    filters_dir: Path,
    tag: str,
    extra_modules_conf: str = "",
) -> Daemon:
    """Start courier-pythonfilter 3.0.6 standalone in a fake Courier layout under ``top``.

    ``extra_modules_conf`` is appended to its ``pythonfilter-modules.conf`` (filter sections).
    """
    root = top / f"original-{tag}"
    for sub in ("bin", "etc", "lib", "spool/allfilters", "spool/filters", "spool/tmp"):
        (root / sub).mkdir(parents=True)
    config = root / "bin" / "courier-config"
    config.write_text(
        "#!/bin/sh\n"
        f"echo sysconfdir={root / 'etc'}\n"
        f"echo localstatedir={root / 'spool'}\n"
        f"echo bindir={root / 'bin'}\n"
        f"echo sbindir={root / 'bin'}\n"
    )
    config.chmod(0o755)
    (root / "etc" / "me").write_text("mx.courier.test\n")
    (root / "etc" / "pythonfilter.conf").write_text("".join(f"{m}\n" for m in chain))
    modules_conf = root / "etc" / "pythonfilter-modules.conf"
    modules_conf.write_text(f"[ttldb]\ntype = 'dbm'\ndir = '{root / 'lib'}'\n" + extra_modules_conf)
    wrapper = root / "run_original.py"
    wrapper.write_text(ORIGINAL_WRAPPER)
    env = dict(os.environ)
    env["PATH"] = f"{root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("PYTHONPATH", None)
    argv = [
        str(venv / "bin" / "python"),
        str(wrapper),
        str(modules_conf),
        str(venv / "bin" / "pythonfilter"),
        str(filters_dir),
    ]
    sock = root / "spool" / "allfilters" / "pythonfilter"
    return spawn("original", argv, sock, root / "filter.log", root, env)


def start_ours(
    exe: Path,
    top: Path,
    chain: Sequence[str],
    filters_dir: Path,
    tag: str,
    max_concurrent: int,
    tmp_dir: Path,
    extra_modules_conf: str = "",
) -> Daemon:
    """Start our daemon with a chain file and a modules.conf under ``top``.

    ``extra_modules_conf`` is appended to the modules.conf (filter and ``[dns]`` sections).
    """
    root = top / f"ours-{tag}"
    (root / "etc").mkdir(parents=True)
    (root / "state").mkdir()
    chain_conf = root / "pythonfilter.conf"
    chain_conf.write_text("".join(f"{m}\n" for m in chain))
    modules_conf = root / "pythonfilter-modules.conf"
    settings = {
        "filter_path": [str(filters_dir)],
        "max_concurrent": max_concurrent,
        "tmp_dir": str(tmp_dir),
        "sysconfdir": str(root / "etc"),
        "state_dir": str(root / "state"),
    }
    lines = "".join(f"{key} = {value!r}\n" for key, value in settings.items())
    modules_conf.write_text("[courier-pyfilter]\n" + lines + extra_modules_conf)
    sock = root / "pythonfilter.sock"
    argv = [
        str(exe),
        "--socket",
        str(sock),
        "--config",
        str(chain_conf),
        "--modules-config",
        str(modules_conf),
    ]
    return spawn("ours", argv, sock, root / "filter.log", root, dict(os.environ))


def ours_has_module(exe: Path, module: str) -> bool:
    """True if our installation ships ``courier_pyfilter.filters.<module>``."""
    python = exe.parent / "python"
    code = (
        "import importlib.util, sys; "
        f"sys.exit(0 if importlib.util.find_spec('courier_pyfilter.filters.{module}') else 1)"
    )
    try:
        return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0
    except OSError:
        return False


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadPolicy:
    """How cload treats a full listen backlog (EAGAIN on connect)."""

    retries: int
    retry_ms: float


def run_cload(
    cload: Path,
    daemon: Daemon,
    work: Workload,
    conns: int,
    messages: int,
    policy: LoadPolicy,
    label: str,
    timeout_s: float = 120.0,
    expect: str = "200",
    ctl_list: Path | None = None,
) -> dict[str, Any]:
    """Run one cload batch against ``daemon``; return its JSON summary plus daemon CPU time.

    With ``ctl_list`` (a file naming one control file per line) the messages cycle through
    those control files instead of all using ``work.control``.
    """
    argv = [
        "nice",
        "-n",
        "0",
        str(cload),
        "-s",
        str(daemon.socket),
        "-d",
        str(work.data),
        *(["-L", str(ctl_list)] if ctl_list is not None else ["-c", str(work.control)]),
        "-n",
        str(conns),
        "-m",
        str(messages),
        "-e",
        expect,
        "-r",
        str(policy.retries),
        "-R",
        str(policy.retry_ms),
        "-t",
        str(timeout_s),
        "-l",
        label,
    ]
    cpu0 = daemon.cpu_seconds()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s + 60)
    cpu1 = daemon.cpu_seconds()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"cload printed no summary (rc={proc.returncode}): {proc.stderr}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["daemon_cpu_s"] = round(cpu1 - cpu0, 3)
    if not daemon.alive():
        raise BenchError(f"{daemon.name} died during {label}:\n{daemon.log_tail()}")
    return result


@contextlib.contextmanager
def rss_sampler(daemon: Daemon, threads: list[int], interval: float = 0.02) -> Iterator[None]:
    """Sample VmRSS into ``daemon.rss_samples_kb`` and the thread count into ``threads``."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                status = daemon.status()
                daemon.rss_samples_kb.append(status["VmRSS"])
                threads.append(status["Threads"])
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Config:
    """Everything a run needs."""

    cload: Path
    original_venv: Path | None
    ours_exe: Path | None
    top: Path
    work: Workload
    legacy_dir: Path
    async_dir: Path
    levels: list[int]
    messages: int
    messages_single: int
    warmup: int
    repeat: int
    inflight: int
    sleep_s: float
    original_chain: list[str]
    ours_chain: list[str]
    max_concurrent: int
    throughput_policy: LoadPolicy
    memory_policy: LoadPolicy


def throughput(cfg: Config, which: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Trivial-chain throughput of the daemons in ``which`` at every concurrency level.

    All daemons run at the same time (an idle one costs nothing) and the measured batches
    alternate between them, so drift in the machine's speed hits both alike.  Each level
    gets a warm-up per daemon, then ``cfg.repeat`` batches per daemon; the batch with the
    median msg/s is reported, the others are kept in ``runs_msg_per_s``.
    """
    daemons: dict[str, Daemon] = {}
    results: dict[str, list[dict[str, Any]]] = {w: [] for w in which}
    try:
        for w in which:
            daemons[w] = start_daemon(cfg, w, "trivial", slow=False)
        for conns in cfg.levels:
            msgs = max(cfg.messages_single if conns == 1 else cfg.messages, conns)
            for w, daemon in daemons.items():
                run_cload(
                    cfg.cload,
                    daemon,
                    cfg.work,
                    conns,
                    max(cfg.warmup, conns),
                    cfg.throughput_policy,
                    f"{w}-warmup-{conns}",
                )
            runs: dict[str, list[dict[str, Any]]] = {w: [] for w in daemons}
            for i in range(cfg.repeat):
                for w, daemon in daemons.items():
                    runs[w].append(
                        run_cload(
                            cfg.cload,
                            daemon,
                            cfg.work,
                            conns,
                            msgs,
                            cfg.throughput_policy,
                            f"{w}-{conns}-run{i + 1}",
                        )
                    )
            for w, batch in runs.items():
                ranked = sorted(batch, key=lambda r: float(r["msg_per_s"]))
                res = dict(ranked[len(ranked) // 2])
                res["daemon"] = w
                res["runs_msg_per_s"] = [r["msg_per_s"] for r in batch]
                res["all_ok"] = all(r["ok"] == r["messages"] for r in batch)
                log(
                    f"{w:8} {conns:4} conns: {res['msg_per_s']:8.1f} msg/s (median of "
                    f"{cfg.repeat}: {', '.join(f'{x:.0f}' for x in res['runs_msg_per_s'])})  "
                    f"p50 {res['latency_ms']['p50']:.2f} ms  p99 {res['latency_ms']['p99']:.2f} ms"
                    f"  eagain {res['connect']['eagain']}"
                )
                results[w].append(res)
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return results


def memory(cfg: Config, which: str) -> dict[str, Any]:
    """``cfg.inflight`` messages at once through a chain that sleeps, in two batches.

    Batch 1 ("admit all") retries EAGAIN every ``cfg.throughput_policy.retry_ms`` without a
    limit, so every message really gets in and the peak RSS is measured with all of them in
    flight; it also gives the time until all were answered.  Batch 2 ("Courier policy") uses
    submit's connect policy (5 retries, 1 s apart) and says how many messages Courier would
    have refused with ``432 Mail filters temporarily unavailable``.
    """
    daemon = start_daemon(cfg, which, "memory", slow=True)
    threads: list[int] = []
    try:
        idle = daemon.status()
        timeout = max(120.0, cfg.sleep_s * 20)
        with rss_sampler(daemon, threads):
            res = run_cload(
                cfg.cload,
                daemon,
                cfg.work,
                cfg.inflight,
                cfg.inflight,
                LoadPolicy(retries=-1, retry_ms=cfg.throughput_policy.retry_ms),
                f"{which}-inflight-{cfg.inflight}",
                timeout_s=timeout,
            )
        after = daemon.status()
        courier = run_cload(
            cfg.cload,
            daemon,
            cfg.work,
            cfg.inflight,
            cfg.inflight,
            cfg.memory_policy,
            f"{which}-inflight-{cfg.inflight}-courier-policy",
            timeout_s=timeout,
        )
        res["daemon"] = which
        res["idle_rss_kb"] = idle.get("VmRSS")
        res["vmhwm_kb"] = after.get("VmHWM")
        res["max_sampled_rss_kb"] = max(daemon.rss_samples_kb, default=None)
        res["max_threads"] = max(threads, default=None)
        res["courier_policy"] = courier
        log(
            f"{which:8} {cfg.inflight} in flight: all answered after {res['wall_s']:.2f} s, "
            f"ok {res['ok']}, max in flight {res['max_in_flight']}, "
            f"eagain {res['connect']['eagain']}, VmHWM {res['vmhwm_kb']} kB; Courier policy: "
            f"ok {courier['ok']}, eagain {courier['connect']['eagain']}, "
            f"refused {courier['connect']['refused_messages']}"
        )
    finally:
        daemon.stop()
    return res


def start_daemon(cfg: Config, which: str, tag: str, *, slow: bool) -> Daemon:
    """Start ``which`` ("original" or "ours") with the trivial or the sleeping chain."""
    if which == "original":
        assert cfg.original_venv is not None
        chain = ["sleepy"] if slow else cfg.original_chain
        return start_original(cfg.original_venv, cfg.top, chain, cfg.legacy_dir, tag)
    assert cfg.ours_exe is not None
    chain = ["sleepy"] if slow else cfg.ours_chain
    return start_ours(
        cfg.ours_exe, cfg.top, chain, cfg.async_dir, tag, cfg.max_concurrent, cfg.work.tmp_dir
    )


# --------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def report(
    tput: dict[str, list[dict[str, Any]]], mem: dict[str, dict[str, Any]], cfg: Config
) -> list[str]:
    """Render the result tables; return them as lines."""
    out: list[str] = []
    daemons = [d for d in ("original", "ours") if d in tput or d in mem]
    if tput:
        out.append("")
        out.append(
            f"Throughput, trivial chain (original: {' '.join(cfg.original_chain)}; "
            f"ours: {' '.join(cfg.ours_chain)}); reply must start with 200"
        )
        head = f"{'conns':>5} {'daemon':<9} {'msgs':>6} {'msg/s':>9} {'p50 ms':>8} "
        head += f"{'p99 ms':>8} {'max ms':>8} {'ok':>6} {'EAGAIN':>7} {'CPU ms/msg':>10}"
        head += "  msg/s of each batch"
        out.append(head)
    by_level: dict[int, dict[str, dict[str, Any]]] = {}
    for d, rows in tput.items():
        for r in rows:
            by_level.setdefault(r["concurrency"], {})[d] = r
    for conns in sorted(by_level):
        for d in daemons:
            if d not in by_level[conns]:
                continue
            r = by_level[conns][d]
            cpu = r["daemon_cpu_s"] * 1000 / max(r["ok"], 1)
            out.append(
                f"{conns:>5} {d:<9} {r['messages']:>6} {r['msg_per_s']:>9.1f} "
                f"{r['latency_ms']['p50']:>8.2f} {r['latency_ms']['p99']:>8.2f} "
                f"{r['latency_ms']['max']:>8.2f} {r['ok']:>6} {r['connect']['eagain']:>7} "
                f"{cpu:>10.3f}  {' '.join(f'{x:.0f}' for x in r['runs_msg_per_s'])}"
            )
        pair = by_level[conns]
        if "original" in pair and "ours" in pair and pair["original"]["msg_per_s"] > 0:
            ratio = pair["ours"]["msg_per_s"] / pair["original"]["msg_per_s"]
            out.append(f"{'':>5} {'ours/orig':<9} {'':>6} {ratio:>8.2f}x")
    if mem:
        out.append("")
        out.append(
            f"Memory: {cfg.inflight} messages at once, chain = one filter sleeping "
            f"{cfg.sleep_s:g} s"
        )
        out.append(
            f"  admit all (EAGAIN retried every {cfg.throughput_policy.retry_ms:g} ms, no limit):"
        )
        out.append(
            f"  {'daemon':<9} {'ok':>5} {'in flight':>9} {'EAGAIN':>7} {'retried':>8} "
            f"{'all answered s':>14} {'idle RSS MB':>11} {'max RSS MB':>10} {'VmHWM MB':>9} "
            f"{'threads':>7}"
        )
        for d in daemons:
            if d not in mem:
                continue
            r = mem[d]
            c = r["connect"]
            out.append(
                f"  {d:<9} {r['ok']:>5} {r['max_in_flight']:>9} {c['eagain']:>7} "
                f"{c['retried_messages']:>8} {r['wall_s']:>14.2f} {_mb(r['idle_rss_kb']):>11} "
                f"{_mb(r['max_sampled_rss_kb']):>10} {_mb(r['vmhwm_kb']):>9} "
                f"{_fmt(r['max_threads']):>7}"
            )
        out.append(
            f"  Courier's connect policy ({cfg.memory_policy.retries} retries, "
            f"{cfg.memory_policy.retry_ms:g} ms apart; refused = submit answers 432):"
        )
        out.append(
            f"  {'daemon':<9} {'ok':>5} {'in flight':>9} {'EAGAIN':>7} {'retried':>8} "
            f"{'refused':>8} {'all answered s':>14}"
        )
        for d in daemons:
            if d not in mem:
                continue
            r = mem[d]
            cp = r["courier_policy"]
            c = cp["connect"]
            out.append(
                f"  {d:<9} {cp['ok']:>5} {cp['max_in_flight']:>9} {c['eagain']:>7} "
                f"{c['retried_messages']:>8} {c['refused_messages']:>8} {cp['wall_s']:>14.2f}"
            )
    problems: list[dict[str, Any]] = []
    for rows in tput.values():
        problems.extend(r for r in rows if r["ok"] != r["messages"] or not r["all_ok"])
    for r in mem.values():
        problems.extend(x for x in (r, r["courier_policy"]) if x["ok"] != x["messages"])
    if problems:
        out.append("")
        out.append("Unanswered or wrong replies:")
        for r in problems:
            c = r["connect"]
            out.append(
                f"  {r['label']}: ok {r['ok']}/{r['messages']}, bad reply {r['bad_reply']}, "
                f"no reply {r['no_reply']}, timeouts {r['timeouts']}, io errors {r['io_errors']}, "
                f"refused {c['refused_messages']}; first bad reply: {r['first_bad_reply']!r}"
            )
    out.append("")
    out.append("Targets:")
    o50 = by_level.get(50, {})
    if "original" in o50 and "ours" in o50:
        ratio = o50["ours"]["msg_per_s"] / max(o50["original"]["msg_per_s"], 1e-9)
        ok = ratio >= 3.0
        out.append(f"  [{'PASS' if ok else 'FAIL'}] msg/s at 50 conns >= 3x original: {ratio:.2f}x")
    else:
        out.append("  [ -- ] msg/s at 50 conns >= 3x original: not measured (need both daemons)")
    if "ours" in mem:
        r = mem["ours"]
        cp = r["courier_policy"]
        refused = cp["connect"]["refused_messages"] + r["connect"]["refused_messages"]
        eagain = cp["connect"]["eagain"] + r["connect"]["eagain"]
        answered = r["ok"] + cp["ok"]
        ok = refused == 0 and eagain == 0 and answered == r["messages"] + cp["messages"]
        out.append(
            f"  [{'PASS' if ok else 'FAIL'}] {cfg.inflight} in flight without a refused "
            f"connection: answered {answered}/{r['messages'] + cp['messages']}, "
            f"EAGAIN {eagain}, refused {refused}"
        )
        if "original" in mem:
            ours_hwm, orig_hwm = r["vmhwm_kb"], mem["original"]["vmhwm_kb"]
            ok = ours_hwm is not None and orig_hwm is not None and ours_hwm <= orig_hwm
            out.append(
                f"  [{'PASS' if ok else 'FAIL'}] peak RSS (VmHWM) <= original: "
                f"ours {_mb(ours_hwm)} MB, original {_mb(orig_hwm)} MB"
            )
    else:
        out.append("  [ -- ] memory targets: not measured for ours")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="1,50,500", help="concurrency levels (default 1,50,500)")
    p.add_argument("--messages", type=int, default=8000, help="measured messages per level")
    p.add_argument(
        "--messages-single", type=int, default=3000, help="measured messages at 1 connection"
    )
    p.add_argument("--warmup", type=int, default=500, help="warm-up messages per level")
    p.add_argument("--repeat", type=int, default=3, help="measured batches per level (median)")
    p.add_argument("--inflight", type=int, default=1000, help="messages in flight (memory test)")
    p.add_argument("--sleep", type=float, default=5.0, help="seconds the slow filter sleeps")
    p.add_argument(
        "--original-chain", default="whitelist_auth", help="original's trivial chain (comma list)"
    )
    p.add_argument(
        "--ours-chain",
        default="auto",
        help="our trivial chain (comma list); auto = whitelist_auth if ported, else noop",
    )
    p.add_argument("--only", choices=("both", "original", "ours"), default="both")
    p.add_argument("--skip-memory", action="store_true", help="throughput only")
    p.add_argument("--skip-throughput", action="store_true", help="memory test only")
    p.add_argument("--ours", type=Path, default=DEFAULT_OURS, help="our pythonfilter executable")
    p.add_argument("--max-concurrent", type=int, default=2000, help="ours: max_concurrent")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache dir (venv, build)")
    p.add_argument(
        "--retry-ms", type=float, default=10.0, help="throughput runs: pause before EAGAIN retry"
    )
    p.add_argument("--json", type=Path, help="also write all raw results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    want = ["original", "ours"] if args.only == "both" else [args.only]
    cache: Path = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    cload = build_cload(cache)
    venv = install_original(cache) if "original" in want else None
    ours_exe: Path | None = None
    if "ours" in want:
        ours_exe = args.ours
        if not ours_exe.exists():
            raise BenchError(f"our daemon {ours_exe} not found (use --ours or --only original)")
    if args.ours_chain == "auto":
        has = ours_exe is not None and ours_has_module(ours_exe, "whitelist_auth")
        ours_chain = ["whitelist_auth"] if has else ["noop"]
    else:
        ours_chain = [m for m in args.ours_chain.split(",") if m]

    top = Path(tempfile.mkdtemp(prefix="cpf-bench-"))
    try:
        work = write_workload(top)
        legacy_dir, async_dir = write_filters(top, args.sleep)
        cfg = Config(
            cload=cload,
            original_venv=venv,
            ours_exe=ours_exe,
            top=top,
            work=work,
            legacy_dir=legacy_dir,
            async_dir=async_dir,
            levels=[int(x) for x in args.levels.split(",") if x],
            messages=args.messages,
            messages_single=args.messages_single,
            warmup=args.warmup,
            repeat=max(1, args.repeat),
            inflight=args.inflight,
            sleep_s=args.sleep,
            original_chain=[m for m in args.original_chain.split(",") if m],
            ours_chain=ours_chain,
            max_concurrent=args.max_concurrent,
            throughput_policy=LoadPolicy(retries=-1, retry_ms=args.retry_ms),
            memory_policy=LoadPolicy(retries=5, retry_ms=1000.0),
        )
        t0 = time.monotonic()
        load_before = os.getloadavg()
        tput: dict[str, list[dict[str, Any]]] = {}
        mem: dict[str, dict[str, Any]] = {}
        if not args.skip_throughput:
            tput = throughput(cfg, want)
        if not args.skip_memory:
            for which in want:
                mem[which] = memory(cfg, which)
        lines = report(tput, mem, cfg)
        load_after = os.getloadavg()
        lines.append(
            f"\n(total bench time {time.monotonic() - t0:.0f} s; load average before "
            f"{load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} CPUs; "
            f"work dir {top})"
        )
        if load_before[0] > 0.5:
            lines.append("warning: the machine was busy before the run; figures are noisy")
        print("\n".join(lines))
        if args.json:
            args.json.write_text(
                json.dumps({"throughput": tput, "memory": mem, "args": vars(args)}, default=str)
            )
    finally:
        if args.keep:
            log(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
