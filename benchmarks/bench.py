#!/usr/bin/env python3
"""
Loopback benchmark of promtwist beside PushProx, both in front of the same
target, driven by the same load generator with the same headers.

    .venv/bin/python benchmarks/bench.py                   # throughput, about 2 min
    .venv/bin/python benchmarks/bench.py --mode latency    # fixed 200 scrapes/s
    .venv/bin/python benchmarks/bench.py --mode bigbody    # one 50 MB body, memory

Modes:
 - C{throughput} (default): wrk -t1 -c8, 5 s x 3 rounds, routes interleaved
   round by round (direct, promtwist, PushProx), for a ~1 KB and a ~87 KB
   body asked with C{Accept-Encoding: gzip}; scrapes/s, CPU per scrape and
   RSS, and the issue 10 ratios promtwist / PushProx with their goals.
 - C{latency}: open loop at a fixed rate (200/s), latency from each request's
   scheduled start; p50/p99 and what each route adds over direct.
 - C{bigbody}: one 50 MB body of random metric text through promtwist and
   PushProx: growth of each process's peak RSS (VmHWM) and a SHA-256 check.

Every party is its own process on 127.0.0.1: the target (nginx with
C{gzip_static}, or a Twisted stand-in when C{/usr/sbin/nginx} is absent),
C{twistd -n promproxy-proxy} and C{twistd -n promproxy-agent} (the twistd
next to this Python, so run it with the venv promtwist is installed in),
C{pushprox-proxy} and C{pushprox-client} (C{--pushprox-dir}, else built with
C{peers/build-pushprox} into a cache directory), and the load
generator (wrk, or C{openloop.py}). Bounded in time; not part of CI; see
benchmarks/README.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openloop import percentile
from parties import (
    ROUTINGS,
    SCRAPE_TIMEOUT_HEADER,
    TEXT_TYPE,
    Parties,
    Route,
    cpuSeconds,
    defaultCacheDir,
    fetch,
    findPushProx,
    metricText,
    procStatusKiB,
    writeBigBody,
    writeBodies,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OPENLOOP = os.path.join(HERE, "openloop.py")
CONCURRENCY = 8
BODIES = {"small": 1024, "large": 87 * 1024}
LABELS = {"small": "1 KB", "large": "87 KB"}
ROUTING_TEXT = {
    "path": "promtwist by path (GET /bench_small); PushProx by absolute URI (proxy_url)",
    "host": "promtwist and PushProx by absolute URI (proxy_url: GET http://127.0.0.1:<target"
    " port>/small), promtwist's agent declaring the target in agent.targets",
}
# The peer every other route is compared with.
PEER = "PushProx"
# The route of an unmodified pushprox-client polling promtwist's proxy.
PP_CLIENT = "pp-client"
# The processes each route's pids are, for the memory reports.
ROLES = {
    "promtwist": ("proxy", "agent"),
    "PushProx": ("pushprox-proxy", "pushprox-client"),
    PP_CLIENT: ("proxy (pp-client)", "pushprox-client on promtwist"),
}
# issue 10's goals.
GOAL_THROUGHPUT = 1.5  # promtwist / PushProx scrapes per second, at least
GOAL_CPU = 0.6  # promtwist / PushProx CPU per scrape, at most
# Ours (issue 12 names no figure), for the pp-client route: a pushprox-client on promtwist's proxy
# against pushprox-proxy with the same client.
GOAL_PP_THROUGHPUT = 1.0  # scrapes per second, at least
GOAL_PP_PROXY_CPU = 1.0  # the proxy's CPU per scrape, at most
GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 3.0
GOAL_BIGBODY_GROWTH_MIB = 20.0


# ---------------------------------------------------------------------------
# The Twisted stand-in target (used when nginx is absent).


def runTarget(root: str, port: int) -> None:
    """
    Serve the files of C{root} like nginx with C{gzip_static}: C{name.gz}
    when it exists and the client accepts gzip.
    """
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class File(Resource):
        isLeaf = True

        def __init__(self, body: bytes, gzipped: bytes | None) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.body = body
            self.gzipped = gzipped

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            request.setHeader(b"Content-Type", TEXT_TYPE.encode())
            accept = (request.getHeader(b"Accept-Encoding") or b"").lower()
            if self.gzipped is not None and b"gzip" in accept:
                request.setHeader(b"Content-Encoding", b"gzip")
                return self.gzipped
            return self.body

    def read(path: str) -> bytes | None:
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    top = Resource()  # type: ignore[no-untyped-call]
    for name in os.listdir(root):
        if not name.endswith(".gz"):
            body = read(os.path.join(root, name))
            assert body is not None
            top.putChild(name.encode(), File(body, read(os.path.join(root, name + ".gz"))))
    site = Site(top)  # type: ignore[no-untyped-call]
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()


# ---------------------------------------------------------------------------
# Load generators.


@dataclass
class Sample:
    """
    One measurement of one route: what the load generator saw, and the CPU
    time the route's processes spent meanwhile.
    """

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float = 0.0
    proxy_cpu_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    lag_p99_ms: float = 0.0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrkScript(workdir: str, route: Route) -> list[str]:
    """
    For a proxy route, a wrk script that makes the request line carry the
    absolute URI and the Host header the target's address, as Prometheus
    does with C{proxy_url}.
    """
    if route.proxy() is None:
        return []
    path = os.path.join(workdir, f"wrk-{route.name}-{route.target.rsplit('/', 1)[1]}.lua")
    with open(path, "w") as f:
        f.write(f'wrk.path = "{route.target}"\nwrk.headers["Host"] = "{route.host}"\n')
    return ["-s", path]


def closedLoad(
    route: Route, duration: float, headers: list[str], tool: str, workdir: str
) -> Sample:
    """
    C{CONCURRENCY} connections, each asking again as soon as its answer
    arrived, for C{duration} seconds.
    """
    cpu0, proxy0 = cpuSeconds(route.pids), cpuSeconds(route.pids[:1])
    if tool == "wrk":
        argv = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{max(1, round(duration))}s", "--latency"]
        argv += ["--timeout", "10s", *wrkScript(workdir, route)]
        for header in headers:
            argv += ["-H", header]
        out = subprocess.run(
            [*argv, route.wrkUrl()], capture_output=True, text=True, check=True
        ).stdout

        def find(pattern: str) -> str:
            m = re.search(pattern, out, re.M)
            if m is None:
                raise SystemExit(f"wrk output without {pattern!r}:\n{out}")
            return m.group(1)

        requests = int(find(r"(\d+) requests in"))
        seconds = _ms(find(r"requests in ([\d.]+\w+),")) / 1000
        errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if m:
            errors += sum(int(g) for g in m.groups())
        sample = Sample(
            requests, seconds, _ms(find(r"^\s+50%\s+(\S+)")), _ms(find(r"^\s+99%\s+(\S+)")), errors
        )
    else:
        data = generator(route, headers, duration, "closed", "--concurrency", str(CONCURRENCY))
        sample = Sample(
            data["requests"], data["seconds"], data["p50_ms"], data["p99_ms"], data["errors"]
        )
    sample.cpu_seconds = cpuSeconds(route.pids) - cpu0
    sample.proxy_cpu_seconds = cpuSeconds(route.pids[:1]) - proxy0
    return sample


def generator(
    route: Route, headers: list[str], duration: float, kind: str, *options: str
) -> dict[str, Any]:
    """
    Run C{openloop.py KIND} against C{route}; its JSON results.
    """
    argv = [sys.executable, OPENLOOP, kind, route.connect, route.target, "--host", route.host]
    argv += [*options, "--duration", str(duration)]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def openLoad(route: Route, duration: float, headers: list[str], rate: float) -> Sample:
    cpu0 = cpuSeconds(route.pids)
    data = generator(route, headers, duration, "rate", "--rate", str(rate))
    if data["error_kinds"]:
        print(f"    {route.name}: errors {data['error_kinds']}", file=sys.stderr)
    return Sample(
        data["requests"],
        duration,
        data["p50_ms"],
        data["p99_ms"],
        data["errors"],
        cpuSeconds(route.pids) - cpu0,
        data["latencies_ms"],
        data["lag_p99_ms"],
    )


# ---------------------------------------------------------------------------
# Reporting helpers.


def againstPeer(byRoute: dict[str, Any]) -> list[str]:
    """
    The routes of C{byRoute} measured against PushProx: all but direct and
    PushProx itself, in their order (promtwist's agent first).
    """
    return [r for r in byRoute if r not in ("direct", PEER)] if PEER in byRoute else []


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


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
    load = ""
    try:
        with open("/proc/loadavg") as f:
            load = f", load {f.read().split()[0]}"
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}){mem}, {platform.system()} {platform.release()}{load}"


def versions(workdir: str) -> str:
    """
    Python, Twisted and promtwist as twistd will import them (run from the
    work directory, so a source checkout in the current directory does not
    shadow the installed copy that is measured).
    """
    probe = (
        "import platform, twisted, promtwist;"
        "print(f'Python {platform.python_version()}, Twisted {twisted.__version__},"
        " promtwist {promtwist.__version__.public()} ({promtwist.__file__})')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=workdir, check=False
    )
    return done.stdout.strip() or f"? ({done.stderr.strip()[-200:]})"


def checkAnswers(routes: list[Route], headers: list[str], bodies: dict[str, bytes]) -> None:
    """
    Before measuring: every route answers 200 with the target's body (raw,
    or gzip of it), not an error page that would make a fast benchmark.
    """
    asked = dict(h.split(": ", 1) for h in headers)
    for route in routes:
        name = route.target.rsplit("/", 1)[1].removeprefix("bench_")
        status, body = fetch(route.absolute(), asked, route.proxy())
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        if status != 200 or body != bodies[name]:
            raise SystemExit(
                f"{route.name} {route.target}: HTTP {status}, {len(body)} bytes, not the target's"
                f" {len(bodies[name])}-byte body: {body[:200]!r}"
            )


# ---------------------------------------------------------------------------
# Modes.


def startRoutes(
    parties: Parties,
    args: argparse.Namespace,
    names: list[str],
    agentSettings: str = "",
    clientOnPromtwist: bool = True,
) -> dict[str, dict[str, Route]]:
    """
    Start promtwist and (unless C{--no-pushprox}) PushProx in front of the
    running target, and a pushprox-client polling a promtwist proxy of its
    own (route L{PP_CLIENT}) unless not C{clientOnPromtwist}; the routes by
    payload, then by name, direct first.
    """
    promtwist = parties.startPromtwist(names, agentSettings, args.routing)
    pushprox: dict[str, Route] = {}
    viaClient: dict[str, Route] = {}
    if not args.no_pushprox:
        bindir = findPushProx(args.pushprox_dir, defaultCacheDir())
        pushprox = parties.startPushProx(bindir, names)
        print(f"PushProx:  {bindir} (one client, --fqdn=127.0.0.1)")
        if clientOnPromtwist:
            viaClient = parties.startClientOnPromtwist(bindir, names, PP_CLIENT)
    routes: dict[str, dict[str, Route]] = {}
    for name in names:
        routes[name] = {"direct": parties.direct(name), "promtwist": promtwist[name]}
        if name in pushprox:
            routes[name]["PushProx"] = pushprox[name]
        if name in viaClient:
            routes[name][PP_CLIENT] = viaClient[name]
    return routes


def interleaved(
    routes: dict[str, dict[str, Route]],
    rounds: int,
    measure: Callable[[Route], Sample],
    describe: Callable[[Sample], str],
) -> dict[str, dict[str, list[Sample]]]:
    """
    Measure every route of every payload once per round, round after
    round, so that drift on a shared machine hits all routes alike; print a
    line per measurement as it ends.
    """
    samples: dict[str, dict[str, list[Sample]]] = {
        n: {r: [] for r in named} for n, named in routes.items()
    }
    for round in range(rounds):
        for name, named in routes.items():
            for routeName, route in named.items():
                sample = measure(route)
                samples[name][routeName].append(sample)
                print(
                    f"  round {round + 1} {LABELS[name]:6} {routeName:9} {describe(sample)}",
                    flush=True,
                )
    return samples


def throughput(
    args: argparse.Namespace, parties: Parties, bodies: dict[str, bytes]
) -> dict[str, Any]:
    names = args.payloads
    routes = startRoutes(parties, args, names)
    headers = args.headers
    checkAnswers([r for byName in routes.values() for r in byName.values()], headers, bodies)
    print(
        f"loadgen:   {args.loadgen}, {CONCURRENCY} connections, {args.duration:g} s x"
        f" {args.rounds} rounds per route, interleaved; headers: {'; '.join(headers)}"
    )
    for name in names:
        for route in routes[name].values():
            if args.warmup > 0:
                closedLoad(route, args.warmup, headers, args.loadgen, parties.workdir)
    samples = interleaved(
        routes,
        args.rounds,
        lambda route: closedLoad(route, args.duration, headers, args.loadgen, parties.workdir),
        lambda s: f"{s.requests / s.seconds:9.0f}/s errors {s.errors}",
    )
    print()
    head = (
        f"{'payload':8} {'route':9} {'scrapes/s':>10} {'rounds min-max':>15} {'p50 ms':>7}"
        f" {'p99 ms':>7} {'errors':>6} {'CPU us/scrape':>13} {'proxy':>6}"
    )
    print(head)
    print("-" * len(head))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for name in names:
        for routeName, ss in samples[name].items():
            requests = sum(s.requests for s in ss)
            rps = requests / sum(s.seconds for s in ss)
            perRound = [s.requests / s.seconds for s in ss]
            cpu = sum(s.cpu_seconds for s in ss) * 1e6 / max(1, requests)
            proxyCpu = sum(s.proxy_cpu_seconds for s in ss) * 1e6 / max(1, requests)
            errors = sum(s.errors for s in ss)
            summary.setdefault(name, {})[routeName] = {
                "scrapes_per_s": rps,
                "cpu_us_per_scrape": cpu,
                "proxy_cpu_us_per_scrape": proxyCpu,
                "errors": errors,
                "requests": requests,
                "p50_ms": statistics.median(s.p50_ms for s in ss),
                "p99_ms": statistics.median(s.p99_ms for s in ss),
            }
            cpuText = f"{cpu:13.0f} {proxyCpu:6.0f}" if routeName != "direct" else ""
            row = summary[name][routeName]
            print(
                f"{LABELS[name]:8} {routeName:9} {rps:10.0f}"
                f" {min(perRound):7.0f}-{max(perRound):<7.0f}"
                f" {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {errors:6d} {cpuText}"
            )
    print(
        f"(p50/p99: {args.loadgen}'s closed-loop latency, median over rounds; CPU: utime+stime of"
    )
    print(" the route's proxy and agent or client, per scrape; proxy: of its proxy alone)")
    print()
    if not args.no_pushprox:
        print(
            "| payload | route | direct | route | PushProx | route / PushProx"
            " | CPU per scrape, route / PushProx | proxy CPU per scrape, route / PushProx |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in names:
            byRoute = summary[name]
            for routeName in againstPeer(byRoute):
                row = byRoute[routeName]
                rate = row["scrapes_per_s"] / byRoute[PEER]["scrapes_per_s"]
                cpu = row["cpu_us_per_scrape"] / byRoute[PEER]["cpu_us_per_scrape"]
                proxyCpu = row["proxy_cpu_us_per_scrape"] / byRoute[PEER]["proxy_cpu_us_per_scrape"]
                ratios.setdefault(name, {})[routeName] = {
                    "throughput": rate,
                    "cpu": cpu,
                    "proxy_cpu": proxyCpu,
                }
                perSecond = " | ".join(
                    f"{byRoute[r]['scrapes_per_s']:,.0f}/s" for r in ("direct", routeName, PEER)
                )
                cells = f"{perSecond} | {rate:.2f} | {cpu:.2f} | {proxyCpu:.2f}"
                print(f"| {LABELS[name]} (gzip) | {routeName} | {cells} |")
        print()
        print(f"goals (issue 10, promtwist's agent; routing {args.routing}):")
        for name in names:
            r = ratios[name]["promtwist"]
            print(
                f"  {LABELS[name]:6} throughput promtwist / PushProx {r['throughput']:5.2f}"
                f" (goal >= {GOAL_THROUGHPUT}) {verdict(r['throughput'] >= GOAL_THROUGHPUT)};"
                f"  CPU per scrape promtwist / PushProx {r['cpu']:5.2f}"
                f" (goal <= {GOAL_CPU}) {verdict(r['cpu'] <= GOAL_CPU)}"
            )
        if any(PP_CLIENT in ratios[name] for name in names):
            print(
                "goals (ours; issue 12 names none): pushprox-client on promtwist's proxy"
                " against PushProx's pair:"
            )
        for name in names:
            if PP_CLIENT not in ratios[name]:
                continue
            r = ratios[name][PP_CLIENT]
            print(
                f"  {LABELS[name]:6} throughput pp-client / PushProx {r['throughput']:5.2f}"
                f" (goal >= {GOAL_PP_THROUGHPUT}) {verdict(r['throughput'] >= GOAL_PP_THROUGHPUT)};"
                f"  proxy CPU per scrape / pushprox-proxy's {r['proxy_cpu']:5.2f}"
                f" (goal <= {GOAL_PP_PROXY_CPU}) {verdict(r['proxy_cpu'] <= GOAL_PP_PROXY_CPU)}"
            )
        print()
    memory = rssReport(routes)
    return {"summary": summary, "ratios": ratios, "rss_kib": memory}


def rssReport(routes: dict[str, dict[str, Route]]) -> dict[str, dict[str, int]]:
    anyName = next(iter(routes.values()))
    out: dict[str, dict[str, int]] = {}
    labels = ROLES
    for routeName, route in anyName.items():
        for role, pid in zip(labels.get(routeName, ()), route.pids, strict=False):
            rss, hwm = procStatusKiB(pid, "VmRSS"), procStatusKiB(pid, "VmHWM")
            out[role] = {"rss": rss, "hwm": hwm}
            print(f"RSS {role:15}: now {mib(rss)}, peak {mib(hwm)}")
    return out


def latency(args: argparse.Namespace, parties: Parties, bodies: dict[str, bytes]) -> dict[str, Any]:
    names = args.payloads
    routes = startRoutes(parties, args, names)
    headers = args.headers
    checkAnswers([r for byName in routes.values() for r in byName.values()], headers, bodies)
    print(
        f"loadgen:   openloop.py, open loop at {args.rate:g} scrapes/s, {args.duration:g} s x"
        f" {args.rounds} rounds per route, interleaved; latency from each request's scheduled"
        f" start; headers: {'; '.join(headers)}"
    )
    samples = interleaved(
        routes,
        args.rounds,
        lambda route: openLoad(route, args.duration, headers, args.rate),
        lambda s: f"p50 {s.p50_ms:6.2f} ms p99 {s.p99_ms:6.2f} ms errors {s.errors}",
    )
    print()
    head = (
        f"{'payload':8} {'route':9} {'scrapes':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f" {'added p50':>9} {'added p99':>9} {'errors':>6} {'gen lag p99':>11}"
    )
    print(head)
    print("-" * len(head))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        for routeName, ss in samples[name].items():
            all_ = sorted(x for s in ss for x in s.latencies_ms)
            row = {
                "requests": len(all_),
                "p50_ms": percentile(all_, 50),
                "p99_ms": percentile(all_, 99),
                "max_ms": all_[-1] if all_ else float("nan"),
                "errors": sum(s.errors for s in ss),
                "lag_p99_ms": max(s.lag_p99_ms for s in ss),
            }
            direct = summary.get(name, {}).get("direct", row)
            row["added_p50_ms"] = row["p50_ms"] - direct["p50_ms"]
            row["added_p99_ms"] = row["p99_ms"] - direct["p99_ms"]
            summary.setdefault(name, {})[routeName] = row
            added = (
                f"{row['added_p50_ms']:9.2f} {row['added_p99_ms']:9.2f}"
                if routeName != "direct"
                else f"{'':9} {'':9}"
            )
            print(
                f"{LABELS[name]:8} {routeName:9} {row['requests']:7d} {row['p50_ms']:7.2f}"
                f" {row['p99_ms']:7.2f} {row['max_ms']:7.2f} {added} {row['errors']:6d}"
                f" {row['lag_p99_ms']:11.2f}"
            )
    print("(added: the route's percentile minus direct's; gen lag p99: how late the generator")
    print(" itself sent requests, the same for every route when it is not the bottleneck)")
    print()
    print(f"goals (issue 10), promtwist's agent at {args.rate:g}/s, routing {args.routing}:")
    for name in names:
        p = summary[name]["promtwist"]
        line = (
            f"  {LABELS[name]:6} added p50 {p['added_p50_ms']:5.2f} ms"
            f" (goal <= {GOAL_ADDED_P50_MS:g})"
            f" {verdict(p['added_p50_ms'] <= GOAL_ADDED_P50_MS)};"
            f"  added p99 {p['added_p99_ms']:5.2f} ms (goal <= {GOAL_ADDED_P99_MS:g})"
            f" {verdict(p['added_p99_ms'] <= GOAL_ADDED_P99_MS)}"
        )
        print(line)
        for routeName, q in summary[name].items():
            if routeName not in ("direct", "promtwist"):
                print(
                    f"  {'':6} [{routeName} adds {q['added_p50_ms']:.2f} / {q['added_p99_ms']:.2f}"
                    " ms]"
                )
    return {"summary": summary}


def streamHash(route: Route, headers: list[str], timeout: float) -> tuple[int, int, str, float]:
    """
    One scrape of the big body, hashed as it arrives (never held whole
    here): status, bytes, SHA-256 of the decoded body, seconds.
    """
    import time
    import urllib.request

    asked = dict(h.split(": ", 1) for h in headers)
    proxy = route.proxy()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy} if proxy else {})
    )
    digest = hashlib.sha256()
    size = 0
    start = time.monotonic()
    with opener.open(urllib.request.Request(route.absolute(), headers=asked), timeout=timeout) as r:
        decoder = zlib.decompressobj(31) if r.headers.get("Content-Encoding") == "gzip" else None
        while chunk := r.read(1 << 20):
            if decoder is not None:
                chunk = decoder.decompress(chunk)
            digest.update(chunk)
            size += len(chunk)
        status = r.status
    return status, size, digest.hexdigest(), time.monotonic() - start


def bigbody(args: argparse.Namespace, parties: Parties, root: str) -> dict[str, Any]:
    size = args.bigbody_mb * 1024 * 1024
    expected = writeBigBody(os.path.join(root, "big"), size)
    actual = os.path.getsize(os.path.join(root, "big"))
    limit = args.bigbody_mb * 2 + 16
    # The agent refuses bodies over agent.http.maxContentLengthMBytes (10 MiB
    # by default): raised for this run only.
    # Not through a pushprox-client on promtwist: the client buffers the
    # whole body and pushes it in one request, which promtwist's proxy
    # bounds by proxy.internal.maxUnzippedContentSizeMBytes (10 MiB).
    routes = startRoutes(
        parties,
        args,
        ["small", "big"],
        f"  http {{ maxContentLengthMBytes = {limit} }}\n",
        clientOnPromtwist=False,
    )
    headers = [f"{SCRAPE_TIMEOUT_HEADER}: 120", "Accept-Encoding: gzip"]
    print(
        f"body:      {actual:,} bytes of random metric text (no .gz beside it, so it travels"
        f" as it is), sha256 {expected[:16]}...; agent.http.maxContentLengthMBytes = {limit}"
    )
    labels = ROLES
    results: dict[str, dict[str, object]] = {}
    growthByRoute: dict[str, dict[str, float]] = {}
    print()
    head = (
        f"{'route':9} {'seconds':>7} {'bytes':>12} {'identical':>9}"
        "  peak RSS growth (VmHWM after - before)"
    )
    print(head)
    print("-" * len(head))
    for routeName, route in routes["big"].items():
        small = routes["small"][routeName]
        fetch(small.absolute(), dict(h.split(": ", 1) for h in headers), small.proxy())
        before = [procStatusKiB(pid, "VmHWM") for pid in route.pids]
        status, got, digest, seconds = streamHash(route, headers, timeout=130)
        after = [procStatusKiB(pid, "VmHWM") for pid in route.pids]
        same = status == 200 and got == actual and digest == expected
        growth = {
            role: (a - b) / 1024
            for role, a, b in zip(labels.get(routeName, ()), after, before, strict=False)
        }
        growthByRoute[routeName] = growth
        results[routeName] = {
            "status": status,
            "bytes": got,
            "identical": same,
            "seconds": seconds,
            "growth_mib": growth,
            "hwm_before_kib": before,
            "hwm_after_kib": after,
        }
        grown = ", ".join(
            f"{role} {g:.1f} MiB ({mib(b)} -> {mib(a)})"
            for (role, g), b, a in zip(growth.items(), before, after, strict=False)
        )
        print(f"{routeName:9} {seconds:7.2f} {got:12,} {'yes' if same else 'NO':>9}  {grown}")
    print()
    print(
        f"goal (issue 10): byte-identical {verdict(bool(results['promtwist']['identical']))};"
        + "".join(
            f"  {role} growth {g:.1f} MiB (goal <= {GOAL_BIGBODY_GROWTH_MIB:g})"
            f" {verdict(g <= GOAL_BIGBODY_GROWTH_MIB)};"
            for role, g in growthByRoute["promtwist"].items()
        )
    )
    return {"results": results, "bytes": actual, "sha256": expected}


# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=["throughput", "latency", "bigbody"], default="throughput"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measurement (throughput 5, latency 10)"
    )
    parser.add_argument("--rounds", type=int, help="rounds of all routes (throughput 3, latency 2)")
    parser.add_argument(
        "--warmup", type=float, default=1, help="throughput: warm-up seconds per route (1)"
    )
    parser.add_argument("--rate", type=float, default=200, help="latency: scrapes per second (200)")
    parser.add_argument("--payloads", nargs="+", choices=sorted(BODIES), default=["small", "large"])
    parser.add_argument("--bigbody-mb", type=int, default=50, help="bigbody: body size in MiB (50)")
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="throughput: wrk, or openloop.py's closed loop (auto: wrk when on PATH)",
    )
    parser.add_argument(
        "--pushprox-dir",
        help="directory with pushprox-proxy and pushprox-client"
        " (default: built into ~/.cache/promtwist-bench/ with peers/build-pushprox)",
    )
    parser.add_argument(
        "--no-pushprox", action="store_true", help="measure direct and promtwist only"
    )
    parser.add_argument(
        "--twisted-target",
        action="store_true",
        help="use the Twisted stand-in even if nginx exists",
    )
    parser.add_argument(
        "--routing",
        choices=ROUTINGS,
        default="path",
        help="how scrapes reach promtwist's agent: by path (prometheus-proxy's way), or by"
        " the target's host:port in an absolute URI (proxy_url, as PushProx is scraped)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    sub = parser.add_subparsers(dest="internal")
    t = sub.add_parser("target", help="(internal) the Twisted stand-in target")
    t.add_argument("root")
    t.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.internal == "target":
        return runTarget(args.root, args.port)

    defaults = {"throughput": (5, 3), "latency": (10, 2), "bigbody": (0, 1)}[args.mode]
    args.duration = args.duration if args.duration is not None else defaults[0]
    args.rounds = args.rounds if args.rounds is not None else defaults[1]
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    args.headers = [f"{SCRAPE_TIMEOUT_HEADER}: 10", "Accept-Encoding: gzip"]

    workdir = tempfile.mkdtemp(prefix="promtwist-bench-")
    parties = Parties(workdir)
    ok = False
    try:
        root = os.path.join(workdir, "www")
        bodies = {name: metricText(size) for name, size in BODIES.items()}
        writeBodies(root, bodies)
        target = parties.startTarget(root, args.twisted_target)
        print(f"machine:   {machine()}")
        print(f"software:  {versions(workdir)}")
        print(f"target:    {target}")
        print(f"routing:   {ROUTING_TEXT[args.routing]}")
        print("payloads:  " + ", ".join(f"{LABELS[n]} = {len(bodies[n])} bytes" for n in BODIES))
        if args.mode == "throughput":
            result = throughput(args, parties, bodies)
        elif args.mode == "latency":
            result = latency(args, parties, bodies)
        else:
            result = bigbody(args, parties, root)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "mode": args.mode,
                        "routing": args.routing,
                        "machine": machine(),
                        "software": versions(workdir),
                        "target": target,
                        **result,
                    },
                    f,
                    indent=2,
                )
        errors = sum(
            int(row.get("errors", 0))
            for byRoute in result.get("summary", {}).values()
            for row in byRoute.values()
        )
        if errors:
            raise SystemExit(f"!!! {errors} failed requests")
        ok = True
    finally:
        parties.stopAll()
        if ok and not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
