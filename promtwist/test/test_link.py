"""
Tests for the two ends of an agent link, L{promtwist.proxy.link} and
L{promtwist.agent.connection}, joined in memory with a fake clock.
"""

from __future__ import annotations

import resource
import struct
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from promtwist.agent import connection as agentConnection
from promtwist.agent.connection import ProxyConnection, ProxyConnectionFactory, Rejected
from promtwist.agent.scraper import ScrapeObserver, Scraper
from promtwist.config.settings import AgentSettings, Identity, PathConfig, ProxySettings
from promtwist.protocol.framing import encodeFrame
from promtwist.protocol.promtwist_pb2 import (
    Frame,
    Hello,
    Outcome,
    Ping,
    RegisterPath,
    Reject,
    ScrapeChunk,
)
from promtwist.protocol.session import ROUND_TRIP_EVERY_PERIODS, SessionLost
from promtwist.proxy.admission import FILES_RESERVED, raiseOpenFileLimit, waitingRoom
from promtwist.proxy.answers import ScrapeFailed
from promtwist.proxy.link import AgentLink
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.stream import ScrapeStream
from promtwist.test.helpers import CONNECTION_REFUSALS, agentLinkFactory, rejections
from promtwist.test.memorytarget import MemoryTargets
from promtwist.test.test_framing import encode, logText


def decodeAll(data: bytes) -> list[Frame]:
    """
    The frames in a captured byte stream.
    """
    frames = []
    while data:
        (length,) = struct.unpack("!I", data[:4])
        frames.append(Frame.FromString(data[4 : 4 + length]))
        data = data[4 + length :]
    return frames


class TCPStringTransport(StringTransport):
    """
    A L{StringTransport} with the TCP options a link sets.
    """

    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class Target(Resource):
    """
    A scrape target: C{/fast} answers at once, C{/slow} never does.
    """

    isLeaf = True

    def __init__(self, body: bytes = b"up 1\n") -> None:
        super().__init__()
        self.body = body
        self.pending: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        if request.path == b"/slow":
            self.pending.append(request)
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4")
        return self.body


@dataclass
class Collector:
    """
    A body consumer that keeps what it is given.
    """

    data: list[bytes] = field(default_factory=list)
    done: bool = False
    failed: ScrapeFailed | None = None

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def bodyDone(self) -> None:
        self.done = True

    def bodyFailed(self, failure: ScrapeFailed) -> None:
        self.failed = failure


def disconnecting(protocol: AgentLink | ProxyConnection) -> bool:
    """
    Whether one end of a L{Pair} has begun closing its connection.
    """
    transport = protocol.transport
    assert isinstance(transport, FakeTransport)
    return bool(transport.disconnecting)


PATHS = (
    PathConfig("fast", "fast", "http://target.test/fast", {"team": "a"}),
    PathConfig("slow", "slow", "http://target.test/slow"),
)


def pingsReceived(end: AgentLink | ProxyConnection) -> list[Ping]:
    """
    The pings C{end} receives from now on, as it answers them.
    """
    received: list[Ping] = []
    answer = end.frame_ping

    def record(ping: Ping) -> None:
        received.append(ping)
        answer(ping)

    end.frame_ping = record  # type: ignore[method-assign]
    return received


class Pair:
    """
    A proxy link and an agent connection talking over an in-memory pump.
    """

    def __init__(
        self,
        proxySettings: ProxySettings = ProxySettings(),
        agentSettings: AgentSettings = AgentSettings(name="a1", path_configs=PATHS),
        target: Target | None = None,
        observer: ScrapeObserver | None = None,
    ) -> None:
        """
        @param observer: what the agent's metrics would hear of scrapes.
        """
        self.clock = Clock()
        self.target = target or Target()
        self.http = MemoryTargets(self.target)
        proxyFactory = agentLinkFactory(proxySettings, self.clock)
        self.factory = proxyFactory
        self.registry = proxyFactory.registry
        agentFactory = ProxyConnectionFactory(
            agentSettings,
            Scraper(agentSettings, self.http.pool, self.clock, observer or ScrapeObserver()),
            self.clock,
        )
        self.agent: ProxyConnection
        self.proxy: AgentLink
        self.pump: IOPump

        def proxyLink() -> AgentLink:
            link = proxyFactory.buildProtocol(None)
            assert isinstance(link, AgentLink)
            return link

        self.agent, self.proxy, self.pump = connectedServerAndClient(
            proxyLink,
            lambda: agentFactory.buildProtocol(None),
            clock=self.clock,
            greet=False,
        )
        self.ready = self.agent.whenReady()
        self.flush()

    def flush(self) -> None:
        for _ in range(5):
            self.pump.flush()
            self.http.flush()

    def scrape(self, path: str) -> ScrapeStream:
        stream = self.proxy.scrape(ScrapeCall(path, "", "text/plain", "", "", 5.5))
        self.flush()
        return stream


