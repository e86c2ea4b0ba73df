#!/usr/bin/env python3
"""Side-by-side benchmark on an I/O-bound chain: courier-pyfilter against the original 3.0.6.

The chain is ``whitelist_dnswl``, ``whitelist_spf``, ``greylist`` in both daemons, against
the project's test DNS server (``tests/dnsserver.py``) listening on 127.0.0.1:53 and
answering every query 20 ms late.  The original resolves through the system resolver
(glibc ``gethostbyname``, and py3dns under pyspf, both reading ``/etc/resolv.conf``) on port
53 only, so the whole run happens in a private network and mount namespace:

1. outside: builds ``bench/cload.c`` and installs the original (with ``pyspf`` and
   ``py3dns``) from PyPI into the bench cache, as ``run_core.py`` does;
2. re-executes itself under ``unshare -mn`` (needs root): brings ``lo`` up and bind-mounts a
   ``resolv.conf`` saying ``nameserver 127.0.0.1`` over ``/etc/resolv.conf`` (the mount is
   private to the namespace; the host's file is untouched);
3. starts the DNS server (a child process running this script with ``--serve-dns``: the
   answers of ``tests/dnsserver.py``'s ``Zones`` for the bench's zone file, each sent 20 ms
   after its query arrived) and both daemons on the same chain and settings;
4. primes the greylist of each daemon (each sender once, answered ``451``; then,
   ``greylist_time`` = 1 s later, once more, answered ``200`` as the triplets pass), so that
   every measured message does all the work: the DNSWL lookup (NXDOMAIN), the SPF check
   (TXT record ``v=spf1 a -all``, then the ``a`` lookup: ``fail``) and the greylist store
   (read and refresh a passed triplet), and is answered ``200 Ok``;
5. measures each daemon at 1, 50 and 200 concurrent connections with cload (warm-up, then
   ``--repeat`` batches alternating between the daemons; the median batch is shown);
6. prints the table and the target ``p99 at 200 conns <= 1/3 of the original's``.

Messages vary (see :func:`control_text`): clients 192.0.2.1-254 (one greylist network)
and ``--senders`` sender domains (601, = greylist triplets), combined so that no (client,
sender) pair comes twice in a run and no two messages in flight share a client or a
sender domain.  Every zone has TTL 0 and negative TTL 0, so no resolver caches anything,
ours' SPF verdicts (kept 60 s per client, sender and HELO) are never reused, and no lookup
is shared between messages.

    python bench/run_io.py            # about 2 minutes, as root
    python bench/run_io.py --help

Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from run_core import (  # noqa: E402
    DEFAULT_CACHE,
    DEFAULT_OURS,
    BenchError,
    Daemon,
    LoadPolicy,
    Workload,
    build_cload,
    install_original,
    log,
    run_cload,
    start_original,
    start_ours,
    write_workload,
)

NS_ENV = "CPF_BENCH_IO_NAMESPACE"
"""Set (to the marker value) in the re-executed process that runs inside the namespace."""
NS_MARKER = "inside-unshare-mn"

CHAIN = ("whitelist_dnswl", "whitelist_spf", "greylist")
DNS_DELAY = 0.02
GREYLIST_TIME = 1
SPF_TARGET = "198.18.0.25"
"""The A record of every sender domain: not a client address, so ``v=spf1 a -all`` fails."""
CLIENT_NET = "192.0.2"
HOSTS = 254
"""Client addresses: 192.0.2.1 - 192.0.2.254, one greylist network."""
ORIGINAL_EXTRAS = ("pyspf==2.0.14", "py3dns")
"""The original's whitelist_spf imports ``spf`` (pyspf); pyspf 2.0.14 uses dnspython if it
is installed, else py3dns (``DNS``), which Debian's python3-spf uses too."""


