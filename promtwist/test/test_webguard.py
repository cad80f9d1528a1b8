"""
Tests for L{promtwist.webguard}: limits on request heads and bodies, the
header deadline, the allow-list, and the same over real loopback sockets.

The tests that hold for every HTTP port of promtwist drive a
L{ServerUnderTest}: here L{HardenedSite}; L{promtwist.test.test_httpserver}
runs them again against the scrape port's own server.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IReactorTime, ITransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.test import __file__ as twistedTestFile
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer_only

from promtwist.httpguard import ABORT_TIMEOUT, REFUSAL_LOG_INTERVAL, REMEMBERED_REFUSALS
from promtwist.listen import withTLS
from promtwist.test.helpers import MiB, UnreadingPeer, rss, unsent
from promtwist.webguard import HardenedChannel, HardenedSite

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Hello(Resource):
    """
    Answers C{GET} with its path, holds C{GET /slow} until told, and counts
    the body of a C{POST}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.rendered = 0

    def render_GET(self, request: Request) -> bytes | int:
        self.rendered += 1
        if request.path == b"/slow":
            self.held.append(request)
            return NOT_DONE_YET
        return b"hello " + request.path + b"\n"

    def render_POST(self, request: Request) -> bytes:
        self.rendered += 1
        assert request.content is not None
        return b"posted %d\n" % len(request.content.read())


def makeSite(
    resource: Resource,
    clock: IReactorTime | None = None,
    *,
    maxHeaderBytes: int = 1024,
    headerTimeout: float = 10.0,
    idleTimeout: float = 45.0,
    allowedNetworks: Sequence[str] = (),
    maxBodyBytes: int = 0,
) -> HardenedSite:
    return HardenedSite(
        resource,
        maxHeaderBytes=maxHeaderBytes,
        headerTimeout=headerTimeout,
        idleTimeout=idleTimeout,
        allowedNetworks=allowedNetworks,
        maxBodyBytes=maxBodyBytes,
        reactor=clock if clock is not None else Clock(),
    )


class ServerUnderTest(ABC):
    """
    An HTTP server with promtwist's defences, as the shared tests drive it:
    an application that answers C{GET} with C{hello <path>}, holds C{GET
    /slow} (in C{held}, each with C{write} and C{finish}) and counts what
    it answered (C{rendered}); one that answers with C{size} bytes; and a
    factory serving either.

    @ivar channelType: the protocol the factory builds.
    """

    channelType: type

    @abstractmethod
    def hello(self) -> Any: ...

    @abstractmethod
    def big(self, size: int) -> Any: ...

    @abstractmethod
    def site(self, app: Any, clock: IReactorTime | None = None, **limits: Any) -> Any:
        """
        A factory serving C{app} with C{limits} (C{maxHeaderBytes},
        C{headerTimeout}, C{idleTimeout}, C{allowedNetworks}), timed by
        C{clock} (a fresh L{Clock} by default).
        """


class Webguard(ServerUnderTest):
    channelType = HardenedChannel

    def hello(self) -> Hello:
        return Hello()

    def big(self, size: int) -> _Big:
        return _Big(size)

    def site(self, app: Any, clock: IReactorTime | None = None, **limits: Any) -> HardenedSite:
        return makeSite(app, clock, **limits)


def recorded(site: Any) -> list[Any]:
    """
    Keep every protocol C{site} builds from now on, for a test to look at.
    """
    built: list[Any] = []
    build = site.buildProtocol

    def buildProtocol(addr: object) -> Any:
        protocol = build(addr)
        if protocol is not None:
            built.append(protocol)
        return protocol

    site.buildProtocol = buildProtocol
    return built


def connect(site: Any) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(PEER)
    assert channel is not None
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    return channel, transport


def head(path: bytes = b"/", padding: int = 0, *, close: bool = False) -> bytes:
    """
    A GET request head, C{padding} bytes longer than the smallest one.
    """
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: example"]
    if close:
        lines.append(b"Connection: close")
    if padding:
        lines.append(b"X-Padding: " + b"p" * (padding - len(b"X-Padding: \r\n")))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def trickle(channel: Any, clock: Clock, data: bytes, every: float = 0.5, limit: int = 0) -> None:
    """
    Send C{data} a byte at a time, C{every} seconds apart; at most C{limit}
    bytes when given.
    """
    for byte in data[: limit or len(data)]:
        channel.dataReceived(bytes([byte]))
        clock.advance(every)