class HandshakeTests(SynchronousTestCase):
    def test_welcomeAndRegistration(self) -> None:
        """
        The agent is welcomed and its paths are routed to it; it is ready
        once every registration was answered.
        """
        pair = Pair()
        self.assertIs(self.successResultOf(pair.ready), pair.agent)
        self.assertEqual(pair.registry.lookup("fast"), (pair.proxy,))
        self.assertEqual(pair.registry.lookup("slow"), (pair.proxy,))
        self.assertEqual(pair.proxy.name, "a1")
        self.assertEqual(pair.agent.agentId, pair.proxy.agentId)
        (entry, _) = pair.registry.snapshot()
        self.assertEqual(dict(entry.labels), {"team": "a"})

    def test_targetCredentialsMasked(self) -> None:
        """
        User info and query values of a target URL appear neither in the
        agent's log lines nor in what the proxy is told.
        """
        secret = PathConfig("s", "s", "http://user:pw123@target.test/slow?token=abc987")
        with capturedLogs() as events:
            pair = Pair(agentSettings=AgentSettings(name="a1", path_configs=(secret,)))
            stream = pair.scrape("s")
            pair.clock.advance(5)
            pair.flush()
        failure = self.failureResultOf(stream.head, ScrapeFailed).value
        self.assertEqual(failure.kind, "upstream_timed_out")
        text = logText(events)
        self.assertIn("http://***@target.test/slow?token=***", text)
        for leaked in ("pw123", "abc987", "user"):
            self.assertNotIn(leaked, text)
            self.assertNotIn(leaked, failure.reason)

    def test_protocolVersionRejected(self) -> None:
        """
        An agent speaking another protocol version is told so and closed.
        """
        self.patch(agentConnection, "PROTOCOL_VERSION", 99)
        with capturedLogs() as events:
            pair = Pair()
        failure = self.failureResultOf(pair.ready, Rejected)
        # Logged once by the dial report, not by each connection.
        self.assertNotIn("rejected", logText(events))
        self.assertIn("protocol_version: protocol version 99 is not supported", str(failure.value))
        self.assertEqual(pair.registry.agents(), [])
        self.assertTrue(disconnecting(pair.proxy))

    def test_wrongTokenRejected(self) -> None:
        """
        With C{proxy.agentToken} set, an agent with another token is refused
        and never reaches the registry.
        """
        pair = Pair(
            ProxySettings(agent_token="s3cret"),
            AgentSettings(name="a1", agent_token="guess", path_configs=PATHS),
        )
        failure = self.failureResultOf(pair.ready, Rejected)
        self.assertEqual(str(failure.value), "unauthenticated: invalid agent token")
        self.assertEqual(pair.registry.lookup("fast"), ())

    def test_rightTokenAccepted(self) -> None:
        pair = Pair(
            ProxySettings(agent_token="s3cret"),
            AgentSettings(name="a1", agent_token="s3cret", path_configs=PATHS),
        )
        self.successResultOf(pair.ready)

    def test_frameBeforeHello(self) -> None:
        """
        Anything but Hello on a fresh connection is a protocol error.
        """
        link = agentLinkFactory(ProxySettings(), Clock()).buildProtocol(None)
        assert link is not None
        transport = TCPStringTransport()
        link.makeConnection(transport)
        with capturedLogs() as events:
            link.dataReceived(encode(Frame(register_path=RegisterPath(request_id=1, path="x"))))
        self.assertTrue(transport.disconnecting)
        self.assertIn("register_path frame before the handshake completed", logText(events))
        self.assertTrue(transport.noDelay)

    def test_handshakeDeadline(self) -> None:
        """
        A connection that sends no Hello is aborted after
        C{handshake_timeout_secs}.
        """
        clock = Clock()
        link = agentLinkFactory(ProxySettings(handshake_timeout_secs=3), clock).buildProtocol(None)
        assert link is not None
        transport = TCPStringTransport()
        link.makeConnection(transport)
        clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_smallFramesBeforeHandshake(self) -> None:
        """
        Before the handshake a peer may not announce a large frame.
        """
        link = agentLinkFactory(ProxySettings(), Clock()).buildProtocol(None)
        assert link is not None
        transport = TCPStringTransport()
        link.makeConnection(transport)
        link.dataReceived(b"\x00\x02\x00\x00")
        self.assertTrue(transport.disconnecting)