def zone_text(dnswl_zones: Sequence[str]) -> str:
    """The bench's zones: empty DNSWLs (every name NXDOMAIN) and the senders' SPF zone."""
    soa = "{z}. IN SOA ns.{z}. hostmaster.{z}. 1 60 60 60 0"
    lines = ["$TTL 0"]
    lines += [soa.format(z=zone) for zone in dnswl_zones]
    lines += [
        soa.format(z="io.test"),
        '*.io.test. IN TXT "v=spf1 a -all"',
        f"*.io.test. IN A {SPF_TARGET}",
    ]
    return "\n".join(lines) + "\n"


def control_text(j: int, senders: int) -> str:
    """The control file of message number ``j`` of a run.

    Its client is host ``j mod 254`` of 192.0.2.0/24 and its sender ``user<g>@d<g>.io.test``
    with ``g = j mod senders``: as 254 and ``senders`` are coprime, no (client, sender)
    pair repeats within ``254 * senders`` messages, and any ``min(254, senders)``
    consecutive messages have different clients and different sender domains.  The
    greylist triplet (sender, recipient, client /24) depends on ``g`` only.
    """
    ip = f"{CLIENT_NET}.{j % HOSTS + 1}"
    g = j % senders
    helo = f"mail.d{g}.io.test"
    return textwrap.dedent(
        f"""\
        suser{g}@d{g}.io.test
        fdns; {helo} ({helo} [{ip}])
        e
        t
        M00000000001A2B3C.0000000067A0B1C2.{j:016X}
        rbob@courier.test
        Rrfc822;bob@courier.test
        N
        OTCPREMOTEIP={ip}
        usmtp
        E1796210427
        p1795634427
        W1795620027
        T
        """
    )


class Messages:
    """The run's sequence of control files, written as they are needed.

    Both daemons go through the same sequence (each from its own position): message ``j``
    is the same for both, and no (client, sender) pair comes twice to one daemon.
    """

    def __init__(self, work: Workload, senders: int) -> None:
        if math.gcd(HOSTS, senders) != 1 or senders < 2:
            raise BenchError(f"--senders must be coprime with {HOSTS} (an odd number, e.g. 601)")
        self.folder = work.control.parent / "io"
        self.folder.mkdir()
        self.senders = senders
        self.limit = HOSTS * senders
        self.written = 0
        self.position: dict[str, int] = {}

    def take(self, who: str, count: int) -> Path:
        """A cload ``-L`` list of the next ``count`` messages of ``who``."""
        start = self.position.get(who, 0)
        end = start + count
        if end > self.limit:
            raise BenchError(f"more than {self.limit} messages: raise --senders")
        for j in range(self.written, end):
            (self.folder / f"{j}.ctl").write_text(control_text(j, self.senders))
        self.written = max(self.written, end)
        self.position[who] = end
        listing = self.folder / f"list-{who}-{start}-{end}.txt"
        listing.write_text("".join(f"{self.folder / f'{j}.ctl'}\n" for j in range(start, end)))
        return listing


def original_modules_conf(dnswl_zones: Sequence[str]) -> str:
    """Sections for the original's pythonfilter-modules.conf ([ttldb] is run_core's: dbm)."""
    return (
        f"[whitelist_dnswl.py]\ndnswl_zone = {list(dnswl_zones)!r}\n"
        f"[greylist.py]\ngreylist_time = {GREYLIST_TIME}\n"
    )


def ours_modules_conf(dnswl_zones: Sequence[str]) -> str:
    """Sections for our modules.conf (the store is the default: SQLite in the state dir)."""
    return (
        "[dns]\nnameservers = ['127.0.0.1:53']\ntimeout = 5\n"
        f"[whitelist_dnswl.py]\ndnswl_zone = {list(dnswl_zones)!r}\n"
        f"[greylist.py]\ngreylist_time = {GREYLIST_TIME}\n"
    )


# --------------------------------------------------------------------------- namespace


