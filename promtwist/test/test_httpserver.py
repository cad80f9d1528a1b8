"""
Tests for L{promtwist.proxy.httpserver}: every defence the other ports get
from L{promtwist.webguard} (its shared tests, run again against this
server), and what twisted.web gave the scrape port for free: HTTP/1.0,
C{HEAD}, keep-alive and its end, chunked framing, 400, 405 and 505.
"""

from __future__ import annotations

from mmap import mmap
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from promtwist.config.settings import ProxySettings
from promtwist.httpguard import ABORT_TIMEOUT
from promtwist.proxy.access import RequireCredentials
from promtwist.proxy.admission import scrapePortConnections
from promtwist.proxy.bodybudget import BodyBudget
from promtwist.proxy.exchange import Exchange
from promtwist.proxy.httpserver import (
    MAPPED_BODY_BYTES,
    ConnectionState,
    ScrapePortConnection,
    ScrapePortFactory,
)
from promtwist.test import test_webguard
from promtwist.test.scrapeport import Held, connect, factory, parseResponse
from promtwist.test.test_webguard import BufferedTransport, ServerUnderTest


class Hello:
    """
    Answers with C{hello <path>}, holds C{/slow}, and counts.
    """

    def __init__(self) -> None:
        self.held: list[Exchange] = []
        self.rendered = 0

    def __call__(self, exchange: Exchange) -> None:
        self.rendered += 1
        if exchange.path == b"/slow":
            self.held.append(exchange)
            return
        exchange.finishWith(b"hello " + exchange.path + b"\n")


