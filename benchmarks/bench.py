#!/usr/bin/env python3
"""
Loopback benchmark: scrapes per second and latency, direct to a target versus
through a promtwist proxy and agent, plus the proxy's and agent's memory.

    .venv/bin/python benchmarks/bench.py                # about 90 s
    .venv/bin/python benchmarks/bench.py --duration 5 --payloads large

Every party is its own process: the target (this script, ``target`` mode),
``twistd -n promproxy-proxy``, ``twistd -n promproxy-agent`` (the twistd next
to this Python, so run it with the venv promtwist is installed in), and the
load generator: ``wrk`` when it is on PATH (Debian package ``wrk``), else
this script in ``loadgen`` mode (Twisted, one process; it needs more CPU per
request than wrk, which on a small machine takes CPU from what is measured).

All traffic stays on 127.0.0.1 and every run is bounded in time. Not part of
CI; see benchmarks/README.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

CONCURRENCY = 8
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


# ---------------------------------------------------------------------------
# Payloads: realistic Prometheus text, about 1 KB and about 90 KB.


def payload(target: int) -> bytes:
    """
    Prometheus text exposition of roughly C{target} bytes: counters,
    gauges and a histogram, like a small exporter.
    """
    lines: list[str] = []
    i = 0
    while sum(map(len, lines)) < target:
        family = f"bench_http_requests_{i // 40}"
        if i % 40 == 0:
            lines.append(f"# HELP {family}_total Requests handled, by handler and code.\n")
            lines.append(f"# TYPE {family}_total counter\n")
        handler = f"/api/v1/resource{i % 17}"
        code = (200, 404, 500)[i % 3]
        lines.append(f'{family}_total{{handler="{handler}",code="{code}"}} {i * 7919 % 100003}\n')
        i += 1
    text = "".join(lines)
    return text[:target].rsplit("\n", 1)[0].encode("ascii") + b"\n"


PAYLOADS = {"small": payload(1024), "large": payload(90 * 1024)}


# ---------------------------------------------------------------------------
# Target mode: a Twisted web server, in its own process.


def runTarget(port: int) -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Metrics(Resource):
        isLeaf = True

        def __init__(self, body: bytes) -> None:
            super().__init__()
            self.body = body
            # Like the Prometheus client libraries: gzip when asked (the
            # compressed body is computed once, as a fast exporter would).
            self.gzipped = gzip.compress(body, 6)

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
            accept = (request.getHeader(b"Accept-Encoding") or b"").lower()
            if b"gzip" in accept:
                request.setHeader(b"Content-Encoding", b"gzip")
                return self.gzipped
            return self.body

    root = Resource()
    for name, body in PAYLOADS.items():
        root.putChild(name.encode(), Metrics(body))
    site = Site(root)
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()


# ---------------------------------------------------------------------------
# Load generator mode (used when wrk is not installed).


def runLoadgen(url: str, concurrency: int, duration: float, headers: list[str]) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.task import react
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers

    del reactor

    async def main(reactor) -> None:  # type: ignore[no-untyped-def]
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = concurrency
        agent = Agent(reactor, pool=pool)
        hdrs = Headers()
        for header in headers:
            name, _, value = header.partition(":")
            hdrs.addRawHeader(name.strip().encode(), value.strip().encode())
        latencies: list[float] = []
        errors = 0
        end = time.monotonic() + duration

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t = time.monotonic()
                try:
                    response = await agent.request(b"GET", url.encode(), hdrs)
                    await readBody(response)
                    if response.code != 200:
                        errors += 1
                        continue
                except Exception:  # noqa: BLE001 - counted as a failed request
                    errors += 1
                    continue
                latencies.append(time.monotonic() - t)

        started = time.monotonic()
        await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
        elapsed = time.monotonic() - started
        await pool.closeCachedConnections()
        latencies.sort()
        print(
            json.dumps(
                {
                    "requests": len(latencies),
                    "errors": errors,
                    "seconds": elapsed,
                    "p50_ms": _percentile(latencies, 50) * 1000,
                    "p99_ms": _percentile(latencies, 99) * 1000,
                }
            )
        )

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# ---------------------------------------------------------------------------
# Orchestration.


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def load(url: str, duration: float, headers: list[str], tool: str) -> Result:
    if tool == "wrk":
        argv = [
            "wrk",
            "-t1",
            f"-c{CONCURRENCY}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
        ]
        for header in headers:
            argv += ["-H", header]
        out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if m:
            errors += sum(int(g) for g in m.groups())
        return Result(rps, p50, p99, requests, errors)
    argv = [sys.executable, __file__, "loadgen", url, "--concurrency", str(CONCURRENCY)]
    argv += ["--duration", str(duration)]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Result(
        data["requests"] / data["seconds"],
        data["p50_ms"],
        data["p99_ms"],
        data["requests"],
        data["errors"],
    )


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rssKiB(pid: int, field: str = "VmRSS") -> int:
    """
    C{field} of /proc/<pid>/status in KiB: VmRSS (now) or VmHWM (peak).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waitFor(url: str, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{what}: a child process exited early ({p.args!r})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.1)
    raise SystemExit(f"{what}: not ready within {timeout}s ({last})")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError):
        pass
    return f"{os.cpu_count()} cores ({model}){mem}, {platform.system()} {platform.release()}"