def reexec_in_namespace(argv: Sequence[str]) -> None:
    """Replace this process by itself under ``unshare -mn`` (private network and mounts)."""
    if os.geteuid() != 0:
        raise BenchError("run_io.py needs root (unshare -mn, a DNS server on port 53)")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise BenchError("unshare not found (util-linux)")
    env = dict(os.environ)
    env[NS_ENV] = NS_MARKER
    log("re-executing inside unshare -mn (private network + mount namespace)")
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(
        unshare,
        [unshare, "-mn", "--", sys.executable, str(Path(__file__).resolve()), *argv],
        env,
    )


def setup_namespace(top: Path) -> None:
    """Inside the namespace: loopback up, ``/etc/resolv.conf`` -> nameserver 127.0.0.1.

    Refuses to touch anything unless this process really is in mount and network
    namespaces of its own (not those of the process that started it, which ran
    ``unshare``), so the host's ``/etc/resolv.conf`` stays as it is.
    """
    for ns in ("mnt", "net"):
        if os.readlink(f"/proc/self/ns/{ns}") == os.readlink(f"/proc/{os.getppid()}/ns/{ns}"):
            raise BenchError(f"not in a private {ns} namespace (run without {NS_ENV})")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = [ln.split(":")[1].strip() for ln in links.splitlines() if ":" in ln]
    if names != ["lo"]:
        raise BenchError(f"not in a private network namespace: links {names}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = top / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    seen = Path("/etc/resolv.conf").read_text()
    if seen.split() != ["nameserver", "127.0.0.1"]:
        raise BenchError(f"the bind-mounted /etc/resolv.conf reads {seen!r}")


# --------------------------------------------------------------------------- DNS server


def _question_end(packet: bytes) -> int:
    """Offset just past the question section (QNAME, QTYPE, QCLASS) of a query, or -1."""
    i = 12
    while i < len(packet):
        n = packet[i]
        if n == 0:
            return i + 5 if i + 5 <= len(packet) else -1
        if n & 0xC0:  # no compression in a question we would cache
            return -1
        i += n + 1
    return -1


def serve_dns(zone_file: str, port: int, delay: float, threads: bool) -> None:
    """Child process: the test DNS server on 127.0.0.1:``port``, plus a query counter.

    The answers are those of ``tests/dnsserver.py`` (its :class:`Zones`, with this bench's
    zone file).  With ``threads`` the server is ``tests/dnsserver.py``'s own (a thread per
    query, sleeping ``delay``).  Otherwise UDP is served from one thread: each query is
    answered by ``Zones`` (once per distinct question: the answers never change in a run,
    every TTL is 0 so no client caches them, and only the message id differs), and the
    reply is sent exactly ``delay`` seconds after the query arrived, from a timer heap.
    TCP (for truncated answers; none in this bench) is ``tests/dnsserver.py``'s.

    Prints ``DNS_SERVER=host:port`` when serving; then each line ``count`` on stdin is
    answered with the queries received so far (JSON); EOF on stdin stops it.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    import dnsserver  # type: ignore[import-not-found]

    text = Path(zone_file).read_text()
    if threads:
        server = dnsserver.start_server(text, port=port, delay_all=delay)
        print(f"DNS_SERVER={server.nameserver}", flush=True)
        seen = 0
        by_name: dict[str, int] = {}
        for line in sys.stdin:
            if line.strip() == "count":
                queries = server.queries[:]
                server.clear_log()
                seen += len(queries)
                for _, name in queries:
                    by_name[name] = by_name.get(name, 0) + 1
                print(json.dumps({"total": seen, "by_type": by_name}), flush=True)
        server.stop()
        return

    import heapq
    import selectors
    import socketserver

    zones = dnsserver.Zones(text)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    udp.bind(("127.0.0.1", port))
    udp.setblocking(False)
    tcp_cls = dnsserver._server_class(socketserver.TCPServer, socket.AF_INET)
    tcp = tcp_cls(("127.0.0.1", port), dnsserver._TCPHandler)
    tcp.zones = zones  # type: ignore[attr-defined]
    threading.Thread(target=tcp.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print(f"DNS_SERVER=127.0.0.1:{port}", flush=True)

    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(sys.stdin, selectors.EVENT_READ, "ctl")
    answers: dict[bytes, bytes | None] = {}
    due: list[tuple[float, int, bytes, Any]] = []
    seq = 0
    total = 0
    by_type: dict[int, int] = {}  # QTYPE number -> queries
    clock = time.monotonic
    while True:
        wait = max(0.0, due[0][0] - clock()) if due else None
        for key, _ in sel.select(wait):
            if key.data == "ctl":
                line = sys.stdin.readline()
                if not line:
                    tcp.shutdown()
                    return
                if line.strip() == "count":
                    names = {n: QTYPE_NAMES.get(n, str(n)) for n in by_type}
                    counts = {names[n]: c for n, c in by_type.items()}
                    print(json.dumps({"total": total, "by_type": counts}), flush=True)
                continue
            while True:
                try:
                    packet, addr = udp.recvfrom(4096)
                except BlockingIOError:
                    break
                arrived = clock()
                end = _question_end(packet)
                if end < 0:
                    continue
                total += 1
                qtype = int.from_bytes(packet[end - 4 : end - 2], "big")
                by_type[qtype] = by_type.get(qtype, 0) + 1
                cache_key = packet[2:4] + packet[12:end]
                if cache_key in answers:
                    body = answers[cache_key]
                else:
                    try:
                        request = dnsserver.DNSRecord.parse(packet)
                    except Exception:
                        continue
                    reply = zones.answer(request)
                    body = None
                    if reply is not None:
                        data = reply.pack()
                        if len(data) <= 512:
                            body = data[2:]
                            answers[cache_key] = body
                        else:  # too big for any UDP limit: truncated, as tests/dnsserver.py does
                            reply.rr = []
                            reply.auth = []
                            reply.header.tc = 1
                            body = reply.pack()[2:]
                    zones.clear_log()
                if body is not None:
                    seq += 1
                    heapq.heappush(due, (arrived + delay, seq, packet[:2] + body, addr))
        now = clock()
        while due and due[0][0] <= now:
            _, _, data, addr = heapq.heappop(due)
            with contextlib.suppress(OSError):
                udp.sendto(data, addr)


QTYPE_NAMES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    99: "SPF",
    255: "ANY",
}


@dataclass
class DnsServer:
    """The DNS server child process."""

    proc: subprocess.Popen[str]

    def counts(self) -> dict[str, Any]:
        """Queries answered so far: ``{"total": n, "by_type": {...}}``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Close its stdin (stop signal) and wait; kill it if it hangs."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_dns(zone_file: Path, delay: float, kind: str) -> DnsServer:
    """Start the DNS server child on 127.0.0.1:53; return once it serves."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-dns", str(zone_file)]
    argv += ["--delay", str(delay), "--dns-server", kind]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("DNS_SERVER="):
        proc.kill()
        proc.wait()
        raise BenchError(f"the test DNS server did not start: {line!r}")
    log(
        f"test DNS server ({kind}) on {line.partition('=')[2]}, every answer "
        f"{delay * 1000:g} ms late"
    )
    return DnsServer(proc)


def check_resolution(
    dns: DnsServer, dnswl_zones: Sequence[str], original_python: Path | None
) -> None:
    """Ask the server through the system resolver and through py3dns, as the original will."""
    code = textwrap.dedent(
        f"""\
        import socket, sys
        try:
            socket.gethostbyname("1.2.0.192.{dnswl_zones[0]}")
            sys.exit("the DNSWL lists 192.0.2.1")
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_NONAME:
                sys.exit(f"system resolver: {{exc}}")
        assert socket.gethostbyname("d1.io.test") == "{SPF_TARGET}"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    if original_python is not None:
        code = (
            "import spf; r = spf.check2('192.0.2.2', 'u@d2.io.test', 'mail.d2.io.test'); "
            "assert r[0] == 'fail', r; print(r)"
        )
        out = subprocess.run(
            [str(original_python), "-c", code],
            check=True,
            timeout=30,
            capture_output=True,
            text=True,
        )
        log(f"pyspf in the original's venv: {out.stdout.strip()}")
    dns.counts()  # forget these queries


# --------------------------------------------------------------------------- the original


def ensure_original_extras(venv: Path) -> None:
    """Install pyspf and py3dns into the original's venv (once)."""
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import spf, DNS"], capture_output=True)
    if probe.returncode == 0:
        return
    log(f"installing {' '.join(ORIGINAL_EXTRAS)} into {venv}")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "--disable-pip-version-check",
            "-q",
            "install",
            *ORIGINAL_EXTRAS,
        ],
        check=True,
    )


