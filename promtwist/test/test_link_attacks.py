"""
Attacks on the agent port (handshake, admission, a peer that does not
read), over real loopback sockets, written as an attacker would: each costs
only the attacker's own connections, and a well-behaved agent's scrapes
keep succeeding throughout.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from promtwist.agent.build import buildAgent
from promtwist.agent.service import AgentService
from promtwist.config.settings import AgentSettings, PathConfig, ProxyEndpoint, ProxySettings
from promtwist.protocol.framing import encodeFrame
from promtwist.protocol.promtwist_pb2 import Frame, Goodbye, Hello, Ping, RegisterPath
from promtwist.proxy.build import buildProxy
from promtwist.proxy.link import AgentLink
from promtwist.test.helpers import MiB, UnreadingPeer, eventually, rss, startTarget, unsent
from promtwist.test.test_framing import logText

TOKEN = "the-real-token"
PER_ADDRESS = 4
RSS_BOUND = 50 * MiB


class Attacker(Protocol):
    """
    A raw client on the agent port: sends what it is told, decodes the
    frames it gets back, and notes when the proxy closes it.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def send(self, *frames: Frame) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(encodeFrame(frame) for frame in frames))

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def frames(self) -> list[Frame]:
        frames, data = [], self.received
        while len(data) >= 4:
            (length,) = struct.unpack("!I", data[:4])
            frames.append(Frame.FromString(data[4 : 4 + length]))
            data = data[4 + length :]
        return frames

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)


def hello(token: str = TOKEN, **fields: Any) -> Frame:
    return Frame(hello=Hello(protocol_version=1, agent_name="attacker", token=token, **fields))


