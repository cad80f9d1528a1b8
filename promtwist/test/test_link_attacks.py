"""
Attacks on the agent port's handshake and admission, over real loopback
sockets, written as an attacker would: each costs only the attacker's own
connections, and a well-behaved agent's scrapes keep succeeding throughout.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from promtwist.agent.service import AgentService
from promtwist.config import AgentSettings, PathConfig, ProxyEndpoint, ProxySettings
from promtwist.protocol.framing import encodeFrame
from promtwist.protocol.promtwist_pb2 import Frame, Goodbye, Hello, Ping
from promtwist.proxy.server import ProxyService
from promtwist.test.helpers import MiB, rss
from promtwist.test.test_framing import logText

TOKEN = "the-real-token"
PER_ADDRESS = 4
RSS_BOUND = 50 * MiB


class _Metrics(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"up 1\n"


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


class AttackTests(TestCase):
    timeout = 60

    # Trial waits for a Deferred that setUp returns; the signature it
    # inherits from unittest says None.
    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        target: IListeningPort = reactor.listenTCP(
            0,
            Site(_Metrics()),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(target.stopListening)
        targetAddress = target.getHost()
        assert isinstance(targetAddress, IPv4Address)
        self.targetURL = f"http://127.0.0.1:{targetAddress.port}/metrics"
        self.proxy = ProxyService(
            ProxySettings(
                http_port=0,
                agent_port=0,
                agent_token=TOKEN,
                handshake_timeout_secs=2.0,
                max_pending_handshakes=16,
                max_pending_handshakes_per_address=PER_ADDRESS,
                max_agents=3,
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
        agent = AgentService(
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

    async def eventually(self, check: Callable[[], bool], what: str) -> None:
        """
        Wait, at most 5 s in 0.05 s steps, until C{check()} holds.
        """
        for _ in range(100):
            if check():
                return
            await deferLater(reactor, 0.05)
        self.fail(f"not within 5 s: {what}")

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
        An attacker holding pending-handshake slots from 127.0.0.2 does not
        keep out the agent dialling from 127.0.0.1 when it reconnects; an
        agent dialling from the attacker's address is refused with the
        proxy's reason, and logs it.
        """
        squatters = [await self.connect("127.0.0.2") for _ in range(PER_ADDRESS)]
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