def original_versions(venv: Path) -> str:
    """``pyspf X, py3dns Y`` as installed in the original's venv."""
    code = (
        "from importlib.metadata import version as v; "
        "print(f\"pyspf {v('pyspf')}, py3dns {v('py3dns')}\")"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


# --------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Config:
    """Everything a run needs."""

    cload: Path
    original_venv: Path | None
    ours_exe: Path | None
    top: Path
    work: Workload
    messages_seq: Messages
    filters_dir: Path
    senders: int
    dnswl_zones: list[str]
    levels: list[int]
    messages: int
    messages_single: int
    warmup: int
    repeat: int
    max_concurrent: int
    policy: LoadPolicy
    timeout_s: float
    profile: Path | None
    dns_server: str
    delay: float


def start(cfg: Config, which: str) -> Daemon:
    """Start ``which`` on the I/O chain."""
    if which == "original":
        assert cfg.original_venv is not None
        return start_original(
            cfg.original_venv,
            cfg.top,
            CHAIN,
            cfg.filters_dir,
            "io",
            original_modules_conf(cfg.dnswl_zones),
        )
    assert cfg.ours_exe is not None
    return start_ours(
        cfg.ours_exe,
        cfg.top,
        CHAIN,
        cfg.filters_dir,
        "io",
        cfg.max_concurrent,
        cfg.work.tmp_dir,
        ours_modules_conf(cfg.dnswl_zones),
    )


def batch(
    cfg: Config,
    daemon: Daemon,
    dns: DnsServer,
    conns: int,
    messages: int,
    label: str,
    expect: str = "200",
) -> dict[str, Any]:
    """One cload batch, with the DNS server's queries and CPU time during it."""
    ctl_list = cfg.messages_seq.take(daemon.name, messages)
    q0 = dns.counts()["total"]
    c0 = dns.cpu_seconds()
    res = run_cload(
        cfg.cload,
        daemon,
        cfg.work,
        conns,
        messages,
        cfg.policy,
        label,
        timeout_s=cfg.timeout_s,
        expect=expect,
        ctl_list=ctl_list,
    )
    res["dns_cpu_s"] = round(dns.cpu_seconds() - c0, 3)
    res["dns_queries"] = dns.counts()["total"] - q0
    res["loadavg"] = os.getloadavg()[0]
    return res


def prime(cfg: Config, daemon: Daemon, dns: DnsServer, which: str) -> list[dict[str, Any]]:
    """Pass every distinct triplet through greylisting, so all later messages answer 200."""
    n = cfg.senders
    first = batch(cfg, daemon, dns, 50, n, f"{which}-prime-new", expect="451")
    time.sleep(GREYLIST_TIME + 0.5)
    second = batch(cfg, daemon, dns, 50, n, f"{which}-prime-pass")
    for res in (first, second):
        if res["ok"] != res["messages"]:
            raise BenchError(
                f"{which}: priming {res['label']}: {res['ok']}/{res['messages']} as expected; "
                f"first bad reply {res['first_bad_reply']!r}\n{daemon.log_tail()}"
            )
    log(
        f"{which:8} primed: {n} triplets greylisted then passed; DNS queries per message "
        f"{first['dns_queries'] / n:.2f}, {second['dns_queries'] / n:.2f}"
    )
    return [first, second]


@contextlib.contextmanager
def py_spy(daemon: Daemon, out: Path | None, seconds: float) -> Iterator[None]:
    """Record our daemon with py-spy while the block runs.

    Only samples of the thread holding the GIL are kept (``--gil``), so the profile says
    where the daemon's Python CPU time goes.  Format from the file name: ``.json``
    speedscope, ``.svg`` flame graph, else collapsed stacks (one line per stack).
    """
    exe = Path(sys.executable).parent / "py-spy"
    if out is None or not exe.exists():
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".json": "speedscope", ".svg": "flamegraph"}.get(out.suffix, "raw")
    proc = subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(daemon.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--gil",
            "--format",
            fmt,
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log(f"py-spy profile of ours written to {out}")


def measure(cfg: Config, which: Sequence[str], dns: DnsServer) -> dict[str, Any]:
    """Prime each daemon, then measure every level; batches alternate between the daemons."""
    daemons: dict[str, Daemon] = {}
    out: dict[str, Any] = {"prime": {}, "results": {w: [] for w in which}}
    try:
        for w in which:
            daemons[w] = start(cfg, w)
        for w, daemon in daemons.items():
            out["prime"][w] = prime(cfg, daemon, dns, w)
        for conns in cfg.levels:
            msgs = max(cfg.messages_single if conns == 1 else cfg.messages, conns)
            for w, daemon in daemons.items():
                warm = max(cfg.warmup if conns > 1 else cfg.warmup // 10, conns)
                batch(cfg, daemon, dns, conns, warm, f"{w}-warmup-{conns}")
            runs: dict[str, list[dict[str, Any]]] = {w: [] for w in daemons}
            for i in range(cfg.repeat):
                for w, daemon in daemons.items():
                    profile = (
                        cfg.profile if w == "ours" and i == 0 and conns == max(cfg.levels) else None
                    )
                    with py_spy(daemon, profile, 120):
                        res = batch(cfg, daemon, dns, conns, msgs, f"{w}-{conns}-run{i + 1}")
                    runs[w].append(res)
            for w, rows in runs.items():
                ranked = sorted(rows, key=lambda r: float(r["msg_per_s"]))
                res = dict(ranked[len(ranked) // 2])
                res["daemon"] = w
                res["runs_msg_per_s"] = [r["msg_per_s"] for r in rows]
                res["runs_p99_ms"] = [r["latency_ms"]["p99"] for r in rows]
                res["all_ok"] = all(r["ok"] == r["messages"] for r in rows)
                log(
                    f"{w:8} {conns:4} conns: {res['msg_per_s']:8.1f} msg/s  "
                    f"p50 {res['latency_ms']['p50']:.1f} ms  p99 {res['latency_ms']['p99']:.1f} ms"
                    f"  eagain {res['connect']['eagain']}  "
                    f"DNS q/msg {res['dns_queries'] / max(res['messages'], 1):.2f}"
                )
                out["results"][w].append(res)
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return out


# --------------------------------------------------------------------------- report


def report(data: dict[str, Any], cfg: Config, versions: str) -> list[str]:
    """The table and the target line."""
    results: dict[str, list[dict[str, Any]]] = data["results"]
    out = [
        "",
        f"I/O-bound chain: {' '.join(CHAIN)} (both daemons); DNS on 127.0.0.1:53 "
        f"({cfg.dns_server} server), every answer {cfg.delay * 1000:g} ms late, TTL 0",
        f"clients 192.0.2.1-254, {cfg.senders} senders (= greylist triplets, primed), no "
        "(client, sender) pair twice; every reply must start with 200",
        f"original: 3.0.6 with {versions}, TtlDb dbm; ours: [ttldb] default (SQLite)",
    ]
    head = f"{'conns':>5} {'daemon':<9} {'msgs':>6} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
    head += f"{'max ms':>8} {'ok':>6} {'EAGAIN':>7} {'CPU ms/msg':>10} {'DNS q/msg':>9} "
    head += f"{'DNS CPU ms/msg':>14}  p99 of each batch"
    out.append(head)
    by_level: dict[int, dict[str, dict[str, Any]]] = {}
    for d, rows in results.items():
        for r in rows:
            by_level.setdefault(r["concurrency"], {})[d] = r
    for conns in sorted(by_level):
        for d in ("original", "ours"):
            if d not in by_level[conns]:
                continue
            r = by_level[conns][d]
            n = max(r["ok"], 1)
            lat = r["latency_ms"]
            out.append(
                f"{conns:>5} {d:<9} {r['messages']:>6} {r['msg_per_s']:>8.1f} {lat['p50']:>8.1f} "
                f"{lat['p99']:>8.1f} {lat['max']:>8.1f} {r['ok']:>6} {r['connect']['eagain']:>7} "
                f"{r['daemon_cpu_s'] * 1000 / n:>10.3f} {r['dns_queries'] / n:>9.2f} "
                f"{r['dns_cpu_s'] * 1000 / n:>14.3f}  "
                + " ".join(f"{x:.0f}" for x in r["runs_p99_ms"])
            )
        pair = by_level[conns]
        if "original" in pair and "ours" in pair:
            o, u = pair["original"], pair["ours"]
            ratios = [
                u["msg_per_s"] / max(o["msg_per_s"], 1e-9),
                u["latency_ms"]["p50"] / max(o["latency_ms"]["p50"], 1e-9),
                u["latency_ms"]["p99"] / max(o["latency_ms"]["p99"], 1e-9),
            ]
            out.append(
                f"{'':>5} {'ours/orig':<9} {'':>6}" + "".join(f" {x:>7.2f}x" for x in ratios)
            )
    problems = [
        r for rows in results.values() for r in rows if r["ok"] != r["messages"] or not r["all_ok"]
    ]
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
    out.append("Target:")
    top_level = 200
    pair = by_level.get(top_level, {})
    if "original" in pair and "ours" in pair:
        ours_p99 = pair["ours"]["latency_ms"]["p99"]
        orig_p99 = pair["original"]["latency_ms"]["p99"]
        ok = ours_p99 * 3 <= orig_p99 and not problems
        out.append(
            f"  [{'PASS' if ok else 'FAIL'}] p99 at {top_level} conns <= 1/3 of the original's: "
            f"ours {ours_p99:.1f} ms, original {orig_p99:.1f} ms "
            f"(ratio {ours_p99 / max(orig_p99, 1e-9):.2f})"
        )
    else:
        out.append(
            f"  [ -- ] p99 at {top_level} conns <= 1/3 of the original's: not measured "
            "(needs both daemons at 200 connections)"
        )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="1,50,200", help="concurrency levels (default 1,50,200)")
    p.add_argument("--messages", type=int, default=3000, help="messages per batch (default 3000)")
    p.add_argument(
        "--messages-single", type=int, default=100, help="messages per batch at 1 connection"
    )
    p.add_argument("--warmup", type=int, default=600, help="warm-up messages per level")
    p.add_argument("--repeat", type=int, default=3, help="measured batches per level (median)")
    p.add_argument(
        "--senders",
        type=int,
        default=601,
        help="sender domains = greylist triplets, coprime with 254 (default 601)",
    )
    p.add_argument(
        "--dnswl-zones", default="wl.test", help="DNSWL zones, comma-separated (default wl.test)"
    )
    p.add_argument("--only", choices=("both", "original", "ours"), default="both")
    p.add_argument("--ours", type=Path, default=DEFAULT_OURS, help="our pythonfilter executable")
    p.add_argument("--max-concurrent", type=int, default=2000, help="ours: max_concurrent")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache dir (venv, build)")
    p.add_argument(
        "--retry-ms", type=float, default=10.0, help="pause before an EAGAIN retry (default 10)"
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="record ours with py-spy during its first batch at the "
        "highest level (FILE.svg: flame graph, FILE.json: speedscope, else collapsed stacks)",
    )
    p.add_argument(
        "--dns-server",
        choices=("timer", "threads"),
        default="timer",
        help="timer: one thread, replies sent from a timer heap (default); threads: "
        "tests/dnsserver.py's own server, a thread per query",
    )
    p.add_argument("--json", type=Path, help="also write all raw results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--serve-dns", metavar="ZONEFILE", help=argparse.SUPPRESS)
    p.add_argument(
        "--delay", type=float, default=DNS_DELAY, help="DNS answer delay in s (default 0.02)"
    )
    p.add_argument("--port", type=int, default=53, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Set up outside, re-execute in the namespace, run the benchmark there."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.serve_dns:
        serve_dns(args.serve_dns, args.port, args.delay, args.dns_server == "threads")
        return 0
    want = ["original", "ours"] if args.only == "both" else [args.only]
    cache: Path = args.cache
    if os.environ.get(NS_ENV) != NS_MARKER:
        # Outside the namespace: everything that needs the network (PyPI) happens here.
        cache.mkdir(parents=True, exist_ok=True)
        build_cload(cache)
        if "original" in want:
            ensure_original_extras(install_original(cache))
        if "ours" in want and not args.ours.exists():
            raise BenchError(f"our daemon {args.ours} not found (use --ours or --only original)")
        reexec_in_namespace(raw)  # does not return
    cload = build_cload(cache)
    venv = install_original(cache) if "original" in want else None
    versions = original_versions(venv) if venv is not None else "-"
    dnswl_zones = [z for z in args.dnswl_zones.split(",") if z]
    top = Path(tempfile.mkdtemp(prefix="cpf-bench-io-"))
    dns: DnsServer | None = None
    try:
        setup_namespace(top)
        zone_file = top / "io.zone"
        zone_file.write_text(zone_text(dnswl_zones))
        dns = start_dns(zone_file, args.delay, args.dns_server)
        check_resolution(dns, dnswl_zones, venv / "bin" / "python" if venv else None)
        work = write_workload(top)
        filters_dir = top / "filters"
        filters_dir.mkdir()
        cfg = Config(
            cload=cload,
            original_venv=venv,
            ours_exe=args.ours if "ours" in want else None,
            top=top,
            work=work,
            messages_seq=Messages(work, args.senders),
            filters_dir=filters_dir,
            senders=args.senders,
            dnswl_zones=dnswl_zones,
            levels=[int(x) for x in args.levels.split(",") if x],
            messages=args.messages,
            messages_single=args.messages_single,
            warmup=args.warmup,
            repeat=max(1, args.repeat),
            max_concurrent=args.max_concurrent,
            policy=LoadPolicy(retries=-1, retry_ms=args.retry_ms),
            timeout_s=120.0,
            profile=args.profile,
            dns_server=args.dns_server,
            delay=args.delay,
        )
        if max(cfg.levels) > min(HOSTS, cfg.senders):
            log(
                f"warning: more than {min(HOSTS, cfg.senders)} connections: messages in flight "
                "share clients or sender domains (and so lookups)"
            )
        t0 = time.monotonic()
        load_before = os.getloadavg()
        data = measure(cfg, want, dns)
        lines = report(data, cfg, versions)
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
            args.json.write_text(json.dumps({**data, "args": vars(args)}, default=str))
    finally:
        if dns is not None:
            dns.stop()
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