class Big:
    """
    Answers with C{size} bytes.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.rendered = 0

    def __call__(self, exchange: Exchange) -> None:
        self.rendered += 1
        exchange.finishWith(b"x" * self.size)


class ScrapePort(ServerUnderTest):
    channelType = ScrapePortConnection

    def hello(self) -> Hello:
        return Hello()

    def big(self, size: int) -> Big:
        return Big(size)

    def site(self, app: Any, clock: IReactorTime | None = None, **limits: Any) -> Any:
        values: dict[str, Any] = {"maxHeaderBytes": 1024, "headerTimeout": 10, "idleTimeout": 45}
        values.update(limits)
        return ScrapePortFactory(app, clock=clock if clock is not None else Clock(), **values)


class HeadLimitTests(test_webguard.HeadLimitTests):
    server = ScrapePort()


class BodyTests(test_webguard.BodyTests):
    server = ScrapePort()


class HeaderDeadlineTests(test_webguard.HeaderDeadlineTests):
    server = ScrapePort()


class PipeliningTests(test_webguard.PipeliningTests):
    server = ScrapePort()


class AllowListTests(test_webguard.AllowListTests):
    server = ScrapePort()


class LoopbackTests(test_webguard.LoopbackTests):
    server = ScrapePort()


def ask(request: bytes, handler: Any = None, **settings: Any) -> tuple[bytes, StringTransport]:
    """
    What the server answers to C{request} from C{handler} (L{Hello} by
    default).
    """
    connection, transport = connect(factory(handler or Hello(), **settings))
    connection.dataReceived(request)
    return transport.value(), transport


class ProtocolTests(SynchronousTestCase):
    """
    HTTP as twisted.web spoke it on the scrape port.
    """

    def test_keepAlive(self) -> None:
        answer, transport = ask(b"GET /a HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertIn(b"Content-Length: 9\r\n", answer)
        self.assertNotIn(b"Connection: close", answer)
        self.assertFalse(transport.disconnecting)

    def test_connectionClose(self) -> None:
        answer, transport = ask(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertIn(b"Connection: close\r\n", answer)
        self.assertTrue(answer.endswith(b"hello /a\n"))
        self.assertTrue(transport.disconnecting)

    def test_http10(self) -> None:
        """
        HTTP/1.0 gets an HTTP/1.0 answer, and the connection closes after
        it.
        """
        answer, transport = ask(b"GET /a HTTP/1.0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.0 200 OK\r\n"), answer)
        self.assertTrue(answer.endswith(b"hello /a\n"))
        self.assertTrue(transport.disconnecting)

    def test_http10Streamed(self) -> None:
        """
        An HTTP/1.0 body of unknown length is not chunked: it ends with the
        connection.
        """
        held = Held()
        connection, transport = connect(factory(held))
        connection.dataReceived(b"GET /a HTTP/1.0\r\n\r\n")
        (exchange,) = held.exchanges
        exchange.write(b"part one, ")
        exchange.write(b"part two")
        exchange.finish()
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertEqual(body, b"part one, part two")
        self.assertTrue(transport.disconnecting)

    def test_chunked(self) -> None:
        """
        A body of unknown length is chunked, its head going out with its
        first bytes in one write.
        """
        held = Held()
        connection, transport = connect(factory(held))
        connection.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
        (exchange,) = held.exchanges
        exchange.setStatus(200)
        exchange.setHeader(b"Content-Type", b"text/plain")
        self.assertEqual(transport.value(), b"")
        exchange.write(b"abc")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 1)
        self.assertTrue(transport.value().endswith(b"\r\n\r\n3\r\nabc\r\n"))
        exchange.write(b"defgh")
        exchange.finish()
        r = parseResponse(transport.value())
        self.assertEqual((r.status, r.body, r.complete), (200, b"abcdefgh", True))
        self.assertEqual(r.headers[b"transfer-encoding"], b"chunked")
        self.assertEqual(r.headers[b"content-type"], b"text/plain")
        self.assertFalse(transport.disconnecting)

    def test_emptyFinish(self) -> None:
        held = Held()
        connection, transport = connect(factory(held))
        connection.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
        held.exchanges[0].finish()
        r = parseResponse(transport.value())
        self.assertEqual((r.status, r.body, r.complete), (200, b"", True))

    def test_noBodyStatus(self) -> None:
        """
        A 204 or 304 has neither a body nor a length or chunking, whatever
        is written.
        """
        held = Held()
        connection, transport = connect(factory(held))
        connection.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
        held.exchanges[0].setStatus(304)
        held.exchanges[0].write(b"ignored")
        held.exchanges[0].finish()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 304 Not Modified\r\n"))
        self.assertNotIn(b"Content-Length", transport.value())
        self.assertNotIn(b"Transfer-Encoding", transport.value())
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))

    def test_head(self) -> None:
        """
        C{HEAD} is answered as C{GET}, with the length but without the body.
        """
        answer, transport = ask(b"HEAD /a HTTP/1.1\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Content-Length: 9\r\n", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n"))
        self.assertFalse(transport.disconnecting)

    def test_headStreamed(self) -> None:
        held = Held()
        connection, transport = connect(factory(held))
        connection.dataReceived(b"HEAD /a HTTP/1.1\r\n\r\n" + b"GET /b HTTP/1.1\r\n\r\n")
        first = held.exchanges[0]
        first.write(b"not sent")
        first.finish()
        self.assertNotIn(b"not sent", transport.value())
        self.assertNotIn(b"Transfer-Encoding", transport.value())
        self.assertEqual(len(held.exchanges), 2)

    def test_reasonPhrase(self) -> None:
        held = Held()
        connection, transport = connect(factory(held))
        connection.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
        held.exchanges[0].setStatus(503, b"agent gone")
        held.exchanges[0].finishWith(b"")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 agent gone\r\n"))

    def test_dateAndServer(self) -> None:
        clock = Clock()
        clock.advance(86400 * 365)
        answer, _ = ask(b"GET /a HTTP/1.1\r\n\r\n", clock=clock)
        self.assertIn(b"\r\nDate: Fri, 01 Jan 1971 00:00:00 GMT\r\n", answer)
        self.assertIn(b"\r\nServer: promtwist/", answer)

    def test_methodNotAllowed(self) -> None:
        """
        Only C{GET} and C{HEAD}; 405 says which, and the connection stays.
        """
        hello = Hello()
        answer, transport = ask(b"DELETE /a HTTP/1.1\r\n\r\n", hello)
        r = parseResponse(answer)
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers[b"allow"], b"GET, HEAD")
        self.assertEqual(r.body, b"method DELETE not allowed here: this path serves GET and HEAD\n")
        self.assertEqual(hello.rendered, 0)
        self.assertFalse(transport.disconnecting)

    def test_versionNotSupported(self) -> None:
        for version in (b"2.0", b"0.9", b"1.2", b"3.0"):
            hello = Hello()
            answer, transport = ask(b"GET /a HTTP/" + version + b"\r\n\r\n", hello)
            self.assertTrue(answer.startswith(b"HTTP/1.1 505 "), answer)
            self.assertTrue(
                answer.endswith(
                    b"HTTP/" + version + b" is not supported: this port speaks HTTP/1.1\n"
                )
            )
            self.assertTrue(transport.disconnecting)
            self.assertEqual(hello.rendered, 0)

    def test_malformed(self) -> None:
        """
        What llhttp cannot parse gets 400 with its reason, and closes.
        """
        for request, reason in [
            (b"GARBAGE\r\n\r\n", b"Invalid method encountered"),
            (b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n", b"Invalid header token"),
            (b"GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", b""),
            (b"GET /a HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", b"more than one Host header"),
            (b"GET http://a:1/ HTTP/1.1\r\nHost: a:1\r\nHost: a:1\r\n\r\n", b"more than one Host"),
        ]:
            hello = Hello()
            answer, transport = ask(request, hello)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
            self.assertIn(b"\r\n\r\nmalformed request: " + reason, answer)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(hello.rendered, 0)

    def test_smuggling(self) -> None:
        """
        A request with both a length and chunking is refused, not guessed at.
        """
        answer, transport = ask(
            b"GET /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertTrue(transport.disconnecting)

    def test_upgradeIgnored(self) -> None:
        """
        A request to switch protocols is answered in HTTP/1.1, and the
        connection ends there.
        """
        answer, transport = ask(b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertTrue(transport.disconnecting)

    def test_versionNotHTTP(self) -> None:
        """
        A request line naming another protocol gets 400, though llhttp
        takes C{RTSP/1.0} for HTTP/1.0.
        """
        hello = Hello()
        answer, transport = ask(b"GET /a RTSP/1.0\r\n\r\n", hello)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
        self.assertTrue(
            answer.endswith(b"not an HTTP request: the request line ends in RTSP/1.0\n"), answer
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(hello.rendered, 0)

    def test_unknownMethod(self) -> None:
        """
        A method llhttp does not know gets 400, one it knows other than
        C{GET} and C{HEAD} 405 (L{test_methodNotAllowed}).
        """
        answer, transport = ask(b"FROB /a HTTP/1.1\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
        self.assertTrue(answer.endswith(b"malformed request: Invalid method encountered\n"))
        self.assertTrue(transport.disconnecting)

    def test_zeroLengthSpelledLong(self) -> None:
        """
        A C{Content-Length} of zero is no body however it is spelled.
        """
        for length in (b"0", b"00", b"000"):
            answer, transport = ask(b"GET /a HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), (length, answer))
            self.assertFalse(transport.disconnecting)
        answer, _ = ask(b"GET /a HTTP/1.1\r\nContent-Length: 01\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)

    def test_connectionCloseTimers(self) -> None:
        """
        After a C{Connection: close} answer only the abort timer runs, and
        the transport's producer is unregistered once.
        """
        clock = Clock()
        connection, transport = connect(factory(Hello(), clock=clock))
        connection.dataReceived(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [ABORT_TIMEOUT])
        # StringTransport raises if the producer is unregistered again.
        clock.advance(ABORT_TIMEOUT)
        self.assertEqual(clock.getDelayedCalls(), [])


class EmptyLineTests(SynchronousTestCase):
    """
    Empty lines before a request line: one is ignored (RFC 9112 section
    2.2), a second refused, and none of them is free.
    """

    def test_oneIgnored(self) -> None:
        hello = Hello()
        answer, transport = ask(b"\r\nGET /a HTTP/1.1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n", hello)
        self.assertEqual(hello.rendered, 2)
        self.assertTrue(answer.endswith(b"hello /b\n"), answer)
        self.assertFalse(transport.disconnecting)

    def test_oneSplit(self) -> None:
        """
        The one empty line allowed may arrive a byte at a time.
        """
        hello = Hello()
        connection, transport = connect(factory(hello))
        for data in [b"GET /a HTTP/1.1\r\n\r\n\r", b"\n", b"GET /b HTTP/1.1\r\n\r\n"]:
            connection.dataReceived(data)
        self.assertEqual(hello.rendered, 2)
        self.assertTrue(transport.value().endswith(b"hello /b\n"), transport.value())

    def test_moreRefused(self) -> None:
        """
        A second empty line gets 400 and closes, whether it comes first,
        after a request, or in a read of its own.
        """
        for reads in [
            [b"\r\n\r\nGET /a HTTP/1.1\r\n\r\n"],
            [b"GET /a HTTP/1.1\r\n\r\n", b"\r\n\r\n" * 16384],
            [b"GET /a HTTP/1.1\r\n\r\n\r\n", b"\r\n"],
            [b"GET /a HTTP/1.1\r\n\r\n\r", b"\n\r", b"\n"],
            [b"\rX"],
            [b"\n"],
        ]:
            hello = Hello()
            connection, transport = connect(factory(hello))
            for data in reads:
                connection.dataReceived(data)
            answer = transport.value()
            self.assertIn(b"HTTP/1.1 400 Bad Request\r\n", answer, reads[-1][:8])
            self.assertTrue(
                answer.endswith(
                    b"malformed request: more than one empty line before the request line\n"
                ),
                answer,
            )
            self.assertEqual(answer.count(b"HTTP/1.1 "), 1 + hello.rendered)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(connection.state, ConnectionState.CLOSING)

    def test_deadline(self) -> None:
        """
        An empty line on a keep-alive connection starts the next head's
        deadline.
        """
        clock = Clock()
        connection, transport = connect(factory(Hello(), clock=clock))
        connection.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
        clock.advance(30)
        transport.clear()
        connection.dataReceived(b"\r\n")
        clock.advance(10)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertTrue(transport.disconnecting)

    def test_countedInHead(self) -> None:
        """
        An empty line counts toward the head's size.
        """
        head = b"GET /a HTTP/1.1\r\nX: " + b"x" * (1024 - 24) + b"\r\n\r\n"
        self.assertEqual(len(head), 1024)
        answer, _ = ask(head, maxHeaderBytes=1024)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        answer, _ = ask(b"\r\n" + head, maxHeaderBytes=1024)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)

    def test_bareLF(self) -> None:
        """
        A head with a line ended by LF alone is refused at once, not left
        to wait for the 408.
        """
        for head in [
            b"GET /a HTTP/1.1\n",
            b"GET /a HTTP/1.1\r\nHost: p\n",
            b"GET /a HTTP/1.1\nHost: p\n\n",
        ]:
            answer, transport = ask(head)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
            self.assertTrue(
                answer.endswith(b"a line ends in LF alone; HTTP lines end in CRLF\n"), answer
            )
            self.assertTrue(transport.disconnecting)

    def test_pipelinedInOrder(self) -> None:
        """
        Requests pipelined behind a held answer wait for it, then are
        answered in order.
        """
        hello = Hello()
        connection, transport = connect(factory(hello))
        connection.dataReceived(
            b"GET /slow HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
        )
        self.assertEqual((hello.rendered, transport.value()), (1, b""))
        hello.held[0].finishWith(b"slow\n")
        answers = transport.value()
        self.assertLess(answers.index(b"slow\n"), answers.index(b"hello /a\n"))
        self.assertLess(answers.index(b"hello /a\n"), answers.index(b"hello /b\n"))
        self.assertEqual(connection.state, ConnectionState.IDLE)

    def test_manyPipelinedAnsweredAtOnce(self) -> None:
        """
        Thousands of pipelined requests answered at once are taken one
        after the other, not by recursion.
        """
        hello = Hello()
        connection, transport = connect(factory(hello))
        connection.dataReceived(b"GET /a HTTP/1.1\r\n\r\n" * 5000)
        self.assertEqual(hello.rendered, 5000)
        self.assertEqual(transport.value().count(b"hello /a\n"), 5000)

    def test_readingStopsWhileAnswering(self) -> None:
        """
        A client that pipelines more than a read's worth while an answer is
        made is no longer read from.
        """
        hello = Hello()
        connection, transport = connect(factory(hello))
        connection.dataReceived(b"GET /slow HTTP/1.1\r\n\r\n")
        connection.dataReceived(b"GET /a HTTP/1.1\r\n\r\n" * 1000)
        self.assertEqual(transport.producerState, "paused")
        hello.held[0].finish()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(hello.rendered, 1001)

    def test_handlerBug(self) -> None:
        """
        A bug in the handler costs its request a 500, logged, and nothing
        else.
        """

        def broken(exchange: Exchange) -> None:
            raise ZeroDivisionError()

        with capturedLogs() as events:
            answer, transport = ask(b"GET /a HTTP/1.1\r\n\r\n", broken)
        self.assertTrue(answer.startswith(b"HTTP/1.1 500 "), answer)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len([e for e in events if "log_failure" in e]), 1)
        self.flushLoggedErrors(ZeroDivisionError)


class NoDelayTransport(StringTransport):
    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class TransportTests(SynchronousTestCase):
    def test_noDelay(self) -> None:
        """
        Nagle is off: an answer's last bytes do not wait for the client's
        delayed ACK.
        """
        connection = factory(Hello()).buildProtocol(None)
        assert connection is not None
        transport = NoDelayTransport()
        connection.makeConnection(transport)
        self.assertTrue(transport.noDelay)


class ExchangeTests(SynchronousTestCase):
    """
    What the relay does with an exchange.
    """

    def setUp(self) -> None:
        self.held = Held()
        self.clock = Clock()
        self.connection, self.transport = connect(factory(self.held, clock=self.clock))

    def get(self, request: bytes = b"GET /p?a=1 HTTP/1.1\r\nHost: proxy\r\n\r\n") -> Exchange:
        self.connection.dataReceived(request)
        return self.held.exchanges[-1]

    def test_request(self) -> None:
        """
        The path, the query and the few headers the proxy reads, by
        lower-case name; others are not kept.
        """
        exchange = self.get(
            b"GET /a%20b/c?x=1&y=2 HTTP/1.1\r\nHost: proxy:8080\r\nACCEPT: text/plain\r\n"
            b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 9\r\n"
            b"User-Agent: Prometheus\r\n\r\n"
        )
        self.assertEqual((exchange.method, exchange.path), (b"GET", b"/a%20b/c"))
        self.assertEqual(exchange.query, b"x=1&y=2")
        self.assertEqual(
            exchange.headers,
            {
                b"host": b"proxy:8080",
                b"accept": b"text/plain",
                b"accept-encoding": b"gzip",
                b"x-prometheus-scrape-timeout-seconds": b"9",
            },
        )
        self.assertEqual(exchange.repeated, frozenset())
        self.assertEqual(exchange.client, self.transport.getPeer())
        self.assertEqual(exchange.host, self.transport.getHost())

    def test_targetForms(self) -> None:
        """
        The path is the target up to its first C{?}, as it came: with the
        scheme and authority of an absolute-form target, and a fragment
        where it falls.
        """
        for target, path, query in [
            (b"http://h:1/a#f", b"http://h:1/a#f", b""),
            (b"/a?x=1#f", b"/a", b"x=1#f"),
            (b"/a#f", b"/a#f", b""),
        ]:
            exchange = self.get(b"GET " + target + b" HTTP/1.1\r\n\r\n")
            self.assertEqual((exchange.path, exchange.query), (path, query))
            exchange.finishWith(b"")

    def test_headersSanitised(self) -> None:
        """
        Control characters in a response header's name or value, from an
        agent or a target, become spaces: they cannot end its line and add
        lines of their own.
        """
        exchange = self.get()
        exchange.setHeader(b"X-A", b"a\r\nSet-Cookie: forged")
        exchange.addHeader(b"X-B\n", b"b\x00\x7f\tc")
        exchange.finishWith(b"")
        answer = self.transport.value()
        self.assertIn(b"\r\nX-A: a  Set-Cookie: forged\r\n", answer)
        self.assertIn(b"\r\nX-B : b  \tc\r\n", answer)
        self.assertNotIn(b"\r\nSet-Cookie", answer)

    def test_repeated(self) -> None:
        """
        A header sent twice keeps its last value, and is named as repeated.
        """
        exchange = self.get(
            b"GET /p HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(exchange.headers[b"authorization"], b"b")
        self.assertEqual(exchange.repeated, frozenset({b"authorization"}))

    def test_clientGone(self) -> None:
        gone: list[bool] = []
        exchange = self.get()
        exchange.notifyGone(lambda: gone.append(True))
        self.connection.connectionLost(Failure(Exception("reset")))
        self.assertEqual(gone, [True])
        # Nothing more is sent, and nothing fails.
        exchange.write(b"late")
        exchange.finish()
        self.assertEqual(self.transport.value(), b"")

    def test_notGoneWhenFinished(self) -> None:
        gone: list[bool] = []
        exchange = self.get()
        exchange.notifyGone(lambda: gone.append(True))
        exchange.finishWith(b"done")
        self.connection.connectionLost(Failure(Exception("closed")))
        self.assertEqual(gone, [])

    def test_abort(self) -> None:
        exchange = self.get()
        exchange.write(b"partial")
        exchange.abort()
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.connection.state, ConnectionState.CLOSING)
        self.connection.connectionLost(Failure(Exception("aborted")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_headers(self) -> None:
        exchange = self.get()
        exchange.setHeader(b"Content-Encoding", b"gzip")
        self.assertTrue(exchange.hasHeader(b"Content-Encoding"))
        exchange.removeHeader(b"Content-Encoding")
        self.assertFalse(exchange.hasHeader(b"Content-Encoding"))
        exchange.addHeader(b"WWW-Authenticate", b"Basic")
        exchange.addHeader(b"WWW-Authenticate", b"Bearer")
        exchange.finishWith(b"")
        self.assertEqual(
            parseResponse(self.transport.value()).repeated(b"www-authenticate"),
            [b"Basic", b"Bearer"],
        )


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class BackpressureTests(SynchronousTestCase):
    """
    A client reading slowly pauses the producer feeding its answer.
    """

    def setUp(self) -> None:
        self.held = Held()
        site = factory(self.held)
        self.connection = site.buildProtocol(None)
        assert self.connection is not None
        self.transport = BufferedTransport()
        self.connection.makeConnection(self.transport)
        self.connection.dataReceived(b"GET /p HTTP/1.1\r\n\r\n")
        self.exchange = self.held.exchanges[0]
        self.producer = Producer()
        self.exchange.registerProducer(self.producer)

    def test_pausedAndResumed(self) -> None:
        self.exchange.write(b"x" * 2000)
        self.assertEqual(self.producer.state, "paused")
        self.transport.flushed()
        self.assertEqual(self.producer.state, "producing")

    def test_registeredWhilePaused(self) -> None:
        """
        A producer registered while the client is behind starts paused.
        """
        self.exchange.unregisterProducer()
        self.exchange.write(b"x" * 2000)
        late = Producer()
        self.exchange.registerProducer(late)
        self.assertEqual(late.state, "paused")

    def test_unregistered(self) -> None:
        self.exchange.unregisterProducer()
        self.exchange.write(b"x" * 2000)
        self.assertEqual(self.producer.state, "producing")


class GuardTests(SynchronousTestCase):
    """
    The credentials check comes before routing: before the method is
    looked at, and before the handler.
    """

    def test_before405(self) -> None:
        hello = Hello()
        answer, _ = ask(
            b"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            hello,
            guard=RequireCredentials(bearerToken="t"),
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
        self.assertEqual(hello.rendered, 0)

    def test_admitted(self) -> None:
        hello = Hello()
        answer, _ = ask(
            b"GET /a HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n",
            hello,
            guard=RequireCredentials(bearerToken="t"),
        )
        self.assertTrue(answer.endswith(b"hello /a\n"), answer)


class Echo:
    """
    Answers a request with its method, path and body.
    """

    def __call__(self, exchange: Exchange) -> None:
        exchange.finishWith(b"%s %s %s" % (exchange.method, exchange.path, exchange.body))


def _bodies(method: bytes, path: bytes) -> int | None:
    return 10 if (method, path) == (b"POST", b"/in") else None


class RequestBodyTests(SynchronousTestCase):
    """
    A L{promtwist.proxy.httpserver.BodyPolicy} lets chosen requests carry a
    body, bounded; every other request is refused one as before.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connection, self.transport = connect(factory(Echo(), self.clock, bodies=_bodies))

    def answer(self) -> Any:
        return parseResponse(self.transport.value())

    def test_bodyRead(self) -> None:
        """
        A body within the limit reaches the handler whole, in however many
        reads, and the next request on the connection is the bytes after
        it.
        """
        self.connection.dataReceived(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        self.assertEqual(self.transport.value(), b"")
        self.assertIs(self.connection.state, ConnectionState.BODY)
        self.connection.dataReceived(b"cdeGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        first, _, second = self.transport.value().partition(b"POST /in abcde")
        self.assertEqual(parseResponse(first + b"POST /in abcde").body, b"POST /in abcde")
        self.assertEqual(parseResponse(second).body, b"GET /next ")

    def test_bodyInOneRead(self) -> None:
        """
        A head and its body in one read, with the next request behind them.
        """
        self.connection.dataReceived(
            b"POST /in HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\n\r\n"
        )
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200"), 2)
        self.assertIn(b"POST /in xyz", self.transport.value())
        self.assertIn(b"GET /b ", self.transport.value())

    def test_bufferBySize(self) -> None:
        """
        A body under L{MAPPED_BODY_BYTES} reaches the handler as bytes, read
        into the heap, whose small blocks are reused; one of that size or
        more in an anonymous mapping of its own, which goes back to the
        system when the request ends. Either is the body as it arrived, in
        however many reads.
        """
        seen: list[object] = []

        def keep(exchange: Exchange) -> None:
            seen.append(exchange.body)
            exchange.finishWith(b"")

        for size in (MAPPED_BODY_BYTES - 1, MAPPED_BODY_BYTES):
            connection, _ = connect(
                factory(keep, self.clock, bodies=lambda method, path: MAPPED_BODY_BYTES)
            )
            connection.dataReceived(
                b"POST /in HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size + b"x" * (size - 1)
            )
            connection.dataReceived(b"y")
        small, large = seen
        self.assertIs(type(small), bytes)
        self.assertEqual(small, b"x" * (MAPPED_BODY_BYTES - 2) + b"y")
        assert isinstance(large, mmap)
        self.assertEqual(large[:], b"x" * (MAPPED_BODY_BYTES - 1) + b"y")

    def test_overLimit(self) -> None:
        """
        A body declared larger than the limit gets 413 naming it, before a
        byte of it is read.
        """
        self.connection.dataReceived(b"POST /in HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
        r = self.answer()
        self.assertEqual(r.status, 413)
        self.assertIn(b"at most 10 bytes", r.body)
        self.assertTrue(self.transport.disconnecting)

    def test_chunked(self) -> None:
        """
        A chunked body where one is taken gets 411: its length must be
        declared.
        """
        self.connection.dataReceived(b"POST /in HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(self.answer().status, 411)

    def test_elsewhereRefused(self) -> None:
        """
        A body on a path the policy does not take one for is refused, and
        so is the method without one.
        """
        self.connection.dataReceived(b"POST /other HTTP/1.1\r\nContent-Length: 2\r\n\r\nab")
        self.assertEqual(self.answer().status, 413)
        self.connection, self.transport = connect(factory(Echo(), self.clock, bodies=_bodies))
        self.connection.dataReceived(b"POST /other HTTP/1.1\r\n\r\n")
        self.assertEqual(self.answer().status, 405)

    def test_slowBody(self) -> None:
        """
        A body not complete within the head's deadline gets 408 saying how
        much is missing.
        """
        self.connection.dataReceived(b"POST /in HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc")
        self.clock.advance(10)
        r = self.answer()
        self.assertEqual(r.status, 408)
        self.assertIn(b"request body not complete within 10 seconds", r.body)
        self.assertIn(b"6 bytes missing", r.body)

    def test_emptyBody(self) -> None:
        """
        C{POST} with no body where bodies are taken is answered at once.
        """
        self.connection.dataReceived(b"POST /in HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.answer().body, b"POST /in ")

    def test_expectContinue(self) -> None:
        """
        A client that waits for leave to send its body (C{Expect:
        100-continue}) gets 100 Continue once its head is accepted, then
        its answer; one refused on its head gets only the refusal, and one
        that sent its body anyway no interim answer.
        """
        head = b"POST /in HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        self.connection.dataReceived(head % 2)
        self.assertEqual(self.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.connection.dataReceived(b"ab")
        final = self.transport.value().partition(b"\r\n\r\n")[2]
        self.assertEqual(parseResponse(final).body, b"POST /in ab")
        self.connection, self.transport = connect(factory(Echo(), self.clock, bodies=_bodies))
        self.connection.dataReceived(head % 11)
        self.assertEqual(self.answer().status, 413)
        self.connection, self.transport = connect(factory(Echo(), self.clock, bodies=_bodies))
        self.connection.dataReceived(head % 2 + b"ab")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "))

    def test_guardBeforeBody(self) -> None:
        """
        The guard is asked on the head of a request with a body, before the
        body is read: refused, it costs the head only, and the connection
        closes (the unread body is nobody's request); admitted, the body is
        read and the guard is not asked again.
        """
        asked: list[bytes] = []

        def guard(exchange: Exchange) -> bool:
            asked.append(bytes(exchange.body))
            if exchange.headers.get(b"authorization") == b"ok":
                return True
            exchange.setStatus(401)
            exchange.finishWith(b"no\n")
            return False

        connection, transport = connect(factory(Echo(), self.clock, bodies=_bodies, guard=guard))
        connection.dataReceived(b"POST /in HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(parseResponse(transport.value()).status, 401)
        self.assertTrue(transport.disconnecting)
        connection, transport = connect(factory(Echo(), self.clock, bodies=_bodies, guard=guard))
        connection.dataReceived(
            b"POST /in HTTP/1.1\r\nAuthorization: ok\r\nContent-Length: 2\r\n\r\nab"
        )
        self.assertEqual(parseResponse(transport.value()).body, b"POST /in ab")
        self.assertEqual(asked, [b"", b""])


class BodyBudgetTests(SynchronousTestCase):
    """
    The port's L{BodyBudget} bounds the body bytes all its connections hold
    at once, checked on each head, given back when each request ends.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = BodyBudget(15, "test.budget")
        self.refusals: list[tuple[bytes, bytes, int, float]] = []
        self.site = factory(
            Echo(),
            self.clock,
            bodies=_bodies,
            budget=self.budget,
            refused=lambda r: self.refusals.append((r.method, r.path, r.refusal.status, r.seconds)),
        )

    def post(
        self, length: int, body: bytes, host: str = "127.0.0.1"
    ) -> tuple[ScrapePortConnection, StringTransport]:
        peer: IPv4Address | IPv6Address = (
            IPv6Address("TCP", host, 40000) if ":" in host else IPv4Address("TCP", host, 40000)
        )
        connection, transport = connect(self.site, peer)  # type: ignore[arg-type]
        connection.dataReceived(
            b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (length, body)
        )
        return connection, transport

    def test_overBudget(self) -> None:
        """
        A body that would pass the budget beside those being read gets 503
        on its head, saying why and which setting to raise, and is counted;
        one that fits is read.
        """
        slow, _ = self.post(10, b"abc")
        self.assertEqual(self.budget.held, 10)
        _, refused = self.post(6, b"", host="10.0.0.9")
        r = parseResponse(refused.value())
        self.assertEqual(r.status, 503)
        self.assertIn(b"this one's 6 would pass their budget of 15 (test.budget)", r.body)
        self.assertTrue(refused.disconnecting)
        self.assertEqual(self.refusals, [(b"POST", b"/in", 503, 0.0)])
        _, fits = self.post(5, b"12345", host="10.0.0.2")
        self.assertEqual(parseResponse(fits.value()).body, b"POST /in 12345")
        self.assertEqual(self.budget.held, 10)
        slow.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.budget.held, 0)

    def test_sourceShare(self) -> None:
        """
        One source holds at most half the budget: its second body over that
        gets 503 naming the source and its share, while another source's
        body is read; an IPv6 source is its /64. A source's first body
        always passes its share.
        """
        self.budget.limit = 12
        _, first = self.post(10, b"x" * 10, host="10.0.0.3")
        self.assertEqual(parseResponse(first.value()).body, b"POST /in " + b"x" * 10)
        self.budget.limit = 30
        self.post(10, b"abc")
        _, refused = self.post(6, b"")
        r = parseResponse(refused.value())
        self.assertEqual(r.status, 503)
        self.assertIn(
            b"reading 10 bytes of request bodies, 10 of them from 127.0.0.1, and this one's 6"
            b" would pass one source's share of 15, half of test.budget",
            r.body,
        )
        self.post(9, b"abc", host="2001:db8::1")
        _, sameNetwork = self.post(7, b"", host="2001:db8::2")
        self.assertEqual(parseResponse(sameNetwork.value()).status, 503)
        _, other = self.post(1, b"x", host="10.0.0.2")
        self.assertEqual(parseResponse(other.value()).body, b"POST /in x")
        self.assertEqual(self.budget.bySource, {"127.0.0.1": 10, "2001:db8::/64": 9})

    def test_reserveForNewSources(self) -> None:
        """
        Two sources that each keep bodies open, within their shares, leave
        an eighth of the budget free: a source reading none still has one
        read beside them. Only sources' first bodies take that reserve.
        """
        budget = BodyBudget(64, "test.budget")
        taken = {
            source: [budget.take(6, source) is None for _ in range(6)] for source in ("a", "b")
        }
        self.assertEqual(taken, {"a": [True] * 5 + [False], "b": [True] * 4 + [False] * 2})
        self.assertEqual(budget.held, 54)
        refusal = budget.take(6, "b")
        assert refusal is not None
        self.assertIn(
            "reading 54 bytes of request bodies, 24 of them from b, and this one's 6 would"
            " leave less than 8 (an eighth of test.budget) for sources reading none",
            refusal.reason,
        )
        self.assertIsNone(budget.take(6, "c"))
        self.assertIsNone(budget.take(4, "d"))
        refusal = budget.take(1, "e")
        assert refusal is not None
        self.assertIn("this one's 1 would pass their budget of 64", refusal.reason)

    def test_sourceOf(self) -> None:
        """
        The port's C{sourceOf} says what a body counts against: two
        connections from one host under two sources share nothing.
        """
        self.site.sourceOf = lambda exchange: exchange.headers.get(b"host", b"").decode()
        connect(self.site)[0].dataReceived(
            b"POST /in HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n"
        )
        _, transport = self.post(7, b"1234567")
        self.assertEqual(parseResponse(transport.value()).body, b"POST /in 1234567")
        self.assertEqual(self.budget.bySource, {"a": 7})

    def test_givenBackOnTimeout(self) -> None:
        """
        A body too slow to arrive gives its bytes back with its 408, which
        is counted with the seconds it took.
        """
        self.post(10, b"abc")
        self.clock.advance(10)
        self.assertEqual(self.budget.held, 0)
        self.assertEqual(self.refusals, [(b"POST", b"/in", 408, 10.0)])

    def test_givenBackWhenAnswered(self) -> None:
        """
        A body's bytes are held while its request is answered, and given
        back, its buffer let go, when the answer is done.
        """
        held = Held()
        self.site.handler = held
        self.post(10, b"0123456789")
        self.assertEqual(self.budget.held, 10)
        (exchange,) = held.exchanges
        self.assertEqual(bytes(exchange.body), b"0123456789")
        exchange.finishWith(b"")
        self.assertEqual((self.budget.held, exchange.body), (0, b""))

    def test_oneAlwaysFits(self) -> None:
        """
        A body larger than the budget is still read when no other is, so a
        small budget slows bodies down rather than refusing them all.
        """
        self.budget.limit = 4
        _, transport = self.post(10, b"0123456789")
        self.assertEqual(parseResponse(transport.value()).body, b"POST /in 0123456789")

    def test_serverRefusalsCounted(self) -> None:
        """
        Bodies the server refuses on their head (undeclared, too large) are
        told to C{refused} too; requests without bodies are not.
        """
        connection, _ = connect(self.site)
        connection.dataReceived(b"POST /in HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.post(11, b"")
        self.assertEqual(self.refusals, [(b"POST", b"/in", 411, 0.0), (b"POST", b"/in", 413, 0.0)])


class ConnectionCapTests(SynchronousTestCase):
    """
    The scrape port's caps on open connections, in total and per source (the
    reviewer's C{fdflood.py}: one host holding connections that send half a
    head took every file descriptor the proxy had, and every port with it).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = factory(
            Hello(),
            self.clock,
            connections=scrapePortConnections(
                ProxySettings(http_max_connections_per_address=3), total=10
            ),
        )

    def open(self, host: str) -> tuple[ScrapePortConnection, StringTransport] | None:
        """
        A connection from C{host}, or L{None} when the port refuses it.
        """
        peer: IPv4Address | IPv6Address = (
            IPv6Address("TCP", host, 40000) if ":" in host else IPv4Address("TCP", host, 40000)
        )
        connection = self.site.buildProtocol(peer)
        if connection is None:
            return None
        transport = StringTransport(peerAddress=peer)
        connection.makeConnection(transport)
        return connection, transport

    def test_perAddress(self) -> None:
        """
        A host at its share is refused further connections, at once and
        saying who and which setting; another host is still served, and a
        place the first host gives up is its own again.
        """
        held = [self.open("127.0.0.3") for _ in range(3)]
        self.assertNotIn(None, held)
        for opened in held:
            assert opened is not None
            opened[0].dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n")
        with capturedLogs() as events:
            self.assertIsNone(self.open("127.0.0.3"))
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "closing a scrape-port connection from 127.0.0.3 unanswered: the proxy is at "
                "its scrape-port connection limit of 3 for 127.0.0.3 "
                "(proxy.http.maxConnectionsPerAddress)"
            ],
        )
        other = self.open("127.0.0.4")
        assert other is not None
        other[0].dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(parseResponse(other[1].value()).body, b"hello /metrics\n")
        first = held[0]
        assert first is not None
        first[0].connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.open("127.0.0.3"))
        self.assertIsNone(self.open("127.0.0.3"))

    def test_ipv6By64(self) -> None:
        """
        IPv6 hosts are counted by /64: a host can take a new address from
        its /64 for every connection.
        """
        for i in range(3):
            self.assertIsNotNone(self.open(f"2001:db8::{i + 1}"))
        self.assertIsNone(self.open("2001:db8::ffff"))
        self.assertIsNotNone(self.open("2001:db8:0:1::1"))

    def test_total(self) -> None:
        """
        At the total cap every host is refused, naming the setting; each
        connection lost, whatever ended it, gives its place back.
        """
        opened = [self.open(f"127.0.0.{i // 3 + 10}") for i in range(10)]
        self.assertNotIn(None, opened)
        with capturedLogs() as events:
            self.assertIsNone(self.open("127.0.0.99"))
        self.assertIn(
            "the proxy is at its scrape-port connection limit of 10 (proxy.http.maxConnections)",
            formatEvent(events[0]),
        )
        # A head that does not come in time: the port times it out (408).
        self.clock.advance(10)
        self.assertEqual(len(self.site.connections or ()), 10)
        for connection in opened:
            assert connection is not None
            self.assertTrue(connection[1].disconnecting)
            connection[0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.site.connections or ()), 0)
        self.assertIsNotNone(self.open("127.0.0.99"))

    def test_refusalsLogBounded(self) -> None:
        """
        A flood of refused connections costs a few log lines a minute and a
        count, not a line each.
        """
        for _ in range(3):
            self.open("127.0.0.3")
        with capturedLogs() as events:
            for _ in range(1000):
                self.assertIsNone(self.open("127.0.0.3"))
            self.site.stopFactory()
        refusals = [e for e in events if "closing a scrape-port" in e["log_format"]]
        self.assertEqual(len(refusals), self.site.warnings.burst)
        self.assertIn(
            f"{1000 - self.site.warnings.burst} more refused scrape-port connection "
            "message(s) suppressed",
            formatEvent(events[-1]),
        )