class _AttackBase(TestCase):
    """
    A proxy with a well-behaved agent on loopback, and what an attack test
    needs around it.

    @cvar proxyOverrides: settings the tests of a class change.
    """

    timeout = 60
    proxyOverrides: ClassVar[Mapping[str, Any]] = {}

    # Trial waits for a Deferred that setUp returns; the signature it
    # inherits from unittest says None.
    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        self.targetURL = startTarget(self)
        self.proxy = buildProxy(
            ProxySettings(
                http_port=0,
                agent_port=0,
                agent_token=TOKEN,
                handshake_timeout_secs=2.0,
                max_pending_handshakes=16,
                max_pending_handshakes_per_address=PER_ADDRESS,
                max_agents=3,
                **self.proxyOverrides,
            ),
            reactor,
            interface="127.0.0.1",
        )
        self.proxy.startService()
        self.addCleanup(self.proxy.stopService)
        self.agentPort = self.proxy.agentListener.portNumber
        self.agent = self.startAgent("real")
        await self.agent.whenConnected()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = Agent(reactor, pool=self.pool)
        self.rssAtStart = rss()

    def startAgent(self, name: str, source: str = "127.0.0.1") -> AgentService:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.agentPort, bindAddress=(source, 0))
        agent = buildAgent(
            AgentSettings(
                name=name,
                agent_token=TOKEN,
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", self.agentPort),),
                path_configs=(PathConfig(name, name, self.targetURL),),
            ),
            reactor,
            endpoints=[(f"proxy from {source}", endpoint)],
        )
        agent.startService()
        self.addCleanup(agent.stopService)
        return agent

    async def connect(self, source: str = "127.0.0.1") -> Attacker:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.agentPort, bindAddress=(source, 0))
        attacker = Attacker()
        await connectProtocol(endpoint, attacker)
        return attacker

    async def assertScrapesSucceed(self, count: int = 3) -> None:
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/real".encode()
        for _ in range(count):
            response = await self.http.request(b"GET", url)
            self.assertEqual((response.code, await readBody(response)), (200, b"up 1\n"))
        # None of these attacks may make the proxy hold more than the few
        # buffers of the connections it refuses.
        self.assertLess(rss() - self.rssAtStart, RSS_BOUND)

    async def eventually(self, check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
        await eventually(self, check, what, seconds)


class AttackTests(_AttackBase):
    async def test_ghostLinks(self) -> None:
        """
        Hello, Welcome, Goodbye, then Pings: the proxy closes the link once
        its (no) scrapes are done, so such links pile up nowhere; and links
        that stay established beyond C{maxAgents} are rejected.
        """
        ghosts = []
        for _ in range(10):
            ghost = await self.connect()
            ghost.send(hello(), Frame(goodbye=Goodbye(reason="bye")), Frame(ping=Ping(nonce=1)))
            ghosts.append(ghost)
        for ghost in ghosts:
            await ghost.closed
            self.assertEqual(ghost.frames()[0].WhichOneof("kind"), "welcome")
        await self.assertScrapesSucceed()
        holders = []
        for _ in range(5):
            holder = await self.connect()
            holder.send(hello())
            holders.append(holder)
        await self.eventually(lambda: all(h.frames() for h in holders), "every holder answered")
        kinds = [h.frames()[0].WhichOneof("kind") for h in holders]
        self.assertEqual(kinds, ["welcome"] * 2 + ["reject"] * 3)
        self.assertIn("proxy.internal.maxAgents", holders[-1].frames()[0].reject.message)
        await self.assertScrapesSucceed()
        self.assertEqual(len(self.proxy.linkFactory.links), 3)
        for holder in holders:
            assert holder.transport is not None
            holder.transport.loseConnection()
            await holder.closed

    async def test_pendingSlotsFromOneAddress(self) -> None:
        """
        An attacker holding pending-handshake slots from 127.0.0.2 (its
        connections began a native frame, so the native link counts them)
        does not keep out the agent dialling from 127.0.0.1 when it
        reconnects; an agent dialling from the attacker's address is refused
        with the proxy's reason, and logs it.
        """
        squatters = [await self.connect("127.0.0.2") for _ in range(PER_ADDRESS)]
        for squatter in squatters:
            assert squatter.transport is not None
            squatter.transport.write(b"\x00\x00\x00\x10")
        await self.eventually(
            lambda: len(self.proxy.linkFactory.pending) == PER_ADDRESS, "slots held"
        )
        with capturedLogs() as events:
            refused = self.startAgent("refused", "127.0.0.2")
            # The real agent's link drops; it must get back in.
            current = self.agent.factory.current
            assert current is not None
            current.transport.abortConnection()
            await self.eventually(
                lambda: (
                    "(proxy.internal.maxPendingHandshakesPerAddress)" in logText(events)
                    and "no link to proxy" in logText(events)
                ),
                "the refused agent logged the reason and its retry",
            )
            await self.agent.whenConnected()
            await self.eventually(lambda: bool(self.proxy.registry.lookup("real")), "re-registered")
            await self.assertScrapesSucceed()
            await refused.stopService()
        self.assertIn(
            "the proxy rejected this agent (overloaded: the proxy is at its handshake limit "
            f"of {PER_ADDRESS} for 127.0.0.2 (proxy.internal.maxPendingHandshakesPerAddress))",
            logText(events),
        )
        for squatter in squatters:
            await squatter.closed
        self.assertEqual(self.proxy.linkFactory.pending, set())

    async def test_secondHello(self) -> None:
        """
        A second Hello costs that link only, with a one-line reason and no
        traceback (trial fails the test on any logged failure).
        """
        attacker = await self.connect()
        with capturedLogs() as events:
            attacker.send(hello())
            await self.eventually(lambda: bool(attacker.frames()), "welcomed")
            attacker.send(hello())
            await attacker.closed
        self.assertIn("hello frame on an established link", logText(events))
        self.assertNotIn("Traceback", logText(events))
        await self.assertScrapesSucceed()

    async def test_tinyFrameLimit(self) -> None:
        attacker = await self.connect()
        attacker.send(hello(max_frame_bytes=512))
        await attacker.closed
        (reject,) = attacker.frames()
        self.assertIn("raise agent.internal.maxFrameBytes", reject.reject.message)
        await self.assertScrapesSucceed()

    async def test_tokenGuessing(self) -> None:
        """
        A token-guessing loop is throttled after a few guesses, and the log
        stays a few lines long however long it runs.
        """
        replies: list[str] = []
        with capturedLogs() as events:
            for _ in range(150):
                guesser = await self.connect("127.0.0.3")
                guesser.send(hello("guess"))
                await guesser.closed
                replies.extend(frame.reject.message for frame in guesser.frames())
            await self.assertScrapesSucceed()
        self.assertEqual(replies.count("invalid agent token"), 5)
        self.assertEqual(len(replies), 150)
        self.assertTrue(all("too many failed authentication" in r for r in replies[5:]))
        lines = [e for e in events if e.get("log_namespace", "").startswith("promtwist")]
        self.assertLessEqual(len(lines), 12, logText(lines))


class UnreadingAgentTests(_AttackBase):
    """
    An agent that floods the link and never reads the answers.
    """

    proxyOverrides: ClassVar[Mapping[str, Any]] = {
        "heartbeat_period_secs": 0.5,
        "shutdown_grace_secs": 1.0,
    }

    def flood(self, port: int) -> UnreadingPeer:
        # Claims of the real agent's path: each is answered (as a standby).
        claim = encodeFrame(Frame(register_path=RegisterPath(request_id=1, path="real")))
        peer = UnreadingPeer(port, encodeFrame(hello()), claim * 4096)
        self.addCleanup(peer.close)
        return peer

    async def stuck(self, links: set[AgentLink]) -> AgentLink:
        """
        Wait until the proxy has stopped reading a link for good: paused
        for half a second (the kernel's buffers, which it grows as they
        fill, take what the proxy writes for a while first).
        """

        def stuckLinks() -> list[AgentLink]:
            return [link for link in links if link._unread and link.silentFor() >= 0.5]

        await self.eventually(lambda: bool(stuckLinks()), "reading stopped", seconds=10)
        (link,) = stuckLinks()
        return link

    async def linkNamed(self, name: str) -> AgentLink:
        links = self.proxy.linkFactory.links
        await self.eventually(lambda: any(link.name == name for link in links), "welcomed")
        (link,) = [link for link in links if link.name == name]
        return link

    async def test_unreadingAgent(self) -> None:
        """
        The proxy stops reading an agent that does not read, holds no more
        than a few frames for it, and the heartbeat aborts its link; the
        real agent is scraped meanwhile and the proxy's memory stays
        bounded.
        """
        with capturedLogs() as events:
            peer = self.flood(self.agentPort)
            link = await self.linkNamed("attacker")
            most = [0]

            def measure() -> None:
                most[0] = max(most[0], unsent(link.transport))

            measuring = LoopingCall(measure)
            measuring.start(0.01)
            try:
                await self.assertScrapesSucceed()
                await self.eventually(lambda: peer.reset, "the link aborted", seconds=10)
            finally:
                measuring.stop()
        self.assertIn("nothing heard from", logText(events))
        self.assertGreater(most[0], 0)
        self.assertLess(most[0], 2 * self.proxy.settings.max_frame_bytes)
        await self.eventually(
            lambda: link not in self.proxy.linkFactory.links, "the link left the table"
        )
        self.assertEqual(self.proxy.linkFactory.agentCount(), 1)
        await self.assertScrapesSucceed()

    async def test_shutdownNotHeldUp(self) -> None:
        """
        Stopping the proxy waits for an agent that does not read no longer
        than the grace period (plus a bound), even when the heartbeat would
        take much longer to give up on it.
        """
        proxy = buildProxy(
            ProxySettings(
                http_port=0,
                agent_port=0,
                agent_token=TOKEN,
                heartbeat_period_secs=60.0,
                shutdown_grace_secs=1.0,
            ),
            reactor,
            interface="127.0.0.1",
        )
        proxy.startService()
        stopping: list[Deferred[None]] = []
        # Stopped by the test, or else when it ends.
        self.addCleanup(lambda: stopping[0] if stopping else proxy.stopService())
        self.flood(proxy.agentListener.portNumber)
        links = proxy.linkFactory.links
        await self.eventually(lambda: bool(links), "the attacker connected")
        for link in links:
            # Kernel buffers the size of the test's, not megabytes grown as
            # they fill: the proxy is stuck with its own buffer at once.
            transport: Any = link.transport
            transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await self.stuck(links)
        started = reactor.seconds()
        stopped = proxy.stopService()
        stopping.append(stopped)
        await self.eventually(lambda: stopped.called, "the proxy stopped")
        self.assertGreaterEqual(reactor.seconds() - started, 0.9)
        self.assertEqual(links, set())
        self.assertLess(rss() - self.rssAtStart, RSS_BOUND)
