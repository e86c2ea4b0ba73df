"""A small authoritative DNS server for tests and benchmarks (UDP and TCP, one port).

It answers only from its own zones, never recurses and talks to nobody but its clients.
Records are ordinary zone-file text (parsed with dnslib, a test dependency); all test
records have TTL 0 (c-ares caches answers for their TTL), except in ``ttl.test``.

Answers, like a real authoritative server:

* records of the asked type -> NOERROR with them (a CNAME is followed inside the zones);
* a name that exists (or has names below it) without that type -> NOERROR, no answer
  (NODATA);
* an unknown name inside a zone -> NXDOMAIN; a name outside every zone -> REFUSED;
* ``*.zone`` records answer for unknown names below ``zone``.

Failure knobs (a name matches an entry equal to it or any entry it lies below):

* ``drop``: no answer at all (the client times out) - default ``{"timeout.test"}``;
* ``servfail``: SERVFAIL - default ``{"servfail.test"}``;
* ``refused``: REFUSED - default ``{"refused.test"}``;
* ``delay[name] = seconds`` and ``delay_all``: answer late (handlers are threads, so
  concurrent queries wait in parallel; ``delay_all = 0.02`` models a 20 ms resolver).

In a test process (threads; the asyncio loop of the test keeps running)::

    server = TestDnsServer().start()             # 127.0.0.1, a free port
    resolver_config = DnsConfig(nameservers=(server.nameserver,))   # "127.0.0.1:PORT"
    server.add("3.0.0.127.bl.test. 0 IN A 127.0.0.2")
    server.servfail.add("broken.bl.test")
    server.count("2.0.0.127.bl.test", "A")        # queries received so far
    server.stop()

As a separate process (benchmarks: no GIL shared with the load generator)::

    proc = spawn_server(delay_all=0.02)          # proc.nameserver, proc.port
    proc.stop()

or from a shell: ``python tests/dnsserver.py --port 5353 --delay 0.02``.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

try:
    from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
except ImportError as _exc:  # reported when a server is made (the fixture skips or fails)
    _DNSLIB_ERROR: ImportError | None = _exc
else:
    _DNSLIB_ERROR = None

# -- the test zones -----------------------------------------------------------------------------

LISTED_IP = "127.0.0.2"
"""Listed in bl.test (A 127.0.0.2, with TXT) and in bl2.test, and whitelisted in wl.test
(RFC 5782's test entry)."""
MULTI_CODE_IP = "127.0.0.4"
"""Listed in bl.test with two codes, 127.0.0.4 and 127.0.0.10; not in wl.test."""
BL2_ONLY_IP = "127.0.0.3"
"""Listed in bl2.test only, and whitelisted in wl2.test."""
ERROR_CODE_IP = "192.0.2.99"
"""bl.test answers 127.255.255.254 (an error code such as Spamhaus's "public resolver")."""
WL_BLOCKED_IP = "127.0.0.9"
"""wl.test answers 127.0.0.255 (dnswl.org's "you are blocked from querying")."""
LISTED_IP6 = "2001:db8::2"
"""Listed in bl.test and wl.test in nibble format."""
CLEAN_IP = "192.0.2.1"
"""In no list (NXDOMAIN everywhere)."""
LISTED_DOMAIN = "spammer.example.test"
"""Listed in the RHSBL dbl.test (127.0.1.2, with TXT)."""
PHISH_DOMAIN = "phish.example.test"
"""Listed in dbl.test with 127.0.1.4."""
CLEAN_DOMAIN = "example.test"


def _rev(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer.rsplit(".", 2)[0]


def _soa(zone: str) -> str:
    return f"{zone}. IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 60 0"


def default_zone_text() -> str:
    """The built-in zones (see the constants above and the comments in the text)."""
    return f"""
$TTL 0
; ---- DNSBL bl.test (reversed octets / nibbles) ----
{_soa("bl.test")}
{_rev(LISTED_IP)}.bl.test.          IN A   127.0.0.2
{_rev(LISTED_IP)}.bl.test.          IN TXT "Listed in bl.test, see https://bl.test/q?127.0.0.2"
{_rev(MULTI_CODE_IP)}.bl.test.      IN A   127.0.0.4
{_rev(MULTI_CODE_IP)}.bl.test.      IN A   127.0.0.10
{_rev(ERROR_CODE_IP)}.bl.test.      IN A   127.255.255.254
{_rev(LISTED_IP6)}.bl.test.         IN A   127.0.0.2
; ---- DNSBL bl2.test ----
{_soa("bl2.test")}
{_rev(LISTED_IP)}.bl2.test.         IN A   127.0.0.3
{_rev(BL2_ONLY_IP)}.bl2.test.       IN A   127.0.0.2
; ---- DNSWL wl.test (dnswl.org-style codes 127.0.<category>.<trust>) ----
{_soa("wl.test")}
{_rev(LISTED_IP)}.wl.test.          IN A   127.0.10.3
{_rev(LISTED_IP)}.wl.test.          IN TXT "Whitelisted in wl.test"
{_rev(LISTED_IP6)}.wl.test.         IN A   127.0.10.1
{_rev(WL_BLOCKED_IP)}.wl.test.      IN A   127.0.0.255
{_soa("wl2.test")}
{_rev(BL2_ONLY_IP)}.wl2.test.       IN A   127.0.10.2
; ---- RHSBL dbl.test ----
{_soa("dbl.test")}
{LISTED_DOMAIN}.dbl.test.           IN A   127.0.1.2
{LISTED_DOMAIN}.dbl.test.           IN TXT "Domain listed in dbl.test"
{PHISH_DOMAIN}.dbl.test.            IN A   127.0.1.4
; ---- SPF ----
{_soa("spf.test")}
pass.spf.test.                      IN TXT "v=spf1 ip4:127.0.0.1 -all"
fail.spf.test.                      IN TXT "v=spf1 -all"
softfail.spf.test.                  IN TXT "v=spf1 ~all"
neutral.spf.test.                   IN TXT "v=spf1 ?all"
include.spf.test.                   IN TXT "v=spf1 include:pass.spf.test -all"
twostrings.spf.test.                IN TXT "v=spf1 ip4:127.0.0.0/8" " -all"
tworecords.spf.test.                IN TXT "v=spf1 -all"
tworecords.spf.test.                IN TXT "google-site-verification=abc"
mx.spf.test.                        IN TXT "v=spf1 mx:dialback.test -all"
mx.spf.test.                        IN MX  10 mx1.dialback.test.
; ---- dialback / MX (preferences deliberately out of order) ----
{_soa("dialback.test")}
dialback.test.                      IN MX  20 mx2.dialback.test.
dialback.test.                      IN MX  10 mx1.dialback.test.
mx1.dialback.test.                  IN A   127.0.0.1
mx1.dialback.test.                  IN AAAA ::1
mx2.dialback.test.                  IN A   127.0.0.3
nomx.dialback.test.                 IN A   127.0.0.1
alias.dialback.test.                IN CNAME mx1.dialback.test.
deep.sub.dialback.test.             IN A   127.0.0.1
; ---- example.test: reverse-DNS targets and senders ----
{_soa("example.test")}
mail.example.test.                  IN A   127.0.0.5
{_soa("in-addr.arpa")}
1.0.0.127.in-addr.arpa.             IN PTR mx1.dialback.test.
5.0.0.127.in-addr.arpa.             IN PTR mail.example.test.
{_soa("ip6.arpa")}
{ipaddress.ip_address("::1").reverse_pointer}. IN PTR mx1.dialback.test.
; ---- TTLs for cache tests ----
{_soa("ttl.test")}
long.ttl.test.                  300 IN A   192.0.2.10
zero.ttl.test.                    0 IN A   192.0.2.11
; ---- failure zones (see the drop / servfail / refused knobs) ----
{_soa("timeout.test")}
{_soa("servfail.test")}
{_soa("refused.test")}
{_soa("slow.test")}
*.slow.test.                        IN A   127.0.0.2
"""


def _name(name: object) -> str:
    return str(name).rstrip(".").lower()


def _below(name: str, entries: Iterable[str]) -> bool:
    return any(name == e or name.endswith("." + e) for e in entries)


@dataclass
class _State:
    records: dict[str, list[Any]] = field(default_factory=dict)
    zones: set[str] = field(default_factory=set)
    drop: set[str] = field(default_factory=lambda: {"timeout.test"})
    servfail: set[str] = field(default_factory=lambda: {"servfail.test"})
    refused: set[str] = field(default_factory=lambda: {"refused.test"})
    delay: dict[str, float] = field(default_factory=dict)
    delay_all: float = 0.0


def txt_record(name: str, *strings: bytes, ttl: int = 0) -> Any:
    """A TXT record of raw byte strings (for data zone-file text cannot express)."""
    return RR(name, QTYPE.TXT, ttl=ttl, rdata=TXT(list(strings)))


class Zones:
    """The record store and the answering logic (thread-safe)."""

    def __init__(self, zone_text: str | None = None) -> None:
        if _DNSLIB_ERROR is not None:
            raise ImportError(
                f"the test DNS server needs dnslib (pip install -e '.[test]'): {_DNSLIB_ERROR}"
            )
        self._lock = threading.Lock()
        self._s = _State()
        self.queries: list[tuple[str, str]] = []
        """Every question received, ``(name, type)``, lower-case, in order."""
        self.add(default_zone_text() if zone_text is None else zone_text)

    # knobs, shared with the handler threads (mutate them in place or assign)
    @property
    def drop(self) -> set[str]:
        """Names (and everything below them) that get no answer."""
        return self._s.drop

    @property
    def servfail(self) -> set[str]:
        """Names (and everything below them) answered with SERVFAIL."""
        return self._s.servfail

    @property
    def refused(self) -> set[str]:
        """Names (and everything below them) answered with REFUSED."""
        return self._s.refused

    @property
    def delay(self) -> dict[str, float]:
        """Seconds to wait before answering a name (or anything below it)."""
        return self._s.delay

    @property
    def delay_all(self) -> float:
        """Seconds to wait before every answer (unless ``delay`` names the query)."""
        return self._s.delay_all

    @delay_all.setter
    def delay_all(self, value: float) -> None:
        self._s.delay_all = value

    def add(self, zone_text: str | Iterable[Any]) -> list[Any]:
        """Add records: zone-file text (``$TTL``/``$ORIGIN`` allowed) or dnslib ``RR``
        objects (e.g. for TXT data that is not ASCII); an SOA record makes a zone."""
        rrs = list(RR.fromZone(zone_text)) if isinstance(zone_text, str) else list(zone_text)
        with self._lock:
            for rr in rrs:
                key = _name(rr.rname)
                self._s.records.setdefault(key, []).append(rr)
                if rr.rtype == QTYPE.SOA:
                    self._s.zones.add(key)
        return rrs

    def remove(self, name: str, qtype: str | None = None) -> None:
        """Remove the records of ``name`` (only those of ``qtype`` if given)."""
        key = _name(name)
        with self._lock:
            kept = [
                rr
                for rr in self._s.records.get(key, [])
                if qtype is not None and QTYPE[rr.rtype] != qtype.upper()
            ]
            if kept:
                self._s.records[key] = kept
            else:
                self._s.records.pop(key, None)

    def count(self, name: str, qtype: str | None = None) -> int:
        """How many queries for ``name`` (of ``qtype``) arrived so far."""
        key = _name(name)
        with self._lock:
            return sum(1 for n, t in self.queries if n == key and (qtype is None or t == qtype))

    def clear_log(self) -> None:
        """Forget the queries received so far."""
        with self._lock:
            self.queries.clear()

    def snapshot(self) -> Any:
        """The records and knobs, for :meth:`restore`."""
        with self._lock:
            return copy.deepcopy(self._s)

    def restore(self, state: Any) -> None:
        """Go back to a :meth:`snapshot` (the query log is kept)."""
        with self._lock:
            self._s = copy.deepcopy(state)

    # -- answering ------------------------------------------------------------------------

    def _zone_of(self, name: str) -> str | None:
        labels = name.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self._s.zones:
                return candidate
        return None

    def _own(self, name: str, zone: str) -> list[Any]:
        own = self._s.records.get(name)
        if own:
            return list(own)
        labels = name.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            wild = self._s.records.get("*." + parent)
            if wild:
                return [
                    RR(rname=name + ".", rtype=r.rtype, rclass=r.rclass, ttl=r.ttl, rdata=r.rdata)
                    for r in wild
                ]
            if parent == zone:
                break
        return []

    def answer(self, request: Any) -> Any:
        """The reply to a parsed request, or None to send nothing."""
        qname = _name(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries.append((qname, qtype))
            s = self._s
            drop = _below(qname, s.drop)
            delay = next(
                (v for k, v in s.delay.items() if qname == k or qname.endswith("." + k)),
                s.delay_all,
            )
        if drop:
            return None
        if delay > 0:
            time.sleep(delay)
        reply = request.reply()
        reply.header.ra = 0
        with self._lock:
            s = self._s
            if _below(qname, s.servfail):
                reply.header.aa = 0
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            zone = self._zone_of(qname)
            if zone is None or _below(qname, s.refused):
                reply.header.aa = 0
                reply.header.rcode = RCODE.REFUSED
                return reply
            own = self._own(qname, zone)
            matches = [r for r in own if qtype == "ANY" or QTYPE[r.rtype] == qtype]
            if not matches and qtype != "CNAME":
                cnames = [r for r in own if r.rtype == QTYPE.CNAME]
                if cnames:
                    target = _name(cnames[0].rdata.label)
                    matches = cnames + [
                        r for r in s.records.get(target, []) if QTYPE[r.rtype] == qtype
                    ]
            for rr in matches:
                reply.add_answer(rr)
            exists = bool(own) or any(k.endswith("." + qname) for k in s.records)
            if not exists:
                reply.header.rcode = RCODE.NXDOMAIN
            if not matches:  # negative answer: the zone's SOA (minimum 0: not cached)
                reply.add_auth(*[r for r in s.records[zone] if r.rtype == QTYPE.SOA][:1])
        return reply


def _udp_limit(request: Any) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, int(rr.rclass))
    return 512


class _UDPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return
        reply = self.server.zones.answer(request)  # type: ignore[attr-defined]
        if reply is None:
            return
        packet = reply.pack()
        if len(packet) > _udp_limit(request):
            reply.rr = []
            reply.auth = []
            reply.header.tc = 1
            packet = reply.pack()
        sock.sendto(packet, self.client_address)


class _TCPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(30)
        while True:
            head = self._read(conn, 2)
            if head is None:
                return
            data = self._read(conn, struct.unpack("!H", head)[0])
            if data is None:
                return
            try:
                request = DNSRecord.parse(data)
            except Exception:
                return
            reply = self.server.zones.answer(request)  # type: ignore[attr-defined]
            if reply is not None:
                packet = reply.pack()
                conn.sendall(struct.pack("!H", len(packet)) + packet)

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = conn.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf


def _server_class(base: type, family: int) -> type:
    return type(
        base.__name__ + "DNS",
        (socketserver.ThreadingMixIn, base),
        {"daemon_threads": True, "allow_reuse_address": False, "address_family": family},
    )


class TestDnsServer(Zones):
    """:class:`Zones` served on ``host`` at ``port`` (0: a free port, same for UDP and TCP)."""

    __test__ = False  # not a test class

    def __init__(
        self, zone_text: str | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(zone_text)
        self.host = host
        self.port = port
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:PORT"`` (``"[::1]:PORT"`` for IPv6), as the resolver takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> TestDnsServer:
        """Bind UDP and TCP and serve in daemon threads; returns ``self``."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp_cls = _server_class(socketserver.UDPServer, family)
        tcp_cls = _server_class(socketserver.TCPServer, family)
        last: OSError | None = None
        for _ in range(20):
            udp = udp_cls((self.host, self.port), _UDPHandler)
            port = udp.server_address[1]
            try:
                tcp = tcp_cls((self.host, port), _TCPHandler)
            except OSError as exc:  # TCP port taken: try another free port
                udp.server_close()
                last = exc
                if self.port:
                    raise
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                server.zones = self  # type: ignore[attr-defined]
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"testdns-{port}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
            return self
        assert last is not None
        raise last

    def stop(self) -> None:
        """Stop serving and close the sockets."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers = []
        self._threads = []

    def __enter__(self) -> TestDnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    zone_text: str | None = None, *, host: str = "127.0.0.1", port: int = 0, delay_all: float = 0.0
) -> TestDnsServer:
    """Start a server in this process (threads) and return it; ``stop()`` it when done."""
    server = TestDnsServer(zone_text, host=host, port=port)
    server.delay_all = delay_all
    return server.start()


class ServerProcess:
    """A test DNS server in a child process (see :func:`spawn_server`)."""

    def __init__(self, proc: subprocess.Popen[str], host: str, port: int) -> None:
        self.proc = proc
        self.host = host
        self.port = port

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Terminate the child and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def spawn_server(
    *, port: int = 0, delay_all: float = 0.0, zone_file: str | None = None, timeout: float = 10
) -> ServerProcess:
    """Start ``python dnsserver.py`` as a child process; returns once it is serving."""
    cmd = [sys.executable, os.path.abspath(__file__), "--port", str(port)]
    cmd += ["--delay", str(delay_all)]
    if zone_file:
        cmd += ["--zone", zone_file]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    line = result[0].strip() if result else ""
    if not line.startswith("DNS_SERVER="):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"test DNS server did not start: {line!r}")
    host, _, port_text = line.partition("=")[2].rpartition(":")
    return ServerProcess(proc, host, int(port_text))


def main(argv: list[str] | None = None) -> None:
    """Command line: serve the test zones until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="Test DNS server (UDP+TCP) for courier-pyfilter")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--zone", help="zone file instead of the built-in test zones")
    parser.add_argument("--delay", type=float, default=0.0, help="delay every answer (s)")
    args = parser.parse_args(argv)
    text = None
    if args.zone:
        with open(args.zone, encoding="utf-8") as fh:
            text = fh.read()
    server = start_server(text, host=args.host, port=args.port, delay_all=args.delay)
    print(f"DNS_SERVER={server.nameserver}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
