"""
Tests for L{promtwist.agent.client}: the parser's edge cases and the pool's
bookkeeping on in-memory transports with a L{Clock}, then what is about
sockets (reuse, stale connections, closing, framing, streaming a large body
within bounded memory) over loopback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools
from twisted.internet import error as netError
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from promtwist.agent.client import (
    CLOSE_TIMEOUT_SECS,
    IDLE_TIMEOUT_SECS,
    MAX_FRAMING_BYTES,
    MAX_HEAD_BYTES,
    Head,
    HTTP11ClientProtocol,
    Origin,
    TargetPool,
)

ORIGIN = Origin("http", "target.test", 80)
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: target.test\r\n\r\n"


@dataclass
class Received:
    """
    What an exchange told its receiver.
    """

    heads: list[Head] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    ended: bool = False
    failed: str | None = None

    def responseHead(self, head: Head) -> None:
        self.heads.append(head)

    def responseData(self, data: bytes) -> None:
        self.data.append(data)

    def responseEnded(self) -> None:
        assert not self.ended and self.failed is None
        self.ended = True

    def responseFailed(self, reason: str) -> None:
        assert not self.ended and self.failed is None
        self.failed = reason

    def responseBug(self, failure: Failure) -> None:
        self.responseFailed(f"bug: {failure.getErrorMessage()}")

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    Connects at once to a L{StringTransport}, or fails with C{failure}.
    """

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []
        self.protocols: list[HTTP11ClientProtocol] = []
        self.failure: Exception | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.failure is not None:
            return fail(self.failure)
        protocol = protocolFactory.buildProtocol(None)  # type: ignore[arg-type]
        assert isinstance(protocol, HTTP11ClientProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return succeed(protocol)


class Pool:
    """
    A pool over in-memory connections.
    """

    def __init__(self, maxIdle: int = 2) -> None:
        self.clock = Clock()
        self.endpoint = MemoryEndpoint()
        self.origins: list[Origin] = []
        self.pool = TargetPool(self.clock, self.endpointFor, maxIdle)

    def endpointFor(self, origin: Origin) -> MemoryEndpoint:
        self.origins.append(origin)
        return self.endpoint

    def request(self) -> Received:
        received = Received()
        self.pool.request(ORIGIN, REQUEST, received)
        return received

    def answer(self, data: bytes, connection: int = -1) -> None:
        self.endpoint.protocols[connection].dataReceived(data)

    def lose(self, connection: int = -1, reason: Exception | None = None) -> None:
        self.endpoint.protocols[connection].connectionLost(
            Failure(reason or netError.ConnectionDone())
        )

    def aborted(self, connection: int = -1) -> bool:
        """
        Whether the connection was aborted (L{StringTransport.abortConnection}
        sets C{disconnected}).
        """
        return bool(self.endpoint.transports[connection].disconnected)

    def closed(self, connection: int = -1) -> bool:
        """
        Whether the connection was closed cleanly, not aborted.
        """
        transport = self.endpoint.transports[connection]
        return bool(transport.disconnecting and not transport.disconnected)


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nup 1\n"


class ParserTests(SynchronousTestCase):
    def test_contentLength(self) -> None:
        pool = Pool()
        received = pool.request()
        self.assertEqual(pool.endpoint.transports[0].value(), REQUEST)
        pool.answer(OK[:40])
        pool.answer(OK[40:])
        (head,) = received.heads
        self.assertEqual((head.status, head.phrase, head.contentType), (200, "OK", "text/plain"))
        self.assertEqual((head.length, head.untilClose), (5, False))
        self.assertEqual((received.body, received.ended), (b"up 1\n", True))
        self.assertFalse(pool.aborted())

    def test_chunked(self) -> None:
        pool = Pool()
        received = pool.request()
        pool.answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nup 1\n\r\n6\r\nup 22\n\r\n0\r\n\r\n"
        )
        self.assertEqual((received.body, received.ended), (b"up 1\nup 22\n", True))
        self.assertEqual(received.heads[0].length, -1)
        self.assertFalse(pool.aborted())

    def test_untilClose(self) -> None:
        """
        An HTTP/1.0 answer without a length ends when the target closes.
        """
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.0 200 OK\r\n\r\nup 1\n")
        self.assertFalse(received.ended)
        pool.lose()
        self.assertEqual((received.body, received.ended), (b"up 1\n", True))

    def test_shortBody(self) -> None:
        """
        A connection closing before the declared length is a broken body.
        """
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nup")
        pool.lose(reason=netError.ConnectionLost("reset"))
        self.assertIn("reset", received.failed or "")
        self.assertFalse(received.ended)

    def assertRefused(self, response: bytes, *fragments: str) -> str:
        pool = Pool()
        received = pool.request()
        pool.answer(response)
        reason = received.failed
        assert reason is not None
        for fragment in fragments:
            self.assertIn(fragment, reason)
        self.assertNotIn("\n", reason)
        self.assertTrue(pool.aborted())
        self.assertEqual(pool.pool._idle, {})
        return reason

    def test_lengthAndChunked(self) -> None:
        """
        A response both chunked and with a length (a smuggling attempt) is
        refused and its connection discarded.
        """
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            "sent an invalid HTTP response",
            "Content-Length",
        )

    def test_twoLengths(self) -> None:
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            "Duplicate Content-Length",
        )

    def test_badChunkSize(self) -> None:
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"
        )

    def test_badStatusLine(self) -> None:
        self.assertRefused(b"SSH-2.0-OpenSSH\r\n\r\n", "sent an invalid HTTP response")

    def test_headTooLarge(self) -> None:
        """
        A head that never ends is cut at L{MAX_HEAD_BYTES}, however it comes.
        """
        self.assertRefused(
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, f"more than {MAX_HEAD_BYTES} bytes"
        )
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200 OK\r\n")
        for _ in range(MAX_HEAD_BYTES // 1000 + 1):
            pool.answer(b"X-Filler: " + b"b" * 988 + b"\r\n")
        self.assertIn(f"more than {MAX_HEAD_BYTES} bytes", received.failed or "")
        self.assertEqual(received.heads, [])

    def test_upgrade(self) -> None:
        self.assertRefused(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: upgrade\r\n\r\n",
            "switched protocols",
        )

    def test_interimSkipped(self) -> None:
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        self.assertEqual([h.status for h in received.heads], [200])
        self.assertEqual(received.body, b"up 1\n")

    def test_noContent(self) -> None:
        """
        A 204 or 304 has no body: its length is 0, whatever Content-Length
        it declares (the agent would otherwise promise bytes it never sends).
        """
        for answer in [
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        ]:
            pool = Pool()
            received = pool.request()
            pool.answer(answer)
            self.assertTrue(received.ended)
            (head,) = received.heads
            self.assertEqual((head.length, head.untilClose, received.body), (0, False, b""))
            self.assertEqual(len(pool.pool._idle[ORIGIN]), 1)

    def test_noReasonPhrase(self) -> None:
        """
        A status line without a reason phrase (cloudflare-nginx sends them)
        is a head like any other: llhttp calls no C{on_status} for it.
        """
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nup 1\n")
        (head,) = received.heads
        self.assertEqual((head.status, head.phrase, head.contentType), (200, "", "text/plain"))
        self.assertEqual((received.body, received.ended), (b"up 1\n", True))
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 100\r\n\r\nHTTP/1.1 500\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual([(h.status, h.phrase) for h in received.heads], [(500, "")])

    def test_callbackBug(self) -> None:
        """
        A bug in one of the parser's callbacks (or the receiver's) does not
        escape into the reactor: the exchange is told of it, with the
        failure, and the connection is aborted.
        """
        pool = Pool()
        bugs: list[Failure] = []
        received = Received()
        received.responseBug = bugs.append  # type: ignore[method-assign, assignment]

        def broken(head: Head) -> None:
            raise ZeroDivisionError("ours")

        received.responseHead = broken  # type: ignore[method-assign]
        pool.pool.request(ORIGIN, REQUEST, received)
        pool.answer(OK)
        (bug,) = bugs
        self.assertTrue(bug.check(ZeroDivisionError))
        self.assertTrue(pool.aborted())
        self.assertEqual(pool.pool._idle, {})

    def test_callbackBugWithoutExchange(self) -> None:
        """
        With no exchange to tell, such a bug is logged, once.
        """
        pool = Pool()
        received = pool.request()
        protocol = pool.endpoint.protocols[0]

        def broken() -> None:
            raise ZeroDivisionError("ours")

        protocol.on_message_begin = broken  # type: ignore[method-assign]
        # httptools takes the callbacks when it is made.
        protocol._parser = httptools.HttpResponseParser(protocol)
        protocol.exchange = None
        pool.answer(OK)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(pool.aborted())
        self.assertEqual(received.failed, None)

    def test_trailersIgnored(self) -> None:
        """
        Trailer fields are not part of the head: a trailer's Content-Type
        or Content-Encoding does not relabel the body.
        """
        pool = Pool()
        received = pool.request()
        pool.answer(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nup 1\n\r\n0\r\nContent-Type: application/x-evil\r\n"
            b"Content-Encoding: gzip\r\n\r\n"
        )
        (head,) = received.heads
        self.assertEqual((head.contentType, head.contentEncoding), ("text/plain", ""))
        self.assertEqual((head.length, received.body, received.ended), (-1, b"up 1\n", True))

    def test_trailersBounded(self) -> None:
        """
        Trailer fields (or chunk extensions) that never end are cut at
        L{MAX_FRAMING_BYTES}, one read past it at most, however they come.
        """
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nup 1\n\r\n0\r\n")
        for _ in range(MAX_FRAMING_BYTES // 1000 + 1):
            self.assertIsNone(received.failed)
            pool.answer(b"X-Trailer: " + b"t" * 987 + b"\r\n")
        reason = received.failed or ""
        self.assertIn(f"more than {MAX_FRAMING_BYTES} bytes of chunk extensions or trailer", reason)
        self.assertTrue(pool.aborted())
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=")
        pool.answer(b"e" * (MAX_FRAMING_BYTES + 1))
        self.assertIn("chunk extensions", received.failed or "")

    def test_headNotFraming(self) -> None:
        """
        The read that ends a large head does not count against the framing
        bound.
        """
        pool = Pool()
        received = pool.request()
        pool.answer(
            b"HTTP/1.1 200 OK\r\nX-Filler: "
            + b"f" * (MAX_HEAD_BYTES - 1000)
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n2;x="
        )
        pool.answer(b"e" * 2000)
        pool.answer(b"\r\nup\r\n0\r\n\r\n")
        self.assertEqual((received.failed, received.body, received.ended), (None, b"up", True))

    def test_manyChunksNotFraming(self) -> None:
        """
        The framing bound is between body bytes: a long body in small
        chunks is not cut.
        """
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(MAX_FRAMING_BYTES):
            pool.answer(b"1\r\nx\r\n")
        pool.answer(b"0\r\n\r\n")
        self.assertEqual((len(received.body), received.ended), (MAX_FRAMING_BYTES, True))

    def test_otherTransferCodings(self) -> None:
        """
        Only C{chunked} is decoded: any other transfer coding is refused,
        rather than a still-coded body passed on.
        """
        for coding in [b"gzip, chunked", b"chunked, gzip", b"gzip", b"xchunked", b"identity"]:
            reason = self.assertRefused(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n",
                "only chunked is supported",
            )
            self.assertIn(coding.decode("ascii"), reason)
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n2\r\nup\r\n0\r\n\r\n")
        self.assertEqual((received.body, received.ended), (b"up", True))

    def test_lengthWithSpaces(self) -> None:
        pool = Pool()
        received = pool.request()
        pool.answer(b"HTTP/1.1 200 OK\r\nContent-Length:  2 \r\n\r\nup")
        head = received.heads[0]
        self.assertEqual((head.length, received.body, received.ended), (2, b"up", True))

    def test_invalidStatus(self) -> None:
        """
        A status outside 100-599 is the target's error, said as such.
        """
        for status in [b"000", b"099", b"600", b"999"]:
            self.assertRefused(
                b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n",
                f"sent an invalid HTTP status {int(status)}",
            )


class PoolTests(SynchronousTestCase):
    def test_reused(self) -> None:
        pool = Pool()
        first = pool.request()
        pool.answer(OK)
        second = pool.request()
        pool.answer(OK)
        self.assertEqual(len(pool.endpoint.protocols), 1)
        self.assertEqual(pool.endpoint.transports[0].value(), REQUEST * 2)
        self.assertTrue(first.ended and second.ended)

    def test_closeHonoured(self) -> None:
        """
        C{Connection: close} and HTTP/1.0 answers close their connection.
        """
        for closing in [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]:
            pool = Pool()
            received = pool.request()
            pool.answer(closing)
            self.assertTrue(received.ended)
            self.assertTrue(pool.closed())
            pool.request()
            self.assertEqual(len(pool.endpoint.protocols), 2)

    def test_endpointOncePerOrigin(self) -> None:
        """
        New connections to one origin reuse its endpoint (and TLS options):
        nothing about the target is built again per connection.
        """
        pool = Pool()
        for _ in range(3):
            pool.request()
            pool.answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(pool.endpoint.protocols), 3)
        self.assertEqual(pool.origins, [ORIGIN])

    def test_idleExpires(self) -> None:
        pool = Pool()
        pool.request()
        pool.answer(OK)
        pool.clock.advance(IDLE_TIMEOUT_SECS - 1)
        self.assertFalse(pool.closed())
        pool.clock.advance(1)
        self.assertTrue(pool.closed())
        self.assertEqual(pool.pool._idle, {})
        pool.lose()
        self.assertEqual(pool.clock.getDelayedCalls(), [])

    def test_closeBounded(self) -> None:
        """
        A clean close that does not complete within L{CLOSE_TIMEOUT_SECS}
        (a target that reads nothing) becomes an abort.
        """
        pool = Pool()
        pool.request()
        pool.answer(OK)
        pool.clock.advance(IDLE_TIMEOUT_SECS)
        pool.clock.advance(CLOSE_TIMEOUT_SECS - 0.5)
        self.assertTrue(pool.closed())
        pool.clock.advance(0.5)
        self.assertTrue(pool.aborted())
        pool.lose()
        self.assertEqual(pool.clock.getDelayedCalls(), [])

    def test_reuseCancelsExpiry(self) -> None:
        pool = Pool()
        pool.request()
        pool.answer(OK)
        pool.request()
        self.assertEqual(pool.clock.getDelayedCalls(), [])

    def test_idleCapped(self) -> None:
        pool = Pool(maxIdle=1)
        first, second = pool.request(), pool.request()
        pool.answer(OK, connection=0)
        pool.answer(OK, connection=1)
        self.assertTrue(first.ended and second.ended)
        self.assertEqual(pool.pool._idle[ORIGIN], [pool.endpoint.protocols[0]])
        self.assertTrue(pool.closed(1))

    def test_idleClosedByTarget(self) -> None:
        pool = Pool()
        pool.request()
        pool.answer(OK)
        pool.lose()
        self.assertEqual(pool.pool._idle, {})
        self.assertEqual(pool.clock.getDelayedCalls(), [])

    def test_talkingOutOfTurn(self) -> None:
        """
        Bytes from an idle connection, or a second answer after the first,
        and the connection is not reused.
        """
        pool = Pool()
        pool.request()
        pool.answer(OK)
        pool.answer(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(pool.aborted())
        self.assertEqual(pool.pool._idle, {})
        pool = Pool()
        received = pool.request()
        pool.answer(OK + OK)
        self.assertEqual((received.body, received.ended), (b"up 1\n", True))
        self.assertTrue(pool.aborted())
        self.assertEqual(pool.pool._idle, {})

    def test_staleRetriedOnce(self) -> None:
        """
        A reused connection closing before any answer has its request sent
        again on a fresh connection, once.
        """
        pool = Pool()
        pool.request()
        pool.answer(OK)
        received = pool.request()
        pool.lose(0)
        self.assertEqual(len(pool.endpoint.protocols), 2)
        self.assertEqual(pool.endpoint.transports[1].value(), REQUEST)
        self.assertIsNone(received.failed)
        pool.lose(1)
        self.assertEqual(received.failed, "closed the connection before answering")
        self.assertEqual(len(pool.endpoint.protocols), 2)

    def test_freshNotRetried(self) -> None:
        pool = Pool()
        received = pool.request()
        pool.lose()
        self.assertEqual(received.failed, "closed the connection before answering")
        self.assertEqual(len(pool.endpoint.protocols), 1)

    def test_notRetriedOnceAnswering(self) -> None:
        """
        Once the target answered something, the request may have been
        processed: a close is reported, not retried.
        """
        pool = Pool()
        pool.request()
        pool.answer(OK)
        received = pool.request()
        pool.answer(b"HTTP/1.1 200")
        pool.lose()
        self.assertIn("in the middle of the response head", received.failed or "")
        self.assertEqual(len(pool.endpoint.protocols), 1)

    def test_connectFailures(self) -> None:
        for error, expected in [
            (netError.ConnectionRefusedError(), "connection refused"),
            (netError.DNSLookupError("nope"), "host name lookup failed"),
            (netError.TCPTimedOutError(), "connect timed out"),
        ]:
            pool = Pool()
            pool.endpoint.failure = error
            self.assertEqual(pool.request().failed, expected)

    def test_stopped(self) -> None:
        """
        A stopped exchange drops its connection and tells nothing more.
        """
        pool = Pool()
        received = Received()
        exchange = pool.pool.request(ORIGIN, REQUEST, received)
        pool.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nup")
        exchange.stopProducing()
        self.assertTrue(pool.aborted())
        pool.answer(b" 1\n")
        pool.lose()
        self.assertEqual((received.body, received.ended, received.failed), (b"up", False, None))

    def test_pausePassedOn(self) -> None:
        pool = Pool()
        exchange = pool.pool.request(ORIGIN, REQUEST, Received())
        exchange.pauseProducing()
        transport = pool.endpoint.transports[0]
        self.assertEqual(transport.producerState, "paused")
        exchange.resumeProducing()
        self.assertEqual(transport.producerState, "producing")


def portNumber(port: IListeningPort) -> int:
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


class _Scripted(Protocol):
    """
    A loopback target: answers each request with the next of its factory's
    answers (C{None}: close without answering).
    """

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory
        assert isinstance(factory, _ScriptedFactory)
        for _ in range(data.count(b"\r\n\r\n")):
            answer = factory.answers.pop(0)
            assert self.transport is not None
            if answer is None:
                self.transport.loseConnection()
                return
            self.transport.write(answer)
            if answer.startswith(b"HTTP/1.0"):
                self.transport.loseConnection()

    def connectionMade(self) -> None:
        factory = self.factory
        assert isinstance(factory, _ScriptedFactory)
        factory.connections += 1

    def connectionLost(self, reason: Failure = Failure(netError.ConnectionDone())) -> None:
        factory = self.factory
        assert isinstance(factory, _ScriptedFactory)
        factory.closes.append(type(reason.value))
        waiters, factory.closing = factory.closing, []
        for waiter in waiters:
            waiter.callback(None)


class _ScriptedFactory(Factory):
    protocol = _Scripted
    noisy = False

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.connections = 0
        # How each connection ended, as the target saw it.
        self.closes: list[type] = []
        self.closing: list[Deferred[None]] = []

    def nextClose(self) -> Deferred[None]:
        """
        Fires when the target next sees a connection end.
        """
        waiter: Deferred[None] = Deferred()
        self.closing.append(waiter)
        return waiter


class LoopbackTests(TestCase):
    """
    The pool over real sockets on 127.0.0.1.
    """

    timeout = 30

    async def serve(self, answers: list[bytes | None]) -> _ScriptedFactory:
        factory = _ScriptedFactory(answers)
        port: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        self.addCleanup(port.stopListening)
        self.pool = TargetPool(
            reactor,
            lambda origin: TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber(port)),
            maxIdlePerOrigin=2,
        )
        self.addCleanup(self.pool.closeCachedConnections)
        return factory

    async def fetch(self) -> Received:
        received = Received()
        done: Deferred[None] = Deferred()
        ended, failed = received.responseEnded, received.responseFailed

        def endedThen() -> None:
            ended()
            done.callback(None)

        def failedThen(reason: str) -> None:
            failed(reason)
            done.callback(None)

        received.responseEnded = endedThen  # type: ignore[method-assign]
        received.responseFailed = failedThen  # type: ignore[method-assign]
        self.pool.request(ORIGIN, REQUEST, received)
        await done
        return received

    async def test_reusedThenStale(self) -> None:
        """
        A keep-alive connection is reused; when the target closes it
        instead of answering, the request goes out once more on a new one.
        """
        target = await self.serve([OK, OK, None, OK])
        for _ in range(2):
            self.assertEqual((await self.fetch()).body, b"up 1\n")
        self.assertEqual(target.connections, 1)
        received = await self.fetch()
        self.assertEqual((received.body, received.failed), (b"up 1\n", None))
        self.assertEqual(target.connections, 2)

    async def test_closeHonoured(self) -> None:
        """
        An HTTP/1.0 answer read until the target closes, and the next
        request on a new connection.
        """
        target = await self.serve([b"HTTP/1.0 200 OK\r\n\r\nup 1\n", OK])
        received = await self.fetch()
        self.assertEqual((received.body, received.ended), (b"up 1\n", True))
        self.assertEqual((await self.fetch()).body, b"up 1\n")
        self.assertEqual(target.connections, 2)

    async def test_closedCleanly(self) -> None:
        """
        A connection that did nothing wrong is closed, not reset: after a
        C{Connection: close} answer, and when the pool is closed.
        """
        closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nup 1\n"
        target = await self.serve([closing, OK])
        closed = target.nextClose()
        self.assertTrue((await self.fetch()).ended)
        await closed
        self.assertEqual(target.closes, [netError.ConnectionDone])
        self.assertTrue((await self.fetch()).ended)
        closed = target.nextClose()
        await self.pool.closeCachedConnections()
        await closed
        self.assertEqual(target.closes, [netError.ConnectionDone] * 2)

    async def test_refused(self) -> None:
        factory = _ScriptedFactory([])
        port: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        number = portNumber(port)
        await maybeDeferred(port.stopListening)
        self.pool = TargetPool(
            reactor, lambda origin: TCP4ClientEndpoint(reactor, "127.0.0.1", number), 2
        )
        self.assertEqual((await self.fetch()).failed, "connection refused")