class HeadLimitTests(SynchronousTestCase):
    """
    A request head may take at most C{maxHeaderBytes}, line endings
    included; past that a request line gets 414 and headers get 431, and
    the connection closes.
    """

    server: ServerUnderTest = Webguard()

    def setUp(self) -> None:
        self.resource = self.server.hello()
        self.site = self.server.site(self.resource, maxHeaderBytes=1024)

    def assertRefused(self, transport: StringTransport, status: bytes, reason: bytes) -> None:
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 " + status + b" "), response[:80])
        self.assertIn(b"Connection: close\r\n", response)
        self.assertIn(b"Content-Type: text/plain; charset=utf-8\r\n", response)
        self.assertTrue(response.endswith(reason + b"\n"), response)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.rendered, 0)

    def test_atTheLimit(self) -> None:
        request = head(padding=1024 - len(head()))
        self.assertEqual(len(request), 1024)
        channel, transport = connect(self.site)
        channel.dataReceived(request)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertFalse(transport.disconnecting)

    def test_headersTooLarge(self) -> None:
        channel, transport = connect(self.site)
        channel.dataReceived(head(padding=1025 - len(head())))
        self.assertRefused(transport, b"431", b"request line and headers longer than 1024 bytes")

    def test_headerLineTooLong(self) -> None:
        """
        A header line that is still arriving is refused once it is longer
        than the limit, without waiting for its end.
        """
        channel, transport = connect(self.site)
        channel.dataReceived(b"GET / HTTP/1.1\r\nX-Long: " + b"x" * 1100)
        self.assertRefused(transport, b"431", b"request line and headers longer than 1024 bytes")

    def test_requestLineTooLong(self) -> None:
        channel, transport = connect(self.site)
        channel.dataReceived(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\n\r\n")
        self.assertRefused(transport, b"414", b"request line longer than 1024 bytes")

    def test_requestLineTooLongUnfinished(self) -> None:
        channel, transport = connect(self.site)
        channel.dataReceived(b"GET /" + b"a" * 1100)
        self.assertRefused(transport, b"414", b"request line longer than 1024 bytes")

    def test_aboveTwistedDefault(self) -> None:
        """
        A limit above Twisted's own 16 KiB is the limit: Twisted's does not
        cut in first.
        """
        site = self.server.site(self.resource, maxHeaderBytes=65536)
        channel, transport = connect(site)
        channel.dataReceived(head(padding=40000))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_perRequest(self) -> None:
        """
        Each request on a keep-alive connection has the whole budget.
        """
        channel, transport = connect(self.site)
        for _ in range(3):
            channel.dataReceived(head(padding=1024 - len(head())))
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertFalse(transport.disconnecting)

    def test_ignoresWhatFollows(self) -> None:
        """
        Once refused, nothing more the client sends is treated as a request.
        """
        channel, transport = connect(self.site)
        channel.dataReceived(b"GET /" + b"a" * 1100)
        channel.dataReceived(b"\r\n\r\n" + head())
        self.assertEqual(self.resource.rendered, 0)
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)