def versions() -> str:
    import twisted

    try:
        from promtwist import __version__ as promtwistVersion

        pv = promtwistVersion.public()
    except Exception:  # noqa: BLE001
        pv = "?"
    return f"Python {platform.python_version()}, Twisted {twisted.__version__}, promtwist {pv}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode")
    t = sub.add_parser("target", help="(internal) serve the payloads")
    t.add_argument("--port", type=int, required=True)
    g = sub.add_parser("loadgen", help="(internal) Python load generator")
    g.add_argument("url")
    g.add_argument("--concurrency", type=int, default=CONCURRENCY)
    g.add_argument("--duration", type=float, default=8)
    g.add_argument("-H", dest="headers", action="append", default=[])
    parser.add_argument("--duration", type=float, default=8, help="seconds per measurement (8)")
    parser.add_argument(
        "--warmup", type=float, default=1, help="seconds of warm-up per measurement (1)"
    )
    parser.add_argument(
        "--payloads", nargs="+", choices=sorted(PAYLOADS), default=["small", "large"]
    )
    parser.add_argument(
        "--encodings",
        nargs="+",
        choices=["gzip", "identity"],
        default=["gzip", "identity"],
        help="gzip: the client sends Accept-Encoding: gzip, as Prometheus does; identity: not",
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.mode == "target":
        return runTarget(args.port)
    if args.mode == "loadgen":
        return runLoadgen(args.url, args.concurrency, args.duration, args.headers)

    tool = args.loadgen
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    if not os.path.exists(TWISTD):
        raise SystemExit(
            f"no twistd next to {sys.executable}: run this with the venv promtwist is installed in"
        )

    workdir = tempfile.mkdtemp(prefix="promtwist-bench-")
    targetPort, scrapePort, agentPort = freePort(), freePort(), freePort()
    conf = os.path.join(workdir, "agent.conf")
    with open(conf, "w") as f:
        f.write("agent {\n  pathConfigs = [\n")
        for name in PAYLOADS:
            f.write(
                f'    {{ name = "bench {name}", path = "bench_{name}", '
                f'url = "http://127.0.0.1:{targetPort}/{name}" }}\n'
            )
        f.write("  ]\n}\n")

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(os.path.join(workdir, log), "wb") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
        procs.append(p)
        return p

    def twistd(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logFile = os.path.join(workdir, f"{name}.log")
        return spawn([TWISTD, "-n", "--pidfile=", f"--logfile={logFile}", *args], f"{name}.out")

    results: dict[str, dict[str, dict[str, Result]]] = {}
    ok = False
    try:
        spawn(
            [sys.executable, os.path.abspath(__file__), "target", "--port", str(targetPort)],
            "target.out",
        )
        waitFor(f"http://127.0.0.1:{targetPort}/small", 20, "target", procs)
        proxy = twistd(
            "proxy", ["promproxy-proxy", "--port", str(scrapePort), "--agent_port", str(agentPort)]
        )
        agent = twistd(
            "agent",
            ["promproxy-agent", "-c", conf, "--proxy", f"127.0.0.1:{agentPort}", "--name", "bench"],
        )
        for name in PAYLOADS:
            waitFor(f"http://127.0.0.1:{scrapePort}/bench_{name}", 30, "promtwist", procs)

        print(f"machine:   {machine()}")
        print(f"software:  {versions()}")
        print(f"loadgen:   {tool}, {CONCURRENCY} connections, {args.duration:g} s per measurement")
        print("payloads:  " + ", ".join(f"{n} {len(PAYLOADS[n])} bytes" for n in args.payloads))
        rssBefore = {"proxy": rssKiB(proxy.pid), "agent": rssKiB(agent.pid)}
        print(f"RSS idle:  proxy {mib(rssBefore['proxy'])}, agent {mib(rssBefore['agent'])}")
        print()
        header = (
            f"{'payload':8} {'client':9} {'route':9} {'scrapes/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'errors':>6} {'proxy CPU':>10} {'agent CPU':>10}"
        )
        print(header)
        print("-" * len(header))
        for name in args.payloads:
            for encoding in args.encodings:
                headers = ["Accept-Encoding: gzip"] if encoding == "gzip" else []
                row: dict[str, Result] = {}
                for route, url in (
                    ("direct", f"http://127.0.0.1:{targetPort}/{name}"),
                    ("promtwist", f"http://127.0.0.1:{scrapePort}/bench_{name}"),
                ):
                    if args.warmup > 0:
                        load(url, args.warmup, headers, tool)
                    cpu0 = (cpuSeconds(proxy.pid), cpuSeconds(agent.pid))
                    result = load(url, args.duration, headers, tool)
                    cpu1 = (cpuSeconds(proxy.pid), cpuSeconds(agent.pid))
                    row[route] = result
                    perScrape = [
                        (b - a) * 1e6 / max(1, result.requests)
                        for a, b in zip(cpu0, cpu1, strict=True)
                    ]
                    cpuText = (
                        f"{perScrape[0]:10.0f} {perScrape[1]:10.0f}"
                        if route == "promtwist"
                        else f"{'':10} {'':10}"
                    )
                    print(
                        f"{name:8} {encoding:9} {route:9} {result.rps:10.0f} {result.p50_ms:8.2f}"
                        f" {result.p99_ms:8.2f} {result.errors:6d} {cpuText}",
                        flush=True,
                    )
                results.setdefault(name, {})[encoding] = row
        rssAfter = {"proxy": rssKiB(proxy.pid), "agent": rssKiB(agent.pid)}
        rssPeak = {"proxy": rssKiB(proxy.pid, "VmHWM"), "agent": rssKiB(agent.pid, "VmHWM")}
        print("(client gzip: sends Accept-Encoding: gzip, as Prometheus does; CPU: microseconds")
        print(" of proxy / agent CPU time per scrape, from /proc/<pid>/stat)")
        print()
        print("ratios, promtwist / direct:")
        for name, byEncoding in results.items():
            for encoding, row in byEncoding.items():
                d, p = row["direct"], row["promtwist"]
                print(
                    f"  {name:6} {encoding:9} throughput {p.rps / d.rps:5.2f}x"
                    f"   p50 latency {p.p50_ms / d.p50_ms:5.2f}x"
                    f"   p99 latency {p.p99_ms / d.p99_ms:5.2f}x"
                )
        print()
        for role in ("proxy", "agent"):
            print(
                f"RSS {role:5}: idle {mib(rssBefore[role])}, after the load {mib(rssAfter[role])},"
                f" peak {mib(rssPeak[role])}"
            )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "machine": machine(),
                        "software": versions(),
                        "loadgen": tool,
                        "concurrency": CONCURRENCY,
                        "duration": args.duration,
                        "rss_kib": {"before": rssBefore, "after": rssAfter, "peak": rssPeak},
                        "results": {
                            n: {e: {r: vars(x) for r, x in row.items()} for e, row in by.items()}
                            for n, by in results.items()
                        },
                    },
                    f,
                    indent=2,
                )
        bad = sum(r.errors for by in results.values() for row in by.values() for r in row.values())
        if bad:
            raise SystemExit(f"!!! {bad} failed requests")
        ok = True
    finally:
        for child in reversed(procs):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(procs):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if ok and not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
