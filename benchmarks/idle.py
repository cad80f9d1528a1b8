#!/usr/bin/env python3
"""
What many idle agents cost one proxy, and how fast they come back after the
proxy restarts:

    .venv/bin/python benchmarks/idle.py                  # 10,000 agents
    .venv/bin/python benchmarks/idle.py --agents 1000 --agents 50000

For each C{--agents} count it starts a real C{twistd -n promproxy-proxy}
(C{proxy.internal.maxAgents} raised to fit, /discovery on), then opens that
many agent links from this one process: each speaks the agent protocol with
L{promtwist.protocol} framing (Hello, one RegisterPath, Pong to every Ping)
and reconnects with the agent's own jittered backoff. It is not a full agent
per connection: it scrapes nothing, so what is measured is the proxy.

Once every link is registered it measures, over C{--window} seconds: the
proxy's CPU (% of one core, from /proc/<pid>/stat) and RSS, the latency of a
few C{GET /discovery} (from a separate process, so this one's load does not
count), the pings each link received, the longest gap between them per link
(the gap still open when the window ends included: a link the proxy stops
pinging shows), and the links the proxy closed. A link I{missed} a
heartbeat when a gap was longer than the proxy's ping promise (idle periods
before a ping times the period, plus the sweep's resolution, plus one second
of slack); it was I{lost} when a gap was longer than the agent's abort
bound (three periods: a real agent would have aborted the link) or the
proxy closed it. Then the herd: the proxy is killed (SIGKILL) and started
again, and it times how long until every link is registered again, counting
the handshakes refused at the proxy's caps and the connects refused while
it was down.

Links are spread over C{--sources} source addresses (127.0.0.2, .3, ...):
TCP has about 28,000 ephemeral ports per source address, and agents are
normally many hosts. Not part of CI; figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error, reactor, task, threads
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from promtwist.protocol.framing import FrameReceiver
from promtwist.protocol.liveness import resolutionFor
from promtwist.protocol.promtwist_pb2 import Frame, Hello, Pong, RegisterPath, Reject
from promtwist.protocol.session import IDLE_PERIODS_BEFORE_PING, SILENT_PERIODS_BEFORE_ABORT
from promtwist.test.processes import freePort

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# The agent's own reconnect policy (promtwist.agent.service).
RETRY = backoffPolicy(initialDelay=0.25, factor=2.0, maxDelay=3.0)


def rssKiB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Counts:
    registered: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    connectRefused: int = 0
    lostByProxy: int = 0
    pings: int = 0


class NotRegistered(Exception):
    """
    Not every agent registered in time; the message says how many did.
    """


class IdleLink(FrameReceiver):
    """
    One agent link: Hello, register one path, answer pings.
    """

    MAX_LENGTH = 1024 * 1024

    def __init__(self, agent: IdleAgent) -> None:
        self.agent = agent

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        a = self.agent
        self.sendFrame(
            Frame(
                hello=Hello(
                    protocol_version=1,
                    agent_name=f"idle-{a.number}",
                    host_name=f"idle-host-{a.number}",
                    launch_id=a.launchId,
                    software_version="idle-benchmark",
                    max_frame_bytes=1024 * 1024,
                )
            )
        )

    def frameReceived(self, frame: Frame) -> None:
        a = self.agent
        now = time.monotonic()
        kind = frame.WhichOneof("kind")
        if kind == "ping":
            a.pinged(now)
            self.sendFrame(Frame(pong=Pong(nonce=frame.ping.nonce)))
        elif kind == "welcome":
            labels = {"team": f"team{a.number % 7}", "env": "bench"}
            self.sendFrame(
                Frame(
                    register_path=RegisterPath(
                        request_id=1,
                        path=f"idle_{a.number}",
                        name=f"idle {a.number}",
                        labels=labels,
                    )
                )
            )
        elif kind == "path_reply":
            if frame.path_reply.ok:
                a.registered(now)
        elif kind == "reject":
            # By the settings the message names: which cap refused it.
            settings = re.findall(r"proxy\.internal\.(\w+)", frame.reject.message)
            reason = Reject.Reason.Name(frame.reject.reason).lower()
            if settings:
                reason += " (" + ", ".join(settings) + ")"
            a.fleet.counts.refused[reason] = a.fleet.counts.refused.get(reason, 0) + 1
            a.rejected = True
            self.transport.loseConnection()

    def protocolError(self, why: str) -> None:
        print(f"protocol error on link {self.agent.number}: {why}", file=sys.stderr)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.agent.lost()


class IdleAgent(ClientFactory):
    """
    One simulated agent: its link, and reconnects with the agent's backoff.
    """

    noisy = False

    def __init__(self, fleet: Fleet, number: int, source: str) -> None:
        self.fleet = fleet
        self.number = number
        self.source = source
        self.launchId = os.urandom(16).hex()
        self.attempt = 0
        self.link: IdleLink | None = None
        self.isRegistered = False
        self.rejected = False
        self.lastPing = 0.0
        self.maxGap = 0.0
        # The proxy closed this agent's link during the measured window.
        self.closedByProxy = False
        self.stopped = False

    def connect(self) -> None:
        if self.stopped:
            return
        reactor.connectTCP(  # type: ignore[attr-defined]
            "127.0.0.1", self.fleet.port, self, timeout=10, bindAddress=(self.source, 0)
        )

    def buildProtocol(self, addr: object) -> IdleLink:
        self.link = IdleLink(self)
        return self.link

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        if reason.check(error.ConnectionRefusedError):
            self.fleet.counts.connectRefused += 1
        self.retry()

    def registered(self, now: float) -> None:
        self.attempt = 0
        self.isRegistered = True
        self.lastPing = now
        self.fleet.registered(self, now)

    def pinged(self, now: float) -> None:
        self.fleet.counts.pings += 1
        if self.fleet.measuring:
            self.maxGap = max(self.maxGap, now - self.lastPing)
        self.lastPing = now

    def lost(self) -> None:
        self.link = None
        if self.isRegistered:
            self.isRegistered = False
            self.fleet.unregistered(self)
        if self.stopped:
            return
        if not self.rejected:
            self.fleet.counts.lostByProxy += 1
            if self.fleet.measuring:
                self.closedByProxy = True
        self.rejected = False
        self.retry()

    def retry(self) -> None:
        if self.stopped:
            return
        self.attempt += 1
        reactor.callLater(RETRY(self.attempt), self.connect)  # type: ignore[attr-defined]


class Fleet:
    def __init__(self, count: int, port: int, sources: list[str]) -> None:
        self.port = port
        self.counts = Counts()
        self.agents = [IdleAgent(self, n, sources[n % len(sources)]) for n in range(count)]
        self.online = 0
        self.measuring = False
        self._waiters: list[defer.Deferred[float]] = []

    def registered(self, agent: IdleAgent, now: float) -> None:
        self.online += 1
        self.counts.registered += 1
        if self.online == len(self.agents):
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(now)

    def unregistered(self, agent: IdleAgent) -> None:
        self.online -= 1

    def allRegistered(self, timeout: float) -> defer.Deferred[float]:
        """
        Fires when every agent is registered, or fails after C{timeout}
        seconds saying how many are.
        """
        d: defer.Deferred[float] = defer.Deferred()
        if self.online == len(self.agents):
            d.callback(time.monotonic())
            return d
        self._waiters.append(d)

        def timedOut(failure: Failure) -> Failure:
            failure.trap(defer.TimeoutError)
            if d in self._waiters:
                self._waiters.remove(d)
            raise NotRegistered(
                f"only {self.online} of {len(self.agents)} agents registered within {timeout:g}s"
            )

        return d.addTimeout(timeout, reactor).addErrback(timedOut)

    def start(self, rate: float) -> None:
        """
        Dial every agent, C{rate} per second.
        """
        for n, agent in enumerate(self.agents):
            reactor.callLater(n / rate, agent.connect)  # type: ignore[attr-defined]

    def stop(self) -> None:
        for agent in self.agents:
            agent.stopped = True
            if agent.link is not None:
                agent.link.transport.abortConnection()


def discoveryLatencies(url: str, count: int) -> list[float]:
    """
    C{count} timed GETs of C{url}, from a separate process (milliseconds).
    """
    script = (
        "import sys, time, urllib.request\n"
        "out = []\n"
        f"for _ in range({count}):\n"
        "    t = time.perf_counter()\n"
        f"    body = urllib.request.urlopen({url!r}, timeout=30).read()\n"
        "    out.append((time.perf_counter() - t) * 1000)\n"
        "print(' '.join(f'{x:.2f}' for x in out), len(body))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    values = done.stdout.split()
    return [float(v) for v in values[:-1]]


def raiseFileLimit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        raise SystemExit(
            f"need {needed} open files, have {soft} (hard limit {hard}): raise ulimit -Hn, or "
            "run as root with CAP_SYS_RESOURCE (a container may not grant it)"
        ) from None


class Proxy:
    def __init__(self, workdir: str, agents: int, period: float, extra: list[str]) -> None:
        self.workdir = workdir
        self.agentPort, self.scrapePort = freePort(), freePort()
        self.metricsPort, self.adminPort = freePort(), freePort()
        self.args = [
            TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={os.path.join(workdir, 'proxy.log')}",
            "promproxy-proxy",
            "--port",
            str(self.scrapePort),
            "--agent_port",
            str(self.agentPort),
            "--metrics_port",
            str(self.metricsPort),
            "--admin_port",
            str(self.adminPort),
            f"-Dproxy.internal.maxAgents={agents + 100}",
            # The registry's byte budget (16 MiB) holds about 15,000 of
            # these paths; raised like maxAgents.
            f"-Dproxy.internal.maxRegisteredBytes={max(16 * 1024 * 1024, agents * 2048)}",
            f"-Dproxy.internal.heartbeatPeriodSecs={period:g}",
            "-Dproxy.service.discovery.enabled=true",
            "-Dproxy.metrics.enabled=true",
            *(f"-D{define}" for define in extra),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")
        }
        with open(os.path.join(self.workdir, "proxy.out"), "ab") as out:
            self.process = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
            )

    def waitListening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise SystemExit(f"the proxy exited; see {self.workdir}/proxy.log")
            try:
                with socket.create_connection(("127.0.0.1", self.scrapePort), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the proxy did not listen in time")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        total = 0.0
        for line in r.read().decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@defer.inlineCallbacks
def measure(args: argparse.Namespace, count: int, workdir: str):  # type: ignore[no-untyped-def]
    proxy = Proxy(workdir, count, args.period, args.proxy_define)
    proxy.start()
    yield threads.deferToThread(proxy.waitListening)
    sources = [f"127.0.0.{2 + n}" for n in range(args.sources)]
    fleet = Fleet(count, proxy.agentPort, sources)
    result: dict[str, object] = {"agents": count, "sources": args.sources}
    try:
        started = time.monotonic()
        fleet.start(args.rate)
        yield fleet.allRegistered(args.timeout)
        result["connect_s"] = time.monotonic() - started
        # Let the handshakes' garbage and the first pings settle.
        yield task.deferLater(reactor, args.settle, lambda: None)
        fleet.counts.lostByProxy = 0
        for agent in fleet.agents:
            agent.maxGap = 0.0
            agent.closedByProxy = False
        fleet.measuring = True
        pingsBefore = fleet.counts.pings
        cpuBefore, wallBefore = cpuSeconds(proxy.pid), time.monotonic()
        yield task.deferLater(reactor, args.window / 2, lambda: None)
        discovery = yield threads.deferToThread(
            discoveryLatencies, f"http://127.0.0.1:{proxy.scrapePort}/discovery", args.requests
        )
        yield task.deferLater(reactor, args.window / 2, lambda: None)
        cpu = cpuSeconds(proxy.pid) - cpuBefore
        end = time.monotonic()
        wall = end - wallBefore
        fleet.measuring = False
        for agent in fleet.agents:
            if agent.isRegistered:
                # The gap still open: a link no longer pinged.
                agent.maxGap = max(agent.maxGap, end - agent.lastPing)
        result["cpu_pct"] = 100 * cpu / wall
        result["rss_mib"] = rssKiB(proxy.pid) / 1024
        result["discovery_ms"] = discovery
        result["pings_per_s"] = (fleet.counts.pings - pingsBefore) / wall
        result["max_ping_gap_s"] = max(a.maxGap for a in fleet.agents)
        result["missed"] = sum(1 for a in fleet.agents if a.maxGap > missedAfter(args.period))
        result["lost"] = sum(
            1
            for a in fleet.agents
            if a.closedByProxy or a.maxGap > SILENT_PERIODS_BEFORE_ABORT * args.period
        )
        result["closed_by_proxy"] = fleet.counts.lostByProxy
        # Agents the proxy evicted as stale (proxy.internal.staleAgentCheck*);
        # links it aborted for silence are among those closed by the proxy.
        result["stale_evictions"] = yield threads.deferToThread(
            metric, proxy.metricsPort, "proxy_eviction_count_total"
        )
        # The herd.
        fleet.counts.refused.clear()
        fleet.counts.connectRefused = 0
        killed = time.monotonic()
        proxy.kill()
        proxy.start()
        yield threads.deferToThread(proxy.waitListening)
        listening = time.monotonic()
        yield fleet.allRegistered(args.timeout)
        back = time.monotonic()
        result["herd_s"] = back - killed
        result["herd_after_listen_s"] = back - listening
        result["herd_refused"] = dict(fleet.counts.refused)
        result["herd_connect_refused"] = fleet.counts.connectRefused
    finally:
        fleet.stop()
        proxy.kill()
    return result


def missedAfter(period: float) -> float:
    """
    The longest wait for a ping that is not a missed heartbeat: the proxy's
    promise (it pings a link idle for L{IDLE_PERIODS_BEFORE_PING} periods,
    within its sweep's resolution), and one second of slack for a busy
    machine.
    """
    return IDLE_PERIODS_BEFORE_PING * period + resolutionFor(period) + 1.0


def table(results: list[dict[str, object]], period: float) -> str:
    header = (
        f"{'agents':>7} {'CPU %':>6} {'RSS MiB':>8} {'/discovery ms':>16} {'pings/s':>8}"
        f" {'max gap s':>9} {'missed':>6} {'lost':>5} {'herd s':>7} {'refused':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        d = r["discovery_ms"]
        assert isinstance(d, list)
        refused = r["herd_refused"]
        assert isinstance(refused, dict)
        lines.append(
            f"{r['agents']:>7} {r['cpu_pct']:>6.1f} {r['rss_mib']:>8.0f}"
            f" {min(d):>7.1f}-{max(d):<8.1f} {r['pings_per_s']:>8.0f}"
            f" {r['max_ping_gap_s']:>9.2f} {r['missed']:>6} {r['lost']:>5}"
            f" {r['herd_s']:>7.1f} {sum(refused.values()):>8}"
        )
    lines.append(
        f"(heartbeat period {period:g} s; missed: links that waited over "
        f"{missedAfter(period):g} s for a ping (the proxy's promise of "
        f"{IDLE_PERIODS_BEFORE_PING:g} periods + resolution + 1 s slack); lost: links that "
        f"waited over {SILENT_PERIODS_BEFORE_ABORT * period:g} s (an agent's abort bound) or "
        "that the proxy closed; herd s: from SIGKILL to all registered again)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, action="append", help="repeatable; 10000")
    parser.add_argument("--sources", type=int, default=16, help="source addresses (16)")
    parser.add_argument("--window", type=float, default=30.0, help="measured seconds (30)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before it (10)")
    parser.add_argument("--period", type=float, default=5.0, help="heartbeat period (5)")
    parser.add_argument("--rate", type=float, default=2000.0, help="first dials per second")
    parser.add_argument("--requests", type=int, default=5, help="GET /discovery per window")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="longest wait for all to register (120)"
    )
    parser.add_argument(
        "--proxy-define", action="append", default=[], help="extra -Dkey=value for the proxy"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    counts = args.agents or [10_000]
    if not os.path.exists(TWISTD):
        raise SystemExit(f"no twistd next to {sys.executable}: run this with promtwist's venv")
    # This process and the proxy (which inherits the limit) each hold a
    # socket per link.
    raiseFileLimit(max(counts) + 1000)
    workdir = tempfile.mkdtemp(prefix="promtwist-idle-")
    results: list[dict[str, object]] = []
    random.seed()

    @defer.inlineCallbacks
    def run():  # type: ignore[no-untyped-def]
        try:
            for count in counts:
                r = yield measure(args, count, os.path.join(workdir))
                print(json.dumps(r), flush=True)
                results.append(r)
        except NotRegistered as e:
            print(f"stopped: {e}; see {workdir}/proxy.log*", file=sys.stderr)
        finally:
            reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if results:
        print(table(results, args.period))
        print(f"logs: {workdir}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