class BodyTests(SynchronousTestCase):
    """
    Bodies are refused with 413 before they are read unless they declare a
    length within C{maxBodyBytes} (none, unless configured).
    """

    server: ServerUnderTest = Webguard()

    def test_noBodyByDefault(self) -> None:
        resource = self.server.hello()
        channel, transport = connect(self.server.site(resource))
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Content Too Large\r\n"))
        self.assertTrue(transport.value().endswith(b"this port takes no request bodies\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(resource.rendered, 0)

    def test_emptyBody(self) -> None:
        channel, transport = connect(self.server.site(self.server.hello()))
        channel.dataReceived(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_chunked(self) -> None:
        """
        A chunked body does not say how long it is, so it is refused.
        """
        resource = self.server.hello()
        channel, transport = connect(self.server.site(resource))
        channel.dataReceived(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(resource.rendered, 0)


class BodyLimitTests(SynchronousTestCase):
    """
    A L{HardenedSite} may take small bodies that declare their length.
    """

    def test_withinLimit(self) -> None:
        channel, transport = connect(makeSite(Hello(), maxBodyBytes=10))
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(transport.value().endswith(b"posted 5\n"))

    def test_overLimit(self) -> None:
        channel, transport = connect(makeSite(Hello(), maxBodyBytes=10))
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertIn(b"at most 10 bytes", transport.value())

    def test_chunked(self) -> None:
        """
        A chunked body does not say how long it is, so it is refused.
        """
        channel, transport = connect(makeSite(Hello(), maxBodyBytes=10))
        channel.dataReceived(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)


class HeaderDeadlineTests(SynchronousTestCase):
    """
    A request head must be complete C{headerTimeout} seconds after it
    started, however steadily its bytes arrive.
    """

    server: ServerUnderTest = Webguard()

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = self.server.hello()
        self.site = self.server.site(self.resource, self.clock, headerTimeout=10, idleTimeout=45)
        self.channel, self.transport = connect(self.site)

    def assertTimedOut(self) -> None:
        response = self.transport.value()
        self.assertTrue(response.endswith(b"request headers not complete within 10 seconds\n"))
        self.assertIn(b"HTTP/1.1 408 Request Timeout\r\n", response)
        self.assertTrue(self.transport.disconnecting)

    def test_slowloris(self) -> None:
        """
        A client that sends a header byte every half second, well inside
        the idle timeout, is cut off at the deadline.
        """
        trickle(self.channel, self.clock, b"GET / HTTP/1.1\r\nX-Slow: " + b"z" * 100, limit=19)
        self.assertEqual(self.clock.seconds(), 9.5)
        self.assertFalse(self.transport.disconnecting)
        trickle(self.channel, self.clock, b"z")
        self.assertTimedOut()
        self.assertEqual(self.resource.rendered, 0)

    def test_silent(self) -> None:
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTimedOut()

    def test_slowHeadInTime(self) -> None:
        trickle(self.channel, self.clock, head(), every=9.5 / len(head()))
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertFalse(self.transport.disconnecting)

    def test_notWhileAnswering(self) -> None:
        """
        The deadline is for the request, not the response: a slow answer is
        not cut off.
        """
        self.channel.dataReceived(head(b"/slow"))
        self.clock.advance(100)
        self.assertFalse(self.transport.disconnecting)
        self.resource.held[0].write(b"late\n")
        self.resource.held[0].finish()
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_keepAliveFreshDeadline(self) -> None:
        """
        Each request on a keep-alive connection has a deadline of its own,
        which starts with its first byte: the wait between requests belongs
        to the idle timeout.
        """
        slow = 9.5 / len(head(b"/one"))
        trickle(self.channel, self.clock, head(b"/one"), every=slow)
        self.clock.advance(30)
        trickle(self.channel, self.clock, head(b"/two"), every=slow)
        self.clock.advance(30)
        response = self.transport.value()
        self.assertIn(b"hello /one", response)
        self.assertIn(b"hello /two", response)
        self.assertFalse(self.transport.disconnecting)
        trickle(
            self.channel, self.clock, b"GET /three HTTP/1.1\r\nX-Slow: zzzzzzzzzzzzzzz", limit=20
        )
        self.assertTimedOut()

    def test_pipelined(self) -> None:
        """
        A request that arrived while the previous one was answered starts
        its deadline when it is taken up, not when its bytes arrived.
        """
        self.channel.dataReceived(head(b"/slow") + b"GET /next HTTP/1.1\r\n")
        self.clock.advance(5)
        self.resource.held[0].finish()
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTimedOut()

    def test_idleTimeout(self) -> None:
        self.channel.dataReceived(head())
        self.clock.advance(44.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 "), 1)

    def test_idleTimeoutFirst(self) -> None:
        """
        When the idle timeout is the shorter, it closes a silent connection
        and the header deadline adds nothing after it.
        """
        site = self.server.site(self.server.hello(), self.clock, headerTimeout=10, idleTimeout=5)
        _, transport = connect(site)
        self.clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(5)
        self.assertEqual(transport.value(), b"")

    def test_abortsStalledClose(self) -> None:
        """
        A client that does not read the refusal cannot hold the connection:
        it is aborted C{abortTimeout} seconds later.
        """
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(ABORT_TIMEOUT)
        self.assertTrue(self.transport.disconnected)

    def test_noTimersLeft(self) -> None:
        """
        A connection that goes away takes its timers with it.
        """
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.channel.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTimersLeftAfterRefusal(self) -> None:
        self.clock.advance(10)
        self.channel.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BufferedTransport(StringTransport):
    """
    A transport that, as Twisted's TCP transport does, pauses its producer
    once more than C{bufferSize} bytes wait unsent; L{flushed} is the
    client reading them all.
    """

    bufferSize = 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.bufferSize:
            self.producer.pauseProducing()

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        self.write(b"".join(seq))

    def flushed(self) -> bytes:
        """
        The client read everything: what it got.
        """
        received: bytes = self.value()
        self.clear()
        assert self.producer is not None
        self.producer.resumeProducing()
        return received


@implementer_only(ITransport, IConsumer)
class WrappedTransport(BufferedTransport):
    """
    A transport that, like TLS's, does not say it is a producer although
    pausing it stops the socket underneath: Twisted's channel then pauses
    nothing itself.
    """


class PipeliningTests(SynchronousTestCase):
    """
    A client that pipelines requests and does not read the answers gets
    no more answers until it reads: what it costs is bounded by the
    transport's buffer, not by what it sent.
    """

    server: ServerUnderTest = Webguard()

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = self.server.hello()
        self.site = self.server.site(self.resource, self.clock, headerTimeout=10, idleTimeout=45)
        channel = self.site.buildProtocol(PEER)
        assert channel is not None
        self.channel = channel
        self.transport = BufferedTransport(peerAddress=PEER)
        channel.makeConnection(self.transport)

    def test_answersWaitForTheClient(self) -> None:
        """
        Of 100 pipelined requests, only those whose answers fit the buffer
        are answered; the rest, in order, each time the client has read.
        """
        requests = b"".join(head(b"/%d" % i) for i in range(100))
        self.channel.dataReceived(requests)
        self.assertEqual(self.transport.producerState, "paused")
        first = self.transport.value()
        answer = len(first) // first.count(b"HTTP/1.1 200 OK")
        self.assertLessEqual(len(first), self.transport.bufferSize + answer)
        received = b""
        for _ in range(100):
            received += self.transport.flushed()
            if self.resource.rendered == 100:
                break
        received += self.transport.flushed()
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 100)
        bodies = [b"hello /%d\n" % i for i in range(100)]
        self.assertEqual([b for b in bodies if b in received], bodies)
        self.assertLess(received.index(b"hello /98\n"), received.index(b"hello /99\n"))
        self.assertEqual(self.transport.producerState, "producing")

    def test_heldOverTLS(self) -> None:
        """
        Behind a transport that does not say it is a producer (TLS), held
        requests stop the socket being read all the same.
        """
        channel = self.site.buildProtocol(PEER)
        assert channel is not None
        transport = WrappedTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        channel.dataReceived(b"".join(head(b"/%d" % i) for i in range(100)))
        self.assertEqual(transport.producerState, "paused")
        received = transport.flushed()
        self.assertEqual(transport.producerState, "paused")
        for _ in range(100):
            received += transport.flushed()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 100)

    def test_afterASlowAnswer(self) -> None:
        """
        Requests pipelined behind a slow answer wait, when that answer
        fills the buffer, until the client read it.
        """
        self.channel.dataReceived(head(b"/slow") + head(b"/a") + head(b"/b"))
        (slow,) = self.resource.held
        slow.write(b"x" * 2000)
        slow.finish()
        self.assertEqual(self.resource.rendered, 1)
        self.transport.flushed()
        self.assertEqual(self.resource.rendered, 3)
        self.assertIn(b"hello /b\n", self.transport.value())

    def test_heldRequestsStartNoDeadline(self) -> None:
        """
        A request that arrives while answers wait for the client starts its
        header deadline when it is taken up, not before.
        """
        self.channel.pauseProducing()
        self.channel.dataReceived(head(b"/a"))
        self.channel.dataReceived(head(b"/b"))
        self.clock.advance(30)
        self.assertEqual(self.resource.rendered, 1)
        self.transport.flushed()
        self.assertTrue(self.transport.value().endswith(b"hello /b\n"))
        self.assertFalse(self.transport.disconnecting)

    def test_idleTimeoutCloses(self) -> None:
        """
        A client that never reads is closed by the idle timeout, with no
        answer beyond the first.
        """
        self.channel.pauseProducing()
        self.channel.dataReceived(head(b"/a") + head(b"/b"))
        self.clock.advance(45)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 "), 1)
        self.channel.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AllowListTests(SynchronousTestCase):
    """
    Clients outside C{allowedNetworks} are refused at C{buildProtocol};
    refusals are logged at most once a minute per address.
    """

    server: ServerUnderTest = Webguard()

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = self.server.site(
            self.server.hello(), self.clock, allowedNetworks=["10.0.0.0/8", "2001:db8::/32"]
        )

    def admits(self, address: IPv4Address | IPv6Address | UNIXAddress) -> bool:
        return self.site.buildProtocol(address) is not None

    def test_everyoneWhenEmpty(self) -> None:
        site = self.server.site(self.server.hello())
        self.assertIsInstance(
            site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)), self.server.channelType
        )

    def test_ipv4(self) -> None:
        self.assertTrue(self.admits(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertFalse(self.admits(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertFalse(self.admits(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_ipv6(self) -> None:
        self.assertTrue(self.admits(IPv6Address("TCP", "2001:db8::7", 1)))
        self.assertFalse(self.admits(IPv6Address("TCP", "::1", 1)))

    def test_ipv4Mapped(self) -> None:
        """
        On a dual-stack listener IPv4 clients arrive as IPv4-mapped IPv6
        addresses; IPv4 networks match them.
        """
        self.assertTrue(self.admits(IPv6Address("TCP", "::ffff:10.1.2.3", 1)))
        self.assertFalse(self.admits(IPv6Address("TCP", "::ffff:192.0.2.1", 1)))

    def test_ipv4MappedEntry(self) -> None:
        """
        An IPv4-mapped entry means its IPv4 network, whichever way an IPv4
        client arrives: plain on an IPv4 listener, mapped on a dual-stack
        one.
        """
        site = self.server.site(self.server.hello(), allowedNetworks=["::ffff:10.0.0.0/104"])
        self.assertIsNotNone(site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertIsNotNone(site.buildProtocol(IPv6Address("TCP", "::ffff:10.1.2.3", 1)))
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertIsNone(site.buildProtocol(IPv6Address("TCP", "::ffff:192.0.2.1", 1)))
        self.assertIsNone(site.buildProtocol(IPv6Address("TCP", "2001:db8::1", 1)))

    def test_notIP(self) -> None:
        self.assertFalse(self.admits(UNIXAddress(b"/tmp/socket")))

    def test_singleAddresses(self) -> None:
        site = self.server.site(self.server.hello(), allowedNetworks=["192.0.2.7", "::1"])
        self.assertIsNotNone(site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1)))
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1)))
        self.assertIsNotNone(site.buildProtocol(IPv6Address("TCP", "::1", 1)))

    def test_invalidNetwork(self) -> None:
        self.assertRaises(
            ValueError, self.server.site, self.server.hello(), allowedNetworks=["10.0.0.0/33"]
        )

    def test_refusalsLoggedOncePerMinute(self) -> None:
        scanner = IPv4Address("TCP", "192.0.2.1", 1)
        other = IPv4Address("TCP", "192.0.2.2", 1)
        with capturedLogs() as events:
            for _ in range(5):
                self.admits(scanner)
                self.clock.advance(1)
            self.admits(other)
            self.clock.advance(REFUSAL_LOG_INTERVAL - 5)
            self.admits(scanner)
        hosts = [e["host"] for e in events if e.get("log_format", "").startswith("refused")]
        self.assertEqual(hosts, ["192.0.2.1", "192.0.2.2", "192.0.2.1"])

    def test_rememberedAddressesBounded(self) -> None:
        """
        A scan from more addresses than are remembered does not grow memory
        without bound: the oldest are forgotten, and logged again.
        """
        with capturedLogs() as events:
            for n in range(REMEMBERED_REFUSALS + 1):
                self.admits(IPv4Address("TCP", f"192.0.{n // 256}.{n % 256}", 1))
            self.admits(IPv4Address("TCP", "192.0.0.0", 1))
        refusals = [e for e in events if e.get("log_format", "").startswith("refused")]
        self.assertEqual(len(refusals), REMEMBERED_REFUSALS + 2)

    def test_tls(self) -> None:
        """
        Behind L{withTLS} a refused client is still refused outright, and an
        admitted one gets a TLS connection.
        """
        factory = withTLS(self.site, _serverCertificate().options())
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertIsInstance(
            factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1)), TLSMemoryBIOProtocol
        )


def _serverCertificate() -> PrivateCertificate:
    # Twisted's own test certificate: a server key is all these tests need.
    pem = FilePath(twistedTestFile).sibling("server.pem").getContent()
    certificate: PrivateCertificate = PrivateCertificate.loadPEM(pem)
    return certificate


class _Client(Protocol):
    """
    Sends C{request} on connecting and then, if told to dribble, one more
    byte every C{every} seconds for as long as the connection lasts. Fires
    C{closed} with everything received and how long the connection lasted.
    """

    def __init__(self, request: bytes, dribble: bool = False, every: float = 0.1) -> None:
        self.request = request
        self.dribble = LoopingCall(self._drip) if dribble else None
        self.every = every
        self.received = b""
        self.closed: Deferred[tuple[bytes, float]] = Deferred()
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def until(self, marker: bytes) -> Deferred[None]:
        """
        Fire once C{marker} has been received.
        """
        arrived: Deferred[None] = Deferred()
        self._waiting.append((marker, arrived))
        self.dataReceived(b"")
        return arrived

    def connectionMade(self) -> None:
        self.connectedAt = reactor.seconds()
        assert self.transport is not None
        self.transport.write(self.request)
        if self.dribble is not None:
            self.dribble.start(self.every, now=False)

    def _drip(self) -> None:
        assert self.transport is not None
        self.transport.write(b"z")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for waiting in [w for w in self._waiting if w[0] in self.received]:
            self._waiting.remove(waiting)
            waiting[1].callback(None)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self.dribble is not None and self.dribble.running:
            self.dribble.stop()
        self.closed.callback((self.received, reactor.seconds() - self.connectedAt))


class _Big(Resource):
    """
    Answers every C{GET} with C{size} bytes.
    """

    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.rendered = 0

    def render_GET(self, request: Request) -> bytes:
        self.rendered += 1
        return b"x" * self.size


def _connected(channel: Any) -> bool:
    return bool(getattr(channel.transport, "connected", False))


class _OneClient(ClientFactory):
    def __init__(self, client: _Client) -> None:
        self.client = client

    def buildProtocol(self, addr: object) -> _Client:
        return self.client


class LoopbackTests(TestCase):
    """
    The same defences over real sockets on 127.0.0.1, with a short header
    deadline so that the tests stay quick.
    """

    server: ServerUnderTest = Webguard()

    timeout = 20
    headerTimeout = 0.5

    async def listen(self, site: Any = None, tls: bool = False) -> int:
        if site is None:
            site = self.server.site(
                self.server.hello(),
                reactor,
                maxHeaderBytes=1024,
                headerTimeout=self.headerTimeout,
                idleTimeout=45,
            )
        factory = withTLS(site, _serverCertificate().options()) if tls else site
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    def client(self, portNumber: int, request: bytes, dribble: bool = False) -> _Client:
        client = _Client(request, dribble)
        reactor.connectTCP("127.0.0.1", portNumber, _OneClient(client))
        return client

    async def test_slowlorisCutWhileOthersServed(self) -> None:
        portNumber = await self.listen()
        slowloris = self.client(portNumber, b"GET / HTTP/1.1\r\nX-Slow: ", dribble=True)
        await deferLater(reactor, self.headerTimeout / 2)
        normal = await self.client(portNumber, head(b"/normal", close=True)).closed
        self.assertTrue(normal[0].startswith(b"HTTP/1.1 200 OK"), normal[0])
        self.assertTrue(normal[0].endswith(b"hello /normal\n"))
        self.assertFalse(slowloris.closed.called)
        received, lasted = await slowloris.closed
        self.assertGreaterEqual(lasted, self.headerTimeout * 0.9)
        self.assertLess(lasted, self.headerTimeout + 5)
        # The refusal may be lost to a reset: the client was still sending.
        if received:
            self.assertTrue(received.startswith(b"HTTP/1.1 408 "), received)

    async def test_pipelinedAndUnread(self) -> None:
        """
        A client that pipelines 2,000 requests for 32 KiB answers and reads
        none costs the server its buffer and an answer or two, not 62 MiB;
        another client is served meanwhile.
        """
        answer = 32 * 1024
        resource = self.server.big(answer)
        site = self.server.site(
            resource, reactor, maxHeaderBytes=1024, headerTimeout=self.headerTimeout, idleTimeout=45
        )
        channels = recorded(site)
        portNumber = await self.listen(site)
        request = head(b"/big")
        before = rss()
        peer = UnreadingPeer(portNumber, b"", request * 100, limit=len(request) * 2000)
        self.addCleanup(peer.close)
        most = [0]

        def measure() -> None:
            for channel in channels:
                if _connected(channel):
                    most[0] = max(most[0], unsent(channel.transport))

        measuring = LoopingCall(measure)
        measuring.start(0.01)
        try:
            # Long enough for the kernel's buffers to fill and the server to
            # stop answering.
            await deferLater(reactor, 1.0)
            normal, _ = await self.client(portNumber, head(b"/normal", close=True)).closed
        finally:
            measuring.stop()
        self.assertTrue(normal.startswith(b"HTTP/1.1 200 OK"), normal[:100])
        self.assertLess(resource.rendered, 1000)
        self.assertGreater(most[0], 0)
        self.assertLess(most[0], 64 * 1024 + 2 * answer + 4096)
        self.assertLess(rss() - before, 32 * MiB)
        peer.close()
        for _ in range(100):
            if not any(_connected(channel) for channel in channels):
                break
            await deferLater(reactor, 0.05)
        else:
            self.fail("the server kept the connection of a client that left")

    async def test_headersTooLarge(self) -> None:
        received, _ = await self.client(await self.listen(), head(padding=2000)).closed
        self.assertTrue(received.startswith(b"HTTP/1.1 431 "), received)

    async def test_uriTooLong(self) -> None:
        received, _ = await self.client(await self.listen(), head(b"/" + b"u" * 2000)).closed
        self.assertTrue(received.startswith(b"HTTP/1.1 414 "), received)

    def allowListSite(self, networks: Sequence[str]) -> Any:
        return self.server.site(
            self.server.hello(),
            reactor,
            maxHeaderBytes=1024,
            headerTimeout=self.headerTimeout,
            idleTimeout=45,
            allowedNetworks=networks,
        )

    async def test_refusedNetwork(self) -> None:
        portNumber = await self.listen(self.allowListSite(["10.0.0.0/8"]))
        received, _ = await self.client(portNumber, head(close=True)).closed
        self.assertEqual(received, b"")

    async def test_refusedNetworkTLS(self) -> None:
        """
        Behind TLS too the connection is closed, and nothing fails.
        """
        portNumber = await self.listen(self.allowListSite(["10.0.0.0/8"]), tls=True)
        received, _ = await self.client(portNumber, b"\x16\x03\x01").closed
        self.assertEqual(received, b"")

    async def test_allowedNetworkTLS(self) -> None:
        portNumber = await self.listen(self.allowListSite(["127.0.0.0/8"]), tls=True)
        client = _Client(head(close=True))
        # The server is who the test says it is; only the path through the
        # TLS layer is under test.
        endpoint = wrapClientTLS(
            CertificateOptions(), TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber)
        )
        await endpoint.connect(_OneClient(client))
        received, _ = await client.closed
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK"), received)

    async def test_allowedNetwork(self) -> None:
        portNumber = await self.listen(self.allowListSite(["127.0.0.0/8"]))
        received, _ = await self.client(portNumber, head(close=True)).closed
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK"), received)

    async def test_keepAliveFreshDeadline(self) -> None:
        """
        On one connection: a first request, a pause longer than the header
        deadline, a second request sent slowly but within its own deadline,
        then a third that never finishes and is cut off.
        """
        client = self.client(await self.listen(), head(b"/one"))
        await client.until(b"hello /one")
        await deferLater(reactor, self.headerTimeout * 1.5)
        assert client.transport is not None
        second = head(b"/two")
        client.transport.write(second[:-1])
        await deferLater(reactor, self.headerTimeout * 0.6)
        client.transport.write(second[-1:])
        await client.until(b"hello /two")
        self.assertFalse(client.closed.called)
        thirdAt = reactor.seconds()
        client.transport.write(b"GET /three HTTP/1.1\r\n")
        received, _ = await client.closed
        self.assertIn(b"HTTP/1.1 408 ", received)
        self.assertGreaterEqual(reactor.seconds() - thirdAt, self.headerTimeout * 0.9)
