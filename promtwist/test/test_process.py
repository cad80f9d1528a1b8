"""
Process-level behaviour of a real proxy and agent (C{twistd} child
processes): what happens when one of them is killed or restarted, and what
garbage on the agent port does.

The three bars the issue states as requirements are asserted on time:

  - SIGKILL of the agent turns its in-flight scrapes into 502 within 1 s;
  - a restarted agent serves again within 5 s;
  - an agent whose proxy restarted serves again within 10 s of the proxy's
    return.

Everything else is measured and printed, not asserted on time.
"""

from __future__ import annotations

import signal
import struct
import time

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from promtwist.protocol.promtwist_pb2 import Frame, Hello
from promtwist.protocol.session import PROTOCOL_VERSION
from promtwist.test.processes import AGENT_NAME, Cluster, sleep

KILL_TO_502_BAR = 1.0
AGENT_RESTART_BAR = 5.0
PROXY_RESTART_BAR = 10.0


def report(text: str) -> None:
    print(f"\n  {text}", end="")


_CLOSED = Failure(ConnectionDone())


class _RawClient(Protocol):
    """
    A bare TCP client on the agent port: records what it receives and when
    the other side closes.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[float] = Deferred()
        self.welcomed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.welcomed.called and len(self.received) >= 4:
            (length,) = struct.unpack("!I", self.received[:4])
            if len(self.received) >= 4 + length:
                frame = Frame()
                frame.ParseFromString(bytes(self.received[4 : 4 + length]))
                if frame.WhichOneof("kind") == "welcome":
                    self.welcomed.callback(None)

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        if not self.welcomed.called:
            self.welcomed.errback(reason)
            self.welcomed.addErrback(lambda _: None)
        self.closed.callback(time.monotonic())


def framed(frame: Frame) -> bytes:
    data = frame.SerializeToString()
    return struct.pack("!I", len(data)) + data


class ProcessTests(TestCase):
    timeout = 120

    async def _inFlightSlowScrapes(
        self, cluster: Cluster, n: int
    ) -> list[Deferred[tuple[int, bytes, float]]]:
        """
        Start C{n} scrapes of C{/slow} and return once all of them are
        waiting at the target (so they are in flight at the agent).
        """
        before = cluster.target.slow.arrived

        async def one() -> tuple[int, bytes, float]:
            code, body = await cluster.get("slow", limit=30)
            return code, body, time.monotonic()

        scrapes = [Deferred.fromCoroutine(one()) for _ in range(n)]

        async def arrived() -> bool:
            return cluster.target.slow.arrived - before >= n

        await cluster.eventually(arrived, f"{n} scrapes of /slow at the target", 10, interval=0.02)
        return scrapes

    async def test_agentKilledThenRestarted(self) -> None:
        """
        SIGKILL of the agent fails its in-flight scrapes with 502 at once,
        and a new agent process is serving again within seconds.
        """
        cluster = Cluster(self, {"e2e_one": "metrics", "slow": "slow"}, sd=False)
        await cluster.start()
        scrapes = await self._inFlightSlowScrapes(cluster, 3)

        killedAt = time.monotonic()
        cluster.agent.signalProcess(signal.SIGKILL)
        cluster.agent.expectedExit = True
        results = await DeferredList(scrapes, consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        if failures:
            raise cluster.fail(f"a scrape of /slow failed on the client side: {failures[0]}")
        answers = [r for _, r in results]
        for code, body, _ in answers:
            self.assertEqual(code, 502, f"status after SIGKILL of the agent (body {body!r})")
            self.assertIn(b"agent disconnected", body)
        slowest = max(at for _, _, at in answers) - killedAt
        report(f"SIGKILL agent -> 502 for 3 in-flight scrapes after {slowest * 1000:.0f} ms")
        self.assertLess(
            slowest, KILL_TO_502_BAR, f"in-flight scrapes must fail within {KILL_TO_502_BAR:g}s"
        )
        await cluster.agent.kill()

        # While no agent is there, the path answers at once, 503 naming the
        # agent that left (it stays discovered, so Prometheus sees it down).
        code, body = await cluster.get("e2e_one")
        self.assertEqual(code, 503, body)
        self.assertIn(b"agent 'e2e-agent' disconnected", body)

        restartedAt = time.monotonic()
        cluster.agent.start()
        servedAt = await cluster.eventually(
            cluster.servedOnce, "a scrape through the restarted agent", 30, interval=0.05
        )
        took = servedAt - restartedAt
        report(f"restarted agent (new process) serving again {took:.2f}s after its spawn")
        self.assertLess(
            took, AGENT_RESTART_BAR, f"a restarted agent must serve within {AGENT_RESTART_BAR:g}s"
        )

    async def test_proxyRestarted(self) -> None:
        """
        SIGTERM the proxy, start it again on the same ports: the agent
        reconnects, re-registers and is serving within seconds.
        """
        cluster = Cluster(self, sd=False)
        await cluster.start()

        stoppedAt = time.monotonic()
        code = await cluster.proxy.stop()
        assert cluster.proxy.protocol is not None
        report(
            f"proxy exited {time.monotonic() - stoppedAt:.2f}s after SIGTERM "
            f"(code {code}, signal {cluster.proxy.protocol.signal})"
        )
        # twistd re-raises the signal that stopped it once it has shut down
        # cleanly, so a clean exit is "terminated by SIGTERM" after its log
        # says so.
        clean = code == 0 or (
            cluster.proxy.protocol.signal == signal.SIGTERM
            and "Server Shut Down." in cluster.proxy.log()
        )
        self.assertTrue(clean, f"the proxy shuts down cleanly on SIGTERM\n{cluster.describe()}")
        self.assertTrue(cluster.agent.running, "the agent outlives its proxy")
        # Let the agent notice and back off a few times.
        await sleep(1.0)

        returnedAt = time.monotonic()
        cluster.proxy.start()
        servedAt = await cluster.eventually(
            cluster.servedOnce, "a scrape through the restarted proxy", 30, interval=0.05
        )
        took = servedAt - returnedAt
        report(f"agent serving through the restarted proxy {took:.2f}s after the proxy's spawn")
        self.assertLess(
            took,
            PROXY_RESTART_BAR,
            f"an agent must serve within {PROXY_RESTART_BAR:g}s of its proxy's return",
        )
        for path in cluster.paths:
            code, body = await cluster.get(path)
            self.assertEqual(code, 200, body)

    async def test_garbageOnAgentPort(self) -> None:
        """
        Garbage and absurd frame lengths on the agent port close only that
        connection: scrapes through the real agent keep succeeding, and the
        real agent's link is never dropped.
        """
        cluster = Cluster(self, sd=False)
        await cluster.start()

        statuses: list[int] = []
        errors: list[str] = []
        running = True

        async def scrapeLoop() -> None:
            while running:
                try:
                    code, _ = await cluster.get("e2e_one", limit=5)
                    statuses.append(code)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(f"{type(e).__name__}: {e}")
                await sleep(0.02)

        loop = Deferred.fromCoroutine(scrapeLoop())
        await sleep(0.3)
        hello = framed(
            Frame(
                hello=Hello(
                    protocol_version=PROTOCOL_VERSION,
                    agent_name="garbage-sender",
                    host_name="test",
                    launch_id="garbage",
                )
            )
        )
        cases = [
            ("4 GB length prefix", b"", b"\xff\xff\xff\xff"),
            ("undecodable frame", b"", b"\x00\x00\x00\x08" + b"\xff" * 8),
            ("an HTTP request", b"", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("4 GB length prefix after a Hello", hello, b"\xff\xff\xff\xff" + b"\x00" * 64),
            ("garbage after a Hello", hello, b"\x00\x00\x00\x05" + b"\xfa\xfb\xfc\xfd\xfe"),
        ]
        endpoint = TCP4ClientEndpoint(_globalReactor, "127.0.0.1", cluster.agentPort)
        try:
            for what, first, garbage in cases:
                client = await connectProtocol(endpoint, _RawClient())
                localPort = client.transport.getHost().port
                if first:
                    client.transport.write(first)
                    await client.welcomed
                sentAt = time.monotonic()
                client.transport.write(garbage)
                closed = await _within(
                    client.closed, 20, f"the proxy closing a connection sent {what}"
                )
                if closed is None:
                    client.transport.abortConnection()
                    await client.closed
                    raise cluster.fail(f"the proxy did not close a connection sent {what}")
                report(f"{what}: closed by the proxy after {(closed - sentAt) * 1000:.0f} ms")
                proxyLog = cluster.proxy.log()
                self.assertTrue(
                    any(
                        f"127.0.0.1:{localPort}" in line and "protocol error" in line
                        for line in proxyLog.splitlines()
                    ),
                    f"the proxy logs a protocol error for {what} from port {localPort}",
                )
                cluster.checkAlive()
        finally:
            await sleep(0.3)
            running = False
            await loop

        self.assertEqual(errors, [], "scrapes during the garbage")
        self.assertGreater(len(statuses), 0)
        self.assertEqual(set(statuses), {200}, "every scrape during the garbage succeeded")
        report(f"{len(statuses)} scrapes through the real agent meanwhile, all 200")
        agentLog = cluster.agent.log()
        self.assertEqual(
            agentLog.count("connected to proxy"),
            1,
            f"the real agent's link was never dropped:\n{agentLog}",
        )
        self.assertIn(AGENT_NAME, cluster.proxy.log())


async def _within(d: Deferred[float], seconds: float, what: str) -> float | None:
    """
    C{d}'s result, or None if it has not fired within C{seconds}.
    """
    deadline = time.monotonic() + seconds
    while not d.called and time.monotonic() < deadline:
        await sleep(0.01)
    if not d.called:
        return None
    return await d