class AuthenticationTests(SynchronousTestCase):
    def test_identityRestrictsPaths(self) -> None:
        """
        An identity registers only what its globs allow; the refusal reaches
        the agent, which logs it and keeps serving its other paths.
        """
        team = Identity("team_a", "ta", ("fast",))
        with capturedLogs() as events:
            pair = Pair(
                ProxySettings(identities=(team,)),
                AgentSettings(name="a1", agent_token="ta", path_configs=PATHS),
            )
        self.successResultOf(pair.ready)
        self.assertEqual(pair.proxy.identity, team)
        self.assertEqual(pair.registry.lookup("fast"), (pair.proxy,))
        self.assertEqual(pair.registry.lookup("slow"), ())
        self.assertIn(
            "the proxy refused path /slow: "
            "agent identity 'team_a' is not authorized to serve /slow",
            logText(events),
        )
        self.assertEqual(self.successResultOf(pair.scrape("fast").head).status, 200)

    def test_tooManyAgents(self) -> None:
        """
        Past C{proxy.internal.maxAgents} a newcomer is rejected as overloaded.
        """
        pair = Pair(ProxySettings(max_agents=1))
        self.successResultOf(pair.ready)
        second = pair.factory.buildProtocol(None)
        assert second is not None
        transport = TCPStringTransport()
        second.makeConnection(transport)
        second.dataReceived(encode(Frame(hello=Hello(protocol_version=1, agent_name="a2"))))
        (reply,) = decodeAll(transport.value())
        self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
        self.assertIn("proxy.internal.maxAgents", reply.reject.message)
        self.assertEqual(pair.registry.agents(), [pair.proxy])

    def test_pendingHandshakesCapped(self) -> None:
        """
        At C{proxy.internal.maxPendingHandshakes} connections that have not
        said Hello, and none allowed to wait (C{maxWaitingHandshakes} 0),
        further connections are told so in a Reject and closed (counted,
        logged at a bounded rate); a finished handshake frees its place.
        """
        factory = agentLinkFactory(
            ProxySettings(max_pending_handshakes=2, max_waiting_handshakes=0), Clock()
        )
        first, second = factory.buildProtocol(None), factory.buildProtocol(None)
        assert isinstance(first, AgentLink) and isinstance(second, AgentLink)
        with capturedLogs() as events:
            for _ in range(10):
                refused = factory.buildProtocol(None)
                self.assertNotIsInstance(refused, AgentLink)
                assert refused is not None
                transport = TCPStringTransport()
                refused.makeConnection(transport)
                (reply,) = decodeAll(transport.value())
                self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
                self.assertIn("(proxy.internal.maxPendingHandshakes)", reply.reject.message)
                self.assertTrue(transport.disconnecting)
        self.assertEqual(rejections(factory, *CONNECTION_REFUSALS), 10)
        self.assertEqual(logText(events).count("handshake limit of 2"), factory.warnings.burst)
        transport = TCPStringTransport()
        first.makeConnection(transport)
        first.dataReceived(encode(Frame(hello=Hello(protocol_version=1, agent_name="a"))))
        self.assertIsInstance(factory.buildProtocol(None), AgentLink)

    def test_waitingForAPlace(self) -> None:
        """
        At the cap, up to C{proxy.internal.maxWaitingHandshakes} further
        connections wait unread, with no timer of their own; each finished
        handshake gives its place to the first waiting, whose Hello is then
        read. Past the waiting bound, connections are refused at once, told
        which two settings they met.
        """
        clock = Clock()
        factory = agentLinkFactory(
            ProxySettings(max_pending_handshakes=1, max_waiting_handshakes=2), clock
        )
        links, transports = [], []
        for _ in range(3):
            link = factory.buildProtocol(None)
            assert isinstance(link, AgentLink)
            transport = TCPStringTransport()
            link.makeConnection(transport)
            links.append(link)
            transports.append(transport)
        refused = factory.buildProtocol(None)
        self.assertNotIsInstance(refused, AgentLink)
        transport = TCPStringTransport()
        refused.makeConnection(transport)
        (reply,) = decodeAll(transport.value())
        self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
        self.assertIn("(proxy.internal.maxPendingHandshakes)", reply.reject.message)
        self.assertIn(
            "2 connections already wait for a place (proxy.internal.maxWaitingHandshakes)",
            reply.reject.message,
        )
        self.assertEqual(rejections(factory, *CONNECTION_REFUSALS), 1)
        self.assertEqual([t.producerState for t in transports], ["producing", "paused", "paused"])
        # The handshake under way has a timer, the waiting queue one for
        # all it holds (and the liveness sweep none yet).
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        self.assertEqual(factory.agentCount(), 0)
        for n, (link, transport) in enumerate(zip(links, transports, strict=True)):
            link.dataReceived(encode(Frame(hello=Hello(protocol_version=1, agent_name=f"a{n}"))))
            (welcome,) = decodeAll(transport.value())
            self.assertTrue(welcome.HasField("welcome"))
            if n < 2:
                self.assertEqual(transports[n + 1].producerState, "producing")
        self.assertEqual(factory.agentCount(), 3)
        self.assertEqual(factory.waiting, {})

    def test_waitingTimesOut(self) -> None:
        """
        Waiting counts against C{proxy.internal.handshakeTimeoutSecs},
        counted from when the connection was accepted: one that waited that
        long is refused, not handshaken (its agent gave up on a Welcome by
        then), and one admitted later has only what is left of it for its
        Hello. One timer serves the whole queue.
        """
        clock = Clock()
        factory = agentLinkFactory(
            ProxySettings(
                max_pending_handshakes=1, max_waiting_handshakes=10, handshake_timeout_secs=10.0
            ),
            clock,
        )

        def connect() -> tuple[AgentLink, TCPStringTransport]:
            link = factory.buildProtocol(None)
            assert isinstance(link, AgentLink)
            transport = TCPStringTransport()
            link.makeConnection(transport)
            return link, transport

        busy, _ = connect()
        ghosts = [connect() for _ in range(3)]
        clock.advance(6)
        late, lateTransport = connect()
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        with capturedLogs() as events:
            # The silent one holding the place is aborted at 10 s: the
            # ghosts' time is up as well, and only the late one is left.
            clock.advance(4)
        self.assertTrue(busy.transport.disconnected)  # type: ignore[attr-defined]
        busy.connectionLost(Failure(SessionLost("aborted")))
        for _, transport in ghosts:
            (reply,) = decodeAll(transport.value())
            self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
            self.assertIn("waited 10.0s for a handshake place", reply.reject.message)
            self.assertIn("(proxy.internal.handshakeTimeoutSecs)", reply.reject.message)
            self.assertTrue(transport.disconnecting)
        self.assertIn("waited 10.0s for a handshake place", logText(events))
        self.assertEqual(rejections(factory, *CONNECTION_REFUSALS), 3)
        self.assertEqual(list(factory.waiting), [])
        self.assertEqual(lateTransport.producerState, "producing")
        # It waited 4 s of its 10: 6 s are left for its Hello.
        clock.advance(5.9)
        self.assertFalse(lateTransport.disconnecting or lateTransport.disconnected)
        clock.advance(0.2)
        self.assertTrue(lateTransport.disconnected)
        for link, _ in [(late, None), *ghosts]:
            link.connectionLost(Failure(SessionLost("closed")))
        self.assertEqual(factory.links, set())
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])

    def test_waitingQueueTimerFollowsTheHead(self) -> None:
        """
        The queue's one timer is for its oldest connection; when that one
        leaves early, the timer finds the next at the head and waits for
        its time, and it goes when the queue empties.
        """
        clock = Clock()
        factory = agentLinkFactory(
            ProxySettings(max_pending_handshakes=1, handshake_timeout_secs=10.0), clock
        )
        first = factory.buildProtocol(None)
        assert isinstance(first, AgentLink)
        first.makeConnection(TCPStringTransport())
        waiting = []
        for _ in range(2):
            link = factory.buildProtocol(None)
            assert isinstance(link, AgentLink)
            transport = TCPStringTransport()
            link.makeConnection(transport)
            waiting.append((link, transport))
            clock.advance(3)
        # The oldest waiting one goes away by itself at 6 s; the timer set
        # for it (10 s) finds the second at the head, due at 13 s.
        waiting[0][0].connectionLost(Failure(SessionLost("gone")))
        clock.advance(4.01)
        self.assertEqual(len(factory.waiting), 1)
        self.assertFalse(waiting[1][1].disconnecting)
        clock.advance(2.98)
        self.assertFalse(waiting[1][1].disconnecting)
        clock.advance(0.02)
        self.assertTrue(waiting[1][1].disconnecting)
        self.assertEqual(factory.waiting, {})
        self.assertFalse(factory._waitExpiry)
        for link in (first, waiting[1][0]):
            link.connectionLost(Failure(SessionLost("gone")))
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])

    def test_waitingWithinTheOpenFileLimit(self) -> None:
        """
        Waiting connections hold a file each: when started, the factory lets
        only as many wait as the open-file limit leaves room for beside
        every agent and handshake (the reviewer's C{fdflood.py}: a flood
        that took every file would leave no port able to accept), says so,
        and refuses the others at once, saying why.
        """
        settings = ProxySettings(
            max_agents=100,
            max_pending_handshakes=1,
            max_waiting_handshakes=4096,
            max_grpc_connections=50,
        )
        asked = []
        factory = agentLinkFactory(settings, Clock())

        def limit(needed: int) -> int:
            asked.append(needed)
            return 50 + 100 + 1 + FILES_RESERVED + 2

        factory.openFileLimit = limit
        with capturedLogs() as events:
            factory.startFactory()
        self.assertEqual(asked, [50 + 100 + 1 + 4096 + FILES_RESERVED])
        self.assertEqual(factory.maxWaiting, 2)
        self.assertIn("leaves room for 2 of the 4096 connections", logText(events))
        self.assertIn(
            f"to {50 + 100 + 1 + 4096 + FILES_RESERVED} to let them all wait", logText(events)
        )
        links = [factory.buildProtocol(None) for _ in range(3)]
        self.assertTrue(all(isinstance(link, AgentLink) for link in links))
        refused = factory.buildProtocol(None)
        transport = TCPStringTransport()
        refused.makeConnection(transport)
        (reply,) = decodeAll(transport.value())
        self.assertIn(
            "(proxy.internal.maxWaitingHandshakes, lowered to fit the open-file limit)",
            reply.reject.message,
        )
        self.assertEqual(waitingRoom(settings, 10), 0)
        self.assertEqual(waitingRoom(settings, 100_000), 4096)

    def test_openFileLimitRaised(self) -> None:
        """
        The soft open-file limit is raised towards what is needed, never
        past the hard limit, and never lowered.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        self.assertEqual(raiseOpenFileLimit(1), soft)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (soft, hard))
        if hard != resource.RLIM_INFINITY and soft > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
            self.assertEqual(raiseOpenFileLimit(soft), soft)
            self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], soft)
            self.assertEqual(raiseOpenFileLimit(hard + 1), hard)

    def test_waitingShareChecked(self) -> None:
        """
        A waiting connection whose address holds its share of handshake
        places when its turn comes is refused, as it would have been at
        once.
        """
        factory = agentLinkFactory(
            ProxySettings(max_pending_handshakes=2, max_pending_handshakes_per_address=1),
            Clock(),
        )
        first = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1))
        second = factory.buildProtocol(IPv4Address("TCP", "127.0.0.3", 1))
        waiting = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 2))
        assert isinstance(first, AgentLink) and isinstance(second, AgentLink)
        assert isinstance(waiting, AgentLink)
        first.makeConnection(TCPStringTransport())
        second.makeConnection(TCPStringTransport())
        transport = TCPStringTransport()
        waiting.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        # A place frees, but 127.0.0.2 still holds its one.
        second.connectionLost(Failure(SessionLost("gone")))
        (reply,) = decodeAll(transport.value())
        self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
        self.assertIn("(proxy.internal.maxPendingHandshakesPerAddress)", reply.reject.message)
        self.assertTrue(transport.disconnecting)

    def test_ipv6CountedBySlash64(self) -> None:
        """
        The per-address cap counts an IPv6 peer by its /64, which one host
        usually holds whole, and an IPv4-mapped peer as its IPv4 address.
        """
        factory = agentLinkFactory(
            ProxySettings(max_pending_handshakes_per_address=2, max_waiting_handshakes=0),
            Clock(),
        )

        def refused(host: str, port: int) -> bool:
            address = (
                IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
            )
            link = factory.buildProtocol(address)
            assert link is not None
            transport = TCPStringTransport()
            link.makeConnection(transport)
            return bool(transport.value())

        self.assertEqual(
            [refused("2001:db8::1", 1), refused("2001:db8::2", 1), refused("2001:db8::3", 1)],
            [False, False, True],
        )
        self.assertFalse(refused("2001:db8:0:1::1", 1))
        self.assertEqual(
            [refused("10.0.0.1", 1), refused("::ffff:10.0.0.1", 2), refused("10.0.0.1", 3)],
            [False, False, True],
        )

    def test_openPortWarning(self) -> None:
        for settings, warned in [
            (ProxySettings(), True),
            (ProxySettings(agent_token="t"), False),
            (ProxySettings(identities=(Identity("a", "t"),)), False),
            (ProxySettings(tls_trust_cert_collection_file_path="ca.pem"), False),
        ]:
            factory = agentLinkFactory(settings, Clock())
            factory.openFileLimit = lambda needed: needed
            with capturedLogs() as events:
                factory.startFactory()
            self.assertEqual("the agent port is open" in logText(events), warned, settings)

    def test_clearTextCredentialsWarnedOnce(self) -> None:
        pair = Pair()
        with capturedLogs() as events:
            for _ in range(3):
                pair.proxy.scrape(ScrapeCall("fast", "", "", "", "Bearer secret", 5.0))
            pair.proxy.scrape(ScrapeCall("fast", "", "", "", "", 5.0))
        text = logText(events)
        self.assertEqual(text.count("over a link without TLS"), 1)
        self.assertNotIn("secret", text)


class HeartbeatTests(SynchronousTestCase):
    def test_idleLinkPings(self) -> None:
        """
        An idle link exchanges pings, and each end measures the round trip.
        """
        pair = Pair()
        self.assertIsNone(pair.proxy.roundTripSeconds)
        # Pinged at 2.5 s, then two periods later: the second carries the
        # round trip to the agent.
        for _ in range(6):
            pair.clock.advance(2.5)
            pair.flush()
        self.assertIsNotNone(pair.proxy.roundTripSeconds)
        self.assertIsNotNone(pair.agent.roundTripSeconds)
        self.assertFalse(disconnecting(pair.proxy))
        self.assertFalse(disconnecting(pair.agent))

    def test_busyLinkMeasuresRoundTrip(self) -> None:
        """
        A link busy with scrapes never goes idle, yet both ends know the
        round trip: the proxy measures it half a period after the handshake,
        then once every L{ROUND_TRIP_EVERY_PERIODS} periods (5 s here), and
        no more often; its second ping tells the agent.
        """
        pair = Pair()
        pings = pingsReceived(pair.agent)
        self.assertIsNone(pair.proxy.roundTripSeconds)
        # Just past the second measurement, short of a third.
        for _ in range(3 + ROUND_TRIP_EVERY_PERIODS * 5):
            pair.scrape("fast").deliverBody(Collector())
            pair.clock.advance(1.0)
            pair.flush()
        self.assertIsNotNone(pair.proxy.roundTripSeconds)
        self.assertIsNotNone(pair.agent.roundTripSeconds)
        # At 2.5 s and 30 s later (met at the next whole second here).
        self.assertEqual(len(pings), 2)
        # An agent answering a scrape every second sends prometheus-proxy's
        # proxy no heartbeat, and none is counted here either.
        self.assertEqual(
            pair.factory.metrics.registry.get_sample_value("proxy_heartbeat_count_total"), 0
        )

    def test_idleHeartbeatCount(self) -> None:
        """
        Over five idle minutes C{proxy_heartbeat_count} grows as under
        prometheus-proxy, whose idle agent sends one heartbeat about every
        5.25 s (57 in 300 s), though the proxy pings only every two periods:
        each pong counts the heartbeats due since the last, and those after
        the last pong wait for the next one.
        """
        pair = Pair()
        pings = pingsReceived(pair.agent)
        for _ in range(300):
            pair.clock.advance(1.0)
            pair.flush()
        counted = pair.factory.metrics.registry.get_sample_value("proxy_heartbeat_count_total")
        self.assertLessEqual(len(pings), 300 / 10)
        assert counted is not None
        self.assertTrue(55 <= counted <= 57, counted)

    def test_onlyTheProxyPings(self) -> None:
        """
        The proxy drives liveness: over a minute of idle link it pings
        once every two periods, the agent never does, and the
        agent knows the round trip from the proxy's pings.
        """
        pair = Pair()
        atProxy, atAgent = pingsReceived(pair.proxy), pingsReceived(pair.agent)
        pingTimes = []
        for _ in range(60):
            pair.clock.advance(1.0)
            before = len(atAgent)
            pair.flush()
            if len(atAgent) > before:
                pingTimes.append(round(pair.clock.seconds()))
        self.assertEqual(atProxy, [])
        # 5 s periods: at 2.5 s, then every 10 s: 6 in a minute (8 when it
        # pinged after a period and a half).
        self.assertEqual(len(atAgent), 6)
        self.assertEqual(pingTimes, [3, 13, 23, 33, 43, 53])
        self.assertEqual(atAgent[0].round_trip_micros, 0)
        self.assertTrue(all(ping.round_trip_micros for ping in atAgent[1:]))
        self.assertIsNotNone(pair.agent.roundTripSeconds)
        self.assertFalse(disconnecting(pair.agent))

    def test_oneTimerForManyLinks(self) -> None:
        """
        However many links a proxy holds, their heartbeats share one timer.
        """
        clock = Clock()
        factory = agentLinkFactory(ProxySettings(max_pending_handshakes_per_address=100), clock)
        links = []
        for _ in range(50):
            link = factory.buildProtocol(None)
            assert isinstance(link, AgentLink)
            link.makeConnection(TCPStringTransport())
            link.dataReceived(encodeFrame(Frame(hello=Hello(protocol_version=1))))
            links.append(link)
        self.assertEqual(factory.agentCount(), 50)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for link in links:
            link.connectionLost(Failure(SessionLost("test")))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_fasterAgentDrivesToo(self) -> None:
        """
        An agent that wants to notice a dead proxy sooner than three of the
        proxy's periods (heartbeatMaxInactivitySecs below the proxy's
        period) pings at its own period.
        """
        pair = Pair(
            agentSettings=AgentSettings(
                name="a1", path_configs=PATHS, heartbeat_max_inactivity_secs=1.0
            )
        )
        atProxy = pingsReceived(pair.proxy)
        for _ in range(20):
            pair.clock.advance(0.5)
            pair.flush()
        self.assertGreaterEqual(len(atProxy), 5)
        self.assertFalse(disconnecting(pair.agent))

    def test_olderAgentAnswered(self) -> None:
        """
        An older agent that pings on its own (here every 4 s, within the
        proxy's 5 s period) is answered, and with that traffic the proxy
        needs no idle pings of its own: only its round trip measurements.
        """
        clock = Clock()
        factory = agentLinkFactory(ProxySettings(), clock)
        link = factory.buildProtocol(None)
        assert isinstance(link, AgentLink)
        transport = TCPStringTransport()
        link.makeConnection(transport)
        link.dataReceived(encodeFrame(Frame(hello=Hello(protocol_version=1))))
        transport.clear()
        sent: list[Frame] = []
        for second in range(1, 61):
            clock.advance(1.0)
            if second % 4 == 0:
                link.dataReceived(encodeFrame(Frame(ping=Ping(nonce=second))))
            sent += decodeAll(transport.value())
            transport.clear()
        self.assertEqual([f.pong.nonce for f in sent if f.HasField("pong")], list(range(4, 61, 4)))
        # Half a period in, then every six periods: at 2.5 s and 32.5 s.
        self.assertEqual(len([f for f in sent if f.HasField("ping")]), 2)
        self.assertFalse(transport.disconnecting)

    def test_olderProxyTellsNoRoundTrip(self) -> None:
        """
        An older proxy's pings do not carry the round trip: the agent
        measures it itself, every seven periods, and is not aborted.
        """
        pair = Pair()
        # What an older proxy sends: pings without a round trip.
        pair.proxy.roundTripSeconds = None
        pair.proxy.frame_pong = lambda pong: None  # type: ignore[method-assign]
        atProxy = pingsReceived(pair.proxy)
        for _ in range(80):
            pair.clock.advance(1.0)
            pair.flush()
        self.assertEqual(len(atProxy), 2)
        self.assertIsNotNone(pair.agent.roundTripSeconds)
        self.assertFalse(disconnecting(pair.agent))

    def test_silentProxyAborted(self) -> None:
        """
        The agent only answers, yet it aborts a proxy it heard nothing from
        for three periods.
        """
        pair = Pair()
        for _ in range(16):
            pair.clock.advance(1.0)
        self.assertTrue(disconnecting(pair.agent))

    def test_silentPeerAborted(self) -> None:
        """
        When nothing arrives for three heartbeat periods the link is aborted
        and the agent's paths are gone.
        """
        pair = Pair()
        with capturedLogs() as events:
            # Time passes but nothing is pumped: the peer looks dead.
            for _ in range(7):
                pair.clock.advance(2.5)
        self.assertTrue(disconnecting(pair.proxy))
        self.assertIn("nothing heard from", logText(events))
        pair.flush()
        self.assertEqual(pair.registry.lookup("fast"), ())
        # As prometheus-proxy counts the agents it gives up on for silence.
        self.assertEqual(
            pair.factory.metrics.registry.get_sample_value("proxy_eviction_count_total"), 1
        )


class CorrelationTests(SynchronousTestCase):
    def test_lossFailsEverythingAtOnce(self) -> None:
        """
        Losing the link fails every outstanding request immediately.
        """
        pair = Pair()
        waiting = [pair.agent.expectReply()[1] for _ in range(3)]
        pair.agent.transport.abortConnection()
        pair.flush()
        for d in waiting:
            self.failureResultOf(d, SessionLost)
        _, after = pair.agent.expectReply()
        self.failureResultOf(after, SessionLost)

    def test_lateReplyDropped(self) -> None:
        """
        A reply nobody waits for (its request was cancelled) is counted, not
        an error.
        """
        pair = Pair()
        requestId, d = pair.agent.expectReply()
        d.cancel()
        self.failureResultOf(d)
        pair.agent.replyReceived(requestId, object())
        self.assertEqual(pair.agent.lateReplies, 1)


class ScrapeTests(SynchronousTestCase):
    def test_scrape(self) -> None:
        pair = Pair()
        stream = pair.scrape("fast")
        head = self.successResultOf(stream.head)
        self.assertEqual(head.status, 200)
        self.assertEqual(head.contentType, "text/plain; version=0.0.4")
        collector = Collector()
        stream.deliverBody(collector)
        self.assertEqual(b"".join(collector.data), b"up 1\n")
        self.assertTrue(collector.done)
        self.assertEqual(pair.proxy.scrapesInFlight, 0)

    def test_unknownPathAtAgent(self) -> None:
        pair = Pair()
        failure = self.failureResultOf(pair.scrape("other").head, ScrapeFailed).value
        self.assertEqual((failure.status, failure.kind), (404, "path_not_found"))
        self.assertIn("does not serve /other", failure.reason)

    def test_linkLostMidScrape(self) -> None:
        """
        A scrape waiting on an agent whose link drops fails at once.
        """
        pair = Pair()
        stream = pair.scrape("slow")
        self.assertNoResult(stream.head)
        pair.agent.transport.abortConnection()
        pair.flush()
        failure = self.failureResultOf(stream.head, ScrapeFailed)
        self.assertIn("agent disconnected", str(failure.value))
        self.assertEqual(pair.registry.agents(), [])

    def test_droppedResults(self) -> None:
        """
        A link lost under a scrape drops the result of the fetch under way;
        one still queued for a slot never started and is not counted, as
        prometheus-proxy's agent drains its queue.
        """
        results: list[str] = []

        class Results(ScrapeObserver):
            def resultSent(self, kind: str) -> None:
                results.append(kind)

        settings = AgentSettings(name="a1", path_configs=PATHS, max_concurrent_clients=1)
        pair = Pair(agentSettings=settings, observer=Results())
        streams = [pair.scrape("slow"), pair.scrape("slow")]
        self.assertEqual(len(pair.target.pending), 1)
        pair.agent.transport.abortConnection()
        pair.flush()
        self.assertEqual(results, ["dropped"])
        for stream in streams:
            self.failureResultOf(stream.head, ScrapeFailed)

    def test_invalidPathCounted(self) -> None:
        """
        A path the agent does not serve is counted, and its answer is a
        result sent.
        """
        seen: list[str] = []

        class Seen(ScrapeObserver):
            def invalidPath(self) -> None:
                seen.append("invalid_path")

            def resultSent(self, kind: str) -> None:
                seen.append(kind)

        pair = Pair(observer=Seen())
        self.failureResultOf(pair.scrape("other").head, ScrapeFailed)
        self.assertEqual(seen, ["invalid_path", "non-gzipped"])

    def test_cancelReachesTarget(self) -> None:
        """
        Cancelling at the proxy cancels the target request at the agent, and
        nothing is left in flight on either side.
        """
        pair = Pair()
        stream = pair.scrape("slow")
        (targetRequest,) = pair.target.pending
        finished = targetRequest.notifyFinish()
        stream.head.cancel()
        self.failureResultOf(stream.head, CancelledError)
        pair.flush()
        self.failureResultOf(finished)
        self.assertEqual(pair.proxy.scrapesInFlight, 0)
        self.assertEqual(pair.agent._scrapes, {})

    def test_timeoutAtAgent(self) -> None:
        """
        A target slower than the deadline yields a TIMED_OUT head.
        """
        pair = Pair()
        stream = pair.scrape("slow")
        pair.clock.advance(5)
        pair.flush()
        failure = self.failureResultOf(stream.head, ScrapeFailed).value
        self.assertEqual((failure.status, failure.kind), (408, "upstream_timed_out"))
        self.assertIn("did not answer within 5s", failure.reason)

    def test_linkLostMidBody(self) -> None:
        """
        A link lost after the head fails the body as a disconnection, which
        Prometheus sees as 502 like a disconnection before the head.
        """
        pair = Pair()
        stream = pair.scrape("slow")
        (request,) = pair.target.pending
        request.write(b"x" * 40_000)
        pair.flush()
        self.successResultOf(stream.head)
        collector = Collector()
        stream.deliverBody(collector)
        self.assertEqual(pair.proxy.transfersInProgress, 1)
        pair.agent.transport.abortConnection()
        pair.flush()
        self.assertEqual(pair.proxy.transfersInProgress, 0)
        assert collector.failed is not None
        self.assertEqual((collector.failed.status, collector.failed.kind), (502, "upstream_error"))
        self.assertIn("agent disconnected", collector.failed.reason)
        self.assertEqual(
            pair.factory.metrics.registry.get_sample_value(
                "proxy_chunked_transfers_abandoned_total"
            ),
            1,
        )

    def test_failureWithoutHead(self) -> None:
        """
        A last chunk for a scrape that never had a head ends the scrape at
        once instead of leaving it to its deadline.
        """
        pair = Pair()
        stream = pair.scrape("slow")
        pair.proxy.frame_scrape_chunk(
            ScrapeChunk(scrape_id=1, last=True, outcome=Outcome.AGENT_ERROR, reason="oops")
        )
        failure = self.failureResultOf(stream.head, ScrapeFailed)
        self.assertIn("agent sent no answer head: oops", str(failure.value))
        self.assertEqual(pair.proxy.scrapesInFlight, 0)


class _Silent(Protocol):
    """
    A connection to the agent port that says nothing and keeps what it is
    told.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(self.received)


class AgentPortLoopbackTests(TestCase):
    """
    Over the handshake caps, a real agent port answers at once: it never
    stops accepting, so no connection waits unanswered in the kernel.
    """

    timeout = 10

    @inlineCallbacks
    def _refusedOver(self, waiting: int) -> Generator[Deferred[Any], Any, bytes]:
        """
        Fill two handshake places and C{waiting} waiting ones with silent
        connections on 127.0.0.1, then return what one more is told before
        it is closed.
        """
        factory = agentLinkFactory(
            ProxySettings(max_pending_handshakes=2, max_waiting_handshakes=waiting), reactor
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]
        held = []
        for _ in range(2 + waiting):
            silent = yield connectProtocol(endpoint, _Silent())
            held.append(silent)
            self.addCleanup(silent.transport.abortConnection)
        while len(factory.links) < 2 + waiting:
            # Accepted by the next reactor iteration; bounded by the timeout.
            yield deferLater(reactor, 0.01)
        last = yield connectProtocol(endpoint, _Silent())
        told: bytes = yield last.lost
        self.assertEqual([h.received for h in held], [b""] * len(held))
        for link in list(factory.links):
            link.close("test over", abort=True)
        return told

    @inlineCallbacks
    def test_noneWaitRefusedAtOnce(self) -> Generator[Deferred[Any], Any, None]:
        """
        With C{maxWaitingHandshakes} 0, a connection at the cap is refused
        at once.
        """
        told = yield self._refusedOver(0)
        (reply,) = decodeAll(told)
        self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
        self.assertIn("(proxy.internal.maxPendingHandshakes)", reply.reject.message)

    @inlineCallbacks
    def test_waitingFullRefusedAtOnce(self) -> Generator[Deferred[Any], Any, None]:
        """
        With the waiting queue full, a connection is refused at once.
        """
        told = yield self._refusedOver(3)
        (reply,) = decodeAll(told)
        self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
        self.assertIn("(proxy.internal.maxWaitingHandshakes)", reply.reject.message)
