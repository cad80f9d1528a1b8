"""
Tests for the link's state machine and the agent port's admission rules:
L{promtwist.protocol.session.LinkState}, the allowed-frame tables of
L{promtwist.proxy.link.AgentLink} and L{promtwist.agent.connection.ProxyConnection},
and L{promtwist.proxy.admission}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.agent.connection import ProxyConnection, Rejected
from promtwist.config.settings import ProxySettings
from promtwist.protocol.promtwist_pb2 import (
    Frame,
    Goodbye,
    Hello,
    Ping,
    RegisterPath,
    Reject,
    ScrapeResponse,
    Welcome,
)
from promtwist.protocol.session import HANDSHAKE_MAX_FRAME_BYTES, LinkState, SessionLost
from promtwist.proxy.admission import AuthThrottle, helloProblem
from promtwist.proxy.answers import ScrapeFailed
from promtwist.proxy.link import AgentLink, AgentLinkFactory
from promtwist.proxy.relay import ScrapeCall
from promtwist.test.helpers import agentLinkFactory
from promtwist.test.test_framing import encode, logText
from promtwist.test.test_link import Pair, TCPStringTransport, decodeAll


def assertNoTraceback(case: SynchronousTestCase, events: Sequence[LogEvent]) -> None:
    """
    Nothing in C{events} is a logged failure or critical.
    """
    for event in events:
        case.assertNotIn("log_failure", event, logText([event]))
        case.assertNotEqual(event.get("log_level"), LogLevel.critical, logText([event]))


def connect(factory: AgentLinkFactory, host: str = "127.0.0.1") -> tuple[Any, TCPStringTransport]:
    """
    A connection to the agent port from C{host}: the protocol the factory
    built for it (an L{AgentLink}, or a refusal) and its transport.
    """
    address = IPv4Address("TCP", host, 40000)
    protocol = factory.buildProtocol(address)
    assert protocol is not None
    transport = TCPStringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def hello(**fields: Any) -> bytes:
    fields.setdefault("agent_name", "a")
    return encode(Frame(hello=Hello(protocol_version=1, **fields)))


def sent(transport: TCPStringTransport) -> list[Frame]:
    """
    The frames written since last asked.
    """
    frames = decodeAll(transport.value())
    transport.clear()
    return frames


def lose(link: AgentLink | ProxyConnection) -> None:
    link.connectionLost(Failure(ConnectionDone()))


def established(
    factory: AgentLinkFactory, host: str = "127.0.0.1"
) -> tuple[AgentLink, TCPStringTransport]:
    link, transport = connect(factory, host)
    assert isinstance(link, AgentLink)
    link.dataReceived(hello())
    (welcome,) = sent(transport)
    assert welcome.WhichOneof("kind") == "welcome", welcome
    return link, transport


class StateTableTests(SynchronousTestCase):
    def test_everyAllowedFrameHasAHandler(self) -> None:
        """
        A kind a state allows is one the role handles, so the table is the
        whole gate.
        """
        for role in (AgentLink, ProxyConnection):
            for state, kinds in role.allowedFrames.items():
                self.assertNotEqual(state, LinkState.CLOSED)
                for kind in kinds:
                    self.assertTrue(callable(getattr(role, "frame_" + kind, None)), (role, kind))

    def test_secondHello(self) -> None:
        """
        A Hello on an established link closes that link with a one-line
        reason, no traceback; the agent's paths leave the registry.
        """
        factory = agentLinkFactory(ProxySettings(), Clock())
        link, transport = established(factory)
        link.dataReceived(encode(Frame(register_path=RegisterPath(request_id=1, path="p"))))
        self.assertEqual(factory.registry.lookup("p"), (link,))
        with capturedLogs() as events:
            link.dataReceived(hello())
        assertNoTraceback(self, events)
        self.assertIn("protocol error from", logText(events))
        self.assertIn("hello frame on an established link", logText(events))
        self.assertTrue(transport.disconnected)
        self.assertIs(link.state, LinkState.CLOSED)
        lose(link)
        self.assertEqual(factory.registry.lookup("p"), ())
        self.assertEqual((factory.links, factory.pending), (set(), set()))

    def test_secondWelcome(self) -> None:
        """
        A Welcome on an established agent link is a protocol error that
        closes it, with no traceback.
        """
        pair = Pair()
        self.successResultOf(pair.ready)
        welcome = Frame(welcome=Welcome(agent_id="x", protocol_version=1))
        with capturedLogs() as events:
            pair.agent.dataReceived(encode(welcome))
            pair.flush()
        assertNoTraceback(self, events)
        self.assertIn("welcome frame on an established link", logText(events))
        self.assertIs(pair.agent.state, LinkState.CLOSED)
        self.assertEqual(pair.registry.agents(), [])

    def test_rejectAfterWelcome(self) -> None:
        pair = Pair()
        self.successResultOf(pair.ready)
        with capturedLogs() as events:
            pair.agent.dataReceived(encode(Frame(reject=Reject(message="late"))))
        assertNoTraceback(self, events)
        self.assertIn("reject frame on an established link", logText(events))

    def test_framesAfterCloseIgnored(self) -> None:
        """
        After a rejected Hello, what else the peer sent is neither handled
        nor buffered.
        """
        factory = agentLinkFactory(ProxySettings(agent_token="t"), Clock())
        link, transport = connect(factory)
        ping = encode(Frame(ping=Ping(nonce=1)))
        link.dataReceived(hello(token="wrong") + ping + ping[:3])
        (reply,) = sent(transport)
        self.assertEqual(reply.reject.reason, Reject.UNAUTHENTICATED)
        self.assertIs(link.state, LinkState.CLOSED)
        # Closed gracefully, so the Reject is flushed first.
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        link.dataReceived(ping * 100)
        self.assertEqual(sent(transport), [])
        self.assertEqual(link._unprocessed, b"")

    def test_welcomeProtocolVersionChecked(self) -> None:
        """
        An agent welcomed in another protocol version drops the link and
        says why.
        """
        pair = Pair()
        agent = pair.agent
        self.successResultOf(pair.ready)
        # A fresh connection still in its handshake.
        connection = agent.factory.buildProtocol(None)
        transport = TCPStringTransport()
        connection.makeConnection(transport)
        ready = connection.whenReady()
        with capturedLogs() as events:
            connection.dataReceived(
                encode(Frame(welcome=Welcome(agent_id="x", protocol_version=2)))
            )
        assertNoTraceback(self, events)
        self.assertIn("the proxy speaks protocol version 2", logText(events))
        self.assertTrue(transport.disconnected)
        lose(connection)
        failure = self.failureResultOf(ready, SessionLost)
        self.assertIn("the proxy speaks protocol version 2", str(failure.value))

    def test_rejectRightAfterConnect(self) -> None:
        """
        A Reject that arrives before anything else (a proxy at its handshake
        limit) fails the attempt with the proxy's reason, logged, and the
        agent closes its end.
        """
        pair = Pair()
        connection = pair.agent.factory.buildProtocol(None)
        transport = TCPStringTransport()
        connection.makeConnection(transport)
        ready = connection.whenReady()
        reason = "the proxy is at its handshake limit of 64 (proxy.internal.maxPendingHandshakes)"
        with capturedLogs() as events:
            connection.dataReceived(
                encode(Frame(reject=Reject(reason=Reject.OVERLOADED, message=reason)))
            )
        self.assertEqual(str(self.failureResultOf(ready, Rejected).value), "overloaded: " + reason)
        # Logged once by the dial report, not by each connection.
        self.assertNotIn("rejected", logText(events))
        self.assertTrue(transport.disconnecting)
        lose(connection)


class DrainingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = agentLinkFactory(ProxySettings(shutdown_grace_secs=4), self.clock)
        self.link, self.transport = established(self.factory)
        self.link.dataReceived(encode(Frame(register_path=RegisterPath(request_id=1, path="p"))))
        self.stream = self.link.scrape(ScrapeCall("p", "", "", "", "", 30.0))
        sent(self.transport)
        self.link.dataReceived(encode(Frame(goodbye=Goodbye(reason="leaving"))))

    def test_goodbyeDrains(self) -> None:
        """
        After Goodbye the agent's paths are gone at once, the link takes no
        new scrapes but still answers pings, and closes when its last scrape
        in flight ends.
        """
        link, transport = self.link, self.transport
        self.assertIs(link.state, LinkState.DRAINING)
        self.assertEqual(self.factory.registry.lookup("p"), ())
        self.failureResultOf(link.scrape(ScrapeCall("p", "", "", "", "", 5.0)).head, ScrapeFailed)
        link.dataReceived(encode(Frame(ping=Ping(nonce=7))))
        (pong,) = sent(transport)
        self.assertEqual(pong.pong.nonce, 7)
        self.assertFalse(transport.disconnecting)
        response = ScrapeResponse(
            scrape_id=1, status=200, body=b"up 1\n", last=True, content_length=-1
        )
        link.dataReceived(encode(Frame(scrape_response=response)))
        self.assertEqual(self.successResultOf(self.stream.head).status, 200)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        lose(link)
        self.assertEqual(self.factory.links, set())

    def test_graceBoundsDraining(self) -> None:
        """
        Scrapes that do not finish within the grace period are failed, and
        the link is aborted.
        """
        self.clock.advance(3.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnected)
        lose(self.link)
        failure = self.failureResultOf(self.stream.head, ScrapeFailed)
        self.assertIn("did not finish within 4s", str(failure.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noRegistrationWhileDraining(self) -> None:
        with capturedLogs() as events:
            self.link.dataReceived(
                encode(Frame(register_path=RegisterPath(request_id=2, path="q")))
            )
        self.assertIn("register_path frame on a draining link", logText(events))
        self.assertEqual(self.factory.registry.lookup("q"), ())

    def test_drainingLinkCounts(self) -> None:
        """
        A draining link still counts against C{maxAgents} until its socket
        is closed.
        """
        factory = agentLinkFactory(ProxySettings(max_agents=1), self.clock)
        link, _ = established(factory)
        stream = link.scrape(ScrapeCall("p", "", "", "", "", 30.0))
        link.dataReceived(encode(Frame(goodbye=Goodbye(reason="leaving"))))
        self.assertEqual(factory.registry.agents(), [])
        second, secondTransport = connect(factory)
        second.dataReceived(hello())
        (reply,) = sent(secondTransport)
        self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
        self.assertIn("proxy.internal.maxAgents", reply.reject.message)
        lose(link)
        lose(second)
        self.failureResultOf(stream.head, ScrapeFailed)
        established(factory)


class AdmissionTests(SynchronousTestCase):
    def test_pendingPerAddress(self) -> None:
        """
        One address holding its share of pending handshakes does not keep
        out agents dialling from another; its next connection is refused with
        a Reject naming the setting.
        """
        factory = agentLinkFactory(
            ProxySettings(max_pending_handshakes=10, max_pending_handshakes_per_address=3),
            Clock(),
        )
        held = [connect(factory, "127.0.0.2")[0] for _ in range(3)]
        refused, transport = connect(factory, "127.0.0.2")
        self.assertNotIsInstance(refused, AgentLink)
        (reply,) = sent(transport)
        self.assertEqual(reply.reject.reason, Reject.OVERLOADED)
        self.assertEqual(
            reply.reject.message,
            "the proxy is at its handshake limit of 3 for 127.0.0.2 "
            "(proxy.internal.maxPendingHandshakesPerAddress)",
        )
        established(factory, "127.0.0.1")
        for link in held:
            lose(link)
        self.assertEqual(factory.pending, set())
        self.assertIsInstance(connect(factory, "127.0.0.2")[0], AgentLink)

    def test_authFailuresThrottled(self) -> None:
        """
        After C{maxAuthFailuresPerAddress} failures an address is refused
        without its token being checked, for the backoff period; the log
        stays short however many guesses arrive.
        """
        clock = Clock()
        factory = agentLinkFactory(
            ProxySettings(agent_token="right", max_pending_handshakes_per_address=1000), clock
        )
        replies: list[str] = []
        with capturedLogs() as events:
            for _ in range(200):
                link, transport = connect(factory, "127.0.0.3")
                link.dataReceived(hello(token="guess"))
                replies.extend(f.reject.message for f in sent(transport))
                lose(link)
        self.assertEqual(replies[:5], ["invalid agent token"] * 5)
        self.assertEqual(
            set(replies[5:]),
            {"too many failed authentication attempts from 127.0.0.3; retry in 60 s"},
        )
        self.assertLessEqual(len(events), 2 * factory.warnings.burst)
        # The right token from the same address waits out the backoff too...
        link, transport = connect(factory, "127.0.0.3")
        link.dataReceived(hello(token="right"))
        (reply,) = sent(transport)
        self.assertEqual(reply.WhichOneof("kind"), "reject")
        lose(link)
        # ... which does not hold another address back.
        link, transport = connect(factory, "127.0.0.4")
        link.dataReceived(hello(token="right"))
        self.assertEqual(sent(transport)[0].WhichOneof("kind"), "welcome")
        clock.advance(AuthThrottle.BACKOFF_SECONDS)
        link, transport = connect(factory, "127.0.0.3")
        link.dataReceived(hello(token="right"))
        self.assertEqual(sent(transport)[0].WhichOneof("kind"), "welcome")

    def test_throttleTableBounded(self) -> None:
        self.patch(AuthThrottle, "MAX_ADDRESSES", 10)
        throttle = AuthThrottle(Clock(), 1)
        for n in range(100):
            throttle.failed(f"10.0.0.{n}")
        self.assertEqual(len(throttle), 10)
        self.assertTrue(throttle.blockedFor("10.0.0.99"))
        self.assertFalse(throttle.blockedFor("10.0.0.0"))

    def test_failureWhileBlocked(self) -> None:
        """
        A failure counted while the address is refused, past the window
        that refused it, leaves the backoff as it was: it neither starts a
        fresh window (which lifted the block) nor extends it.
        """
        clock = Clock()
        throttle = AuthThrottle(clock, 2)
        throttle.failed("10.0.0.1")
        clock.advance(AuthThrottle.WINDOW_SECONDS - 1)
        throttle.failed("10.0.0.1")
        clock.advance(AuthThrottle.BACKOFF_SECONDS - 1)
        throttle.failed("10.0.0.1")
        self.assertEqual(throttle.blockedFor("10.0.0.1"), 1.0)
        clock.advance(1)
        self.assertEqual(throttle.blockedFor("10.0.0.1"), 0.0)

    def test_throttleOff(self) -> None:
        throttle = AuthThrottle(Clock(), 0)
        for _ in range(100):
            throttle.failed("10.0.0.1")
        self.assertEqual((len(throttle), throttle.blockedFor("10.0.0.1")), (0, 0.0))

    def test_helloBounds(self) -> None:
        """
        Oversized fields and a frame limit too small for a scrape request are
        refused at the handshake, naming the field and the limit.
        """
        cases = [
            (
                Hello(agent_name="n" * 257),
                "agent_name of 257 characters exceeds the limit of 256 "
                "(proxy.internal.maxAgentNameLength)",
            ),
            (Hello(host_name="h" * 300), "host_name of 300 characters exceeds the limit of 255"),
            (Hello(launch_id="l" * 129), "launch_id of 129 characters exceeds the limit of 128"),
            (
                Hello(software_version="v" * 129),
                "software_version of 129 characters exceeds the limit of 128",
            ),
            (
                Hello(agent_name="evil\r\nSet-Cookie: x=1"),
                "agent_name holds the control character 0x0d",
            ),
            (Hello(host_name="h\x1b[31m"), "host_name holds the control character 0x1b"),
            (Hello(labels={str(n): "" for n in range(33)}), "33 labels exceed the limit of 32"),
            (Hello(labels={"k" * 129: ""}), "a label name of 129 characters exceeds the limit"),
            (Hello(labels={"k": "v" * 1025}), "a label value of 1025 characters exceeds the limit"),
            (
                Hello(max_frame_bytes=1000),
                f"the agent accepts frames of at most 1000 bytes, less than the "
                f"{HANDSHAKE_MAX_FRAME_BYTES} a scrape request may need; "
                "raise agent.internal.maxFrameBytes",
            ),
        ]
        for message, expected in cases:
            problem = helloProblem(message, 256)
            assert problem is not None, message
            self.assertIn(expected, problem)
        self.assertIsNone(helloProblem(Hello(agent_name="n" * 256, max_frame_bytes=65536), 256))

    def test_helloRefusedAsBadRequest(self) -> None:
        factory = agentLinkFactory(ProxySettings(max_agent_name_length=8), Clock())
        link, transport = connect(factory)
        with capturedLogs() as events:
            link.dataReceived(hello(agent_name="x" * 9))
        (reply,) = sent(transport)
        self.assertEqual(reply.reject.reason, Reject.BAD_REQUEST)
        self.assertIn("(proxy.internal.maxAgentNameLength)", reply.reject.message)
        self.assertNotIn("x" * 9, logText(events))

    def test_tinyFrameLimitRefused(self) -> None:
        """
        An agent announcing a frame limit below 64 KiB is refused at the
        handshake, before any scrape could become an error page.
        """
        factory = agentLinkFactory(ProxySettings(), Clock())
        link, transport = connect(factory)
        link.dataReceived(hello(max_frame_bytes=4096))
        (reply,) = sent(transport)
        self.assertEqual(reply.reject.reason, Reject.BAD_REQUEST)
        self.assertIn("agent.internal.maxFrameBytes", reply.reject.message)


class LogTests(SynchronousTestCase):
    def test_goodbyeReasonClipped(self) -> None:
        factory = agentLinkFactory(ProxySettings(), Clock())
        link, transport = established(factory)
        with capturedLogs() as events:
            link.dataReceived(encode(Frame(goodbye=Goodbye(reason="r" * 50_000))))
        text = logText(events)
        self.assertIn("(50000 characters)", text)
        self.assertLess(len(text), 1000)
        # With nothing in flight, the link closes at once.
        self.assertTrue(transport.disconnecting)

    def test_oversizedFrameClosesOnlyThatLink(self) -> None:
        factory = agentLinkFactory(ProxySettings(), Clock())
        good, goodTransport = established(factory, "127.0.0.5")
        bad, badTransport = established(factory, "127.0.0.6")
        with capturedLogs() as events:
            bad.dataReceived(b"\x7f\xff\xff\xff")
        assertNoTraceback(self, events)
        self.assertIn("frame length 2147483647 exceeds the limit", logText(events))
        self.assertTrue(badTransport.disconnected)
        self.assertFalse(goodTransport.disconnecting)
        self.assertIs(good.state, LinkState.ESTABLISHED)

    def test_reconnectingRenewsNoBudget(self) -> None:
        """
        Warnings a peer can provoke are budgeted for the agent port as a
        whole: a peer that reconnects for every refused registration and
        protocol error gets no fresh budget, and no summary line per link.
        """
        factory = agentLinkFactory(ProxySettings(), Clock())
        with capturedLogs() as events:
            for n in range(200):
                link, _ = established(factory, f"127.0.{n // 250}.{n % 250 + 1}")
                link.dataReceived(
                    encode(Frame(register_path=RegisterPath(request_id=1, path="a//b")))
                )
                link.dataReceived(b"\x7f\xff\xff\xff")
                lose(link)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertLessEqual(len(warnings), 2 * 5, logText(warnings))


class BufferedTransport(TCPStringTransport):
    """
    A transport that, as Twisted's TCP transport does, pauses its producer
    once more than C{bufferSize} bytes wait unsent, and resumes it when
    L{flushed}: the peer reads nothing until then.
    """

    bufferSize = 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.bufferSize:
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def flushed(self) -> list[Frame]:
        """
        The peer read everything: the frames it got.
        """
        frames = sent(self)
        assert self.producer is not None
        self.producer.resumeProducing()
        return frames


def establishedOn(factory: AgentLinkFactory, transport: TCPStringTransport) -> AgentLink:
    link = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert isinstance(link, AgentLink)
    link.makeConnection(transport)
    link.dataReceived(hello())
    (welcome,) = sent(transport)
    assert welcome.WhichOneof("kind") == "welcome", welcome
    return link


class BackpressureTests(SynchronousTestCase):
    """
    A peer that does not read what the link writes is not read either, and
    the heartbeat aborts it; every close is bounded in time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = agentLinkFactory(
            ProxySettings(heartbeat_period_secs=2, shutdown_grace_secs=4), self.clock
        )
        self.transport = BufferedTransport()
        self.link = establishedOn(self.factory, self.transport)

    def test_socketReadOnceCaughtUp(self) -> None:
        """
        The socket is read again only once what waited is parsed: a peer
        that reads a little at a time cannot make what waits grow.
        """
        ping = encode(Frame(ping=Ping(nonce=1)))
        self.link.dataReceived(ping * 1000)
        self.link.dataReceived(ping * 1000)
        waiting = len(self.link._unprocessed)
        self.transport.flushed()
        self.assertEqual(self.transport.producerState, "paused")
        self.assertLess(len(self.link._unprocessed), waiting)
        for _ in range(1000):
            if self.transport.producerState == "producing":
                break
            self.transport.flushed()
        self.assertEqual(self.link._unprocessed, b"")

    def test_closingUnregisters(self) -> None:
        """
        Closing takes the link off as the transport's producer: transports
        wait for their producer before they close (TLS's for ever).
        """
        self.link.close("done")
        self.assertIsNone(self.transport.producer)

    def test_linkIsTheProducer(self) -> None:
        self.assertIs(self.transport.producer, self.link)
        self.assertTrue(self.transport.streaming)
        pair = Pair()
        self.assertIs(pair.agent.transport.producer, pair.agent)  # type: ignore[attr-defined]

    def test_unreadPeerNotRead(self) -> None:
        """
        Pings from a peer that does not read its Pongs are answered only up
        to the transport's buffer; the rest wait, unparsed, until the peer
        has read what was sent, and are answered then, in order.
        """
        ping = encode(Frame(ping=Ping(nonce=1)))
        pings = 1000
        self.link.dataReceived(ping * (pings - 1))
        unsent = len(self.transport.value())
        self.assertLessEqual(unsent, self.transport.bufferSize + len(ping))
        # What it sends while not read stops the socket being read.
        self.assertEqual(self.transport.producerState, "producing")
        self.link.dataReceived(ping)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(len(self.transport.value()), unsent)
        answered = 0
        for _ in range(pings):
            pongs = self.transport.flushed()
            if not pongs:
                break
            answered += len(pongs)
        self.assertEqual(answered, pings)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.link._unprocessed, b"")

    def test_unreadPeerIsSilent(self) -> None:
        """
        A peer kept unread is silent however much it sends: the heartbeat
        aborts its link after three periods.
        """
        self.link.pauseProducing()
        ping = encode(Frame(ping=Ping(nonce=1)))
        with capturedLogs() as events:
            for _ in range(5):
                self.clock.advance(1)
                self.link.dataReceived(ping)
            self.assertFalse(self.transport.disconnected)
            self.clock.advance(2)
        self.assertTrue(self.transport.disconnected)
        self.assertIn("nothing heard from", logText(events))
        lose(self.link)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_gracefulCloseBounded(self) -> None:
        """
        A graceful close the peer does not let finish is aborted after
        C{closeTimeout} (the grace period), with one line saying why.
        """
        self.assertEqual(self.link.closeTimeout, 4)
        self.link.close("done")
        self.assertTrue(self.transport.disconnecting)
        with capturedLogs() as events:
            self.clock.advance(3.9)
            self.assertFalse(self.transport.disconnected)
            self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnected)
        self.assertIn("did not take what was left to send within 4s", logText(events))
        lose(self.link)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abortAfterGracefulClose(self) -> None:
        self.link.close("done")
        self.assertFalse(self.transport.disconnected)
        self.link.close("given up", abort=True)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.link.closeReason, "done")
        lose(self.link)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_goodbyeFromAnUnreadPeer(self) -> None:
        """
        A peer that says Goodbye and reads nothing of what is left is
        aborted once the close timeout passes; it counts until then.
        """
        self.link.dataReceived(encode(Frame(goodbye=Goodbye(reason="bye"))))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.agentCount(), 1)
        self.clock.advance(4)
        self.assertTrue(self.transport.disconnected)
        lose(self.link)
        self.assertEqual(self.factory.agentCount(), 0)

    def test_closeAllBounded(self) -> None:
        """
        Shutting down waits for no agent longer than the grace period.
        """
        self.link.pauseProducing()
        done = self.factory.closeAll("stopping")
        self.assertNoResult(done)
        self.clock.advance(4)
        self.assertTrue(self.transport.disconnected)
        lose(self.link)
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])
