"""
Tests for L{promtwist.proxy.relay}, L{promtwist.proxy.stream} and the scrape
handler: every way a relayed scrape can end, driven deterministically with
a fake agent link, the scrape port's real server on a L{StringTransport}
and a L{Clock}, so that what Prometheus receives is checked byte for byte.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import Identity, ProxySettings
from promtwist.metrics import ProxyMetrics, ScrapeLeg
from promtwist.protocol.promtwist_pb2 import Frame, Outcome, ScrapeChunk, ScrapeResponse
from promtwist.proxy.answers import ScrapeRecord
from promtwist.proxy.auth import ANONYMOUS
from promtwist.proxy.httpserver import ScrapePortConnection, ScrapePortFactory
from promtwist.proxy.proxyurl import badQueryByte
from promtwist.proxy.registry import Registry
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.scrape import ScrapeHandler, badHeaderByte
from promtwist.proxy.stream import ScrapeStream
from promtwist.test.scrapeport import Response, parseResponse

WINDOW = 64 * 1024
FRAME = 16 * 1024


@dataclass(eq=False)
class FakeLink:
    """
    An agent link that records what the proxy sends and lets the test play
    the agent; a protocol violation fails every scrape on it, as the real
    link's loss does.
    """

    name: str
    agentId: str = ""
    hostName: str = "host"
    launchId: str = ""
    consolidated: bool = False
    identity: Identity = ANONYMOUS
    kind: str = "agent"
    MAX_LENGTH: int = FRAME
    metrics: ProxyMetrics = field(default_factory=lambda: ProxyMetrics("fake", Clock()))
    calls: list[ScrapeCall] = field(default_factory=list)
    streams: dict[int, ScrapeStream] = field(default_factory=dict)
    sent: list[Frame] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def pathRoleChanged(
        self,
        path: str,
        role: str,
        reason: str,
        holder: object,
        since: float,
        position: int = 0,
    ) -> None:
        raise AssertionError("relay tests have one agent per path")

    def scrape(self, call: ScrapeCall) -> ScrapeStream:
        self.calls.append(call)
        stream = ScrapeStream(self, len(self.calls), WINDOW)
        self.streams[stream.scrapeId] = stream
        return stream

    def forget(self, scrapeId: int) -> None:
        self.streams.pop(scrapeId, None)

    def sendIfConnected(self, frame: Frame) -> None:
        self.sent.append(frame)

    def violation(self, why: str) -> None:
        self.violations.append(why)
        for stream in list(self.streams.values()):
            stream.linkLost(f"protocol violation: {why}")

    # Playing the agent.

    @property
    def current(self) -> ScrapeStream:
        (stream,) = self.streams.values()
        return stream

    def head(self, body: bytes = b"", last: bool = False, **fields: Any) -> None:
        stream = self.current
        values: dict[str, object] = {"status": 200, "content_length": -1}
        values.update(fields)
        stream.responseReceived(
            ScrapeResponse(scrape_id=stream.scrapeId, body=body, last=last, **values)  # type: ignore[arg-type]
        )

    def chunk(self, data: bytes = b"", last: bool = False, **fields: Any) -> None:
        stream = self.current
        stream.chunkReceived(ScrapeChunk(scrape_id=stream.scrapeId, data=data, last=last, **fields))

    def body(self, data: bytes) -> None:
        """
        Send C{data} after a head, in frames within the limit, the last one
        saying so.
        """
        for start in range(0, len(data), FRAME):
            if not self.streams:
                break  # the proxy has stopped this scrape
            self.chunk(data[start : start + FRAME], last=start + FRAME >= len(data))

    def kinds(self) -> list[str]:
        return [str(frame.WhichOneof("kind")) for frame in self.sent]


class SlowReader(StringTransport):
    """
    A connection whose client stops reading once C{limit} bytes wait in it:
    the producer is paused, as a real socket's buffer filling up does.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def read(self) -> bytes:
        """
        The client reads all that waits, and wants more.
        """
        data: bytes = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


class Proxy:
    """
    The scrape handler behind the scrape port's server, with a registry of
    fake links.
    """

    def __init__(self, settings: ProxySettings | None = None) -> None:
        self.clock = Clock()
        self.settings = settings or ProxySettings(
            scrape_request_timeout_secs=10, max_unzipped_content_size_mbytes=1
        )
        self.registry = Registry()
        self.resource = ScrapeHandler(self.settings, self.registry, self.clock)
        self.records: list[ScrapeRecord] = []
        self.resource.tracker.observers.append(self.records.append)
        self.site = ScrapePortFactory(
            self.resource,
            maxHeaderBytes=16384,
            headerTimeout=10,
            idleTimeout=3600,
            clock=self.clock,
        )
        self.channels: dict[StringTransport, Protocol] = {}

    def agent(self, name: str, path: str = "p", consolidated: bool = False) -> FakeLink:
        link = FakeLink(name, agentId=name, consolidated=consolidated)
        self.registry.addAgent(link)
        self.registry.registerPath(link, path, path, {})
        return link

    def get(
        self, target: bytes = b"/p", transport: StringTransport | None = None, **headers: str
    ) -> StringTransport:
        channel = self.site.buildProtocol(None)
        assert channel is not None
        transport = transport or StringTransport()
        self.channels[transport] = channel
        channel.makeConnection(transport)
        lines = [b"GET " + target + b" HTTP/1.1", f"Host: {headers.pop('host', 'proxy')}".encode()]
        lines += [f"{k.replace('_', '-')}: {v}".encode() for k, v in headers.items()]
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        return transport

    def hangUp(self, transport: StringTransport) -> None:
        self.channels[transport].connectionLost(Failure(ConnectionDone()))

    def timers(self) -> list[object]:
        """
        The clock's pending calls but the connections' idle timeouts, which
        a kept-alive connection rightly has.
        """
        return [
            call
            for call in self.clock.getDelayedCalls()
            if getattr(getattr(call, "func", None), "__func__", None)
            is not ScrapePortConnection._idleTimedOut
        ]

    @property
    def inFlight(self) -> int:
        return len(self.resource.tracker.inFlight)


def response(transport: StringTransport) -> Response:
    return parseResponse(transport.value())


def transfers(link: FakeLink) -> tuple[dict[str, float], float]:
    """
    The chunk validation failures by stage and the abandoned transfers
    C{link} told its metrics of.
    """
    registry = link.metrics.registry
    stages = {
        stage: value
        for stage in ("chunk", "summary")
        if (
            value := registry.get_sample_value(
                "proxy_chunk_validation_failures_total", {"stage": stage}
            )
        )
    }
    abandoned = registry.get_sample_value("proxy_chunked_transfers_abandoned_total")
    return stages, abandoned or 0


class StreamThroughTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = Proxy()
        self.link = self.proxy.agent("a1")

    def test_wholeBodyInHead(self) -> None:
        """
        A body that came whole in the head is sent with the length the proxy
        counted, and the agent is asked exactly what Prometheus asked.
        """
        conn = self.proxy.get(b"/p?a=1&b=%20", Accept="text/plain")
        self.link.head(b"up 1\n", last=True, content_type="text/plain", content_length=5)
        r = response(conn)
        self.assertEqual((r.status, r.body, r.complete), (200, b"up 1\n", True))
        self.assertEqual(r.headers[b"content-length"], b"5")
        self.assertEqual(r.headers[b"content-type"], b"text/plain")
        (call,) = self.link.calls
        self.assertEqual((call.path, call.query, call.accept), ("p", "a=1&b=%20", "text/plain"))
        self.assertEqual(self.proxy.records[-1].type, "success")
        self.assertEqual(self.proxy.inFlight, 0)
        self.assertFalse(conn.disconnecting)
        # Nothing more will come: no credit goes back.
        self.assertEqual(self.link.sent, [])

    def test_streamedBodyChunked(self) -> None:
        """
        A body in several frames is sent chunked, whatever length the agent
        declared, and credit goes back as the body is passed on.
        """
        conn = self.proxy.get()
        self.link.head(b"a" * 10, content_length=30)
        self.link.chunk(b"b" * 10)
        self.link.chunk(b"c" * 10, last=True)
        r = response(conn)
        self.assertEqual((r.status, r.complete), (200, True))
        self.assertEqual(r.body, b"a" * 10 + b"b" * 10 + b"c" * 10)
        self.assertNotIn(b"content-length", r.headers)
        self.assertEqual(self.link.kinds(), ["scrape_credit", "scrape_credit"])

    def test_moreThanDeclared(self) -> None:
        """
        An agent that sends more than it declared cannot split the HTTP
        stream: the response is broken off and the connection closed, and
        the agent is told to stop.
        """
        conn = self.proxy.get()
        self.link.head(b"x" * 10, content_length=23)
        self.link.chunk(b"y" * 20)
        r = response(conn)
        self.assertFalse(r.complete)
        self.assertEqual(r.body, b"x" * 10)
        self.assertNotIn(b"yyy", conn.value())
        self.assertTrue(conn.disconnecting)
        self.assertIn("cancel_scrape", self.link.kinds())
        record = self.proxy.records[-1]
        self.assertEqual(record.type, "invalid_answer")
        self.assertIn("more than the 23 body bytes it declared", record.reason)
        # prometheus-proxy's names for the same event: a chunk that failed
        # validation, and its 502 counted as upstream_error.
        self.assertEqual(transfers(self.link), ({"chunk": 1}, 0))
        self.assertEqual([leg.type for leg in record.legs], ["upstream_error"])

    def test_moreThanDeclaredInHead(self) -> None:
        conn = self.proxy.get()
        self.link.head(b"x" * 1000, content_length=23)
        r = response(conn)
        self.assertEqual(r.status, 502)
        self.assertIn(b"more than the 23 body bytes it declared", r.body)

    def test_fewerThanDeclared(self) -> None:
        """
        A body that ends short of what the agent declared is not passed off
        as complete.
        """
        conn = self.proxy.get()
        self.link.head(b"x" * 10, content_length=23)
        self.link.chunk(b"", last=True)
        r = response(conn)
        self.assertFalse(r.complete)
        self.assertTrue(conn.disconnecting)
        self.assertIn("declared 23 body bytes and sent 10", self.proxy.records[-1].reason)
        self.assertEqual(transfers(self.link), ({"summary": 1}, 0))

    def test_lastHeadLengthMismatch(self) -> None:
        conn = self.proxy.get()
        self.link.head(b"x", last=True, content_length=0)
        r = response(conn)
        self.assertEqual(r.status, 502)
        self.assertIn(b"declared 0 body bytes and sent 1", r.body)

    def test_creditOverrun(self) -> None:
        """
        Body bytes past the credit window (plus the one frame an agent may
        start while it has credit) close the link, whatever the HTTP client
        is doing.
        """
        conn = self.proxy.get()
        self.link.head()
        stream = self.link.current
        stream.pauseProducing()
        for _ in range((WINDOW + FRAME) // 4096):
            self.link.chunk(b"z" * 4096)
        self.assertEqual(self.link.violations, [])
        self.link.chunk(b"z")
        (why,) = self.link.violations
        self.assertIn("past the credit window of 65536", why)
        self.assertTrue(conn.disconnecting)
        self.assertIn("protocol violation", self.proxy.records[-1].reason)

    def test_slowClientWithholdsCredit(self) -> None:
        """
        While the HTTP client does not read, no credit goes back; once it
        does, what is owed goes back in one frame.
        """
        self.proxy.get()
        self.link.head()
        stream = self.link.current
        stream.pauseProducing()
        self.link.chunk(b"a" * 100)
        self.link.chunk(b"b" * 100)
        self.assertEqual(self.link.kinds(), [])
        stream.resumeProducing()
        (credit,) = self.link.sent
        self.assertEqual(credit.scrape_credit.bytes, 200)

    def test_targetNonSuccess(self) -> None:
        """
        A target's own non-2xx answer reaches Prometheus with its status and
        the agent's reason.
        """
        conn = self.proxy.get()
        self.link.head(status=500, reason="target http://t/metrics answered HTTP 500", last=True)
        r = response(conn)
        self.assertEqual(r.status, 500)
        self.assertEqual(r.body, b"target http://t/metrics answered HTTP 500\n")
        self.assertEqual(self.proxy.records[-1].type, "upstream_error")

    def test_targetStatusTypes(self) -> None:
        """
        A target's status is counted under prometheus-proxy's name for it.
        """
        for status, kind in [
            (404, "path_not_found"),
            (408, "upstream_timed_out"),
            (504, "upstream_timed_out"),
            (413, "content_too_large"),
            (502, "upstream_error"),
        ]:
            self.proxy.get()
            self.link.head(status=status, last=True)
            record = self.proxy.records[-1]
            self.assertEqual((status, record.type), (status, kind))
            # Timed under the path it was asked for, a registered one.
            (leg,) = record.legs
            self.assertEqual((leg.type, record.path), (kind, "p"))
            self.assertIsNotNone(leg.seconds)

    def test_reasonInStatusLine(self) -> None:
        """
        Prometheus shows the status line, not the body: the reason is in
        both, in the status line as printable ASCII of bounded length; a
        target's own status is kept.
        """
        conn = self.proxy.get()
        self.link.head(
            status=500, reason="target http://b\u00fccher/m answered HTTP 500", last=True
        )
        self.assertTrue(
            conn.value().startswith(b"HTTP/1.1 500 target http://b?cher/m answered HTTP 500\r\n"),
            conn.value(),
        )
        conn = self.proxy.get()
        self.link.head(outcome=Outcome.UNREACHABLE, reason="x\r\n" * 1000, last=True)
        statusLine = conn.value().split(b"\r\n")[0]
        self.assertTrue(statusLine.startswith(b"HTTP/1.1 503 x\\r\\nx"), statusLine)
        self.assertLessEqual(len(statusLine), len(b"HTTP/1.1 503 ") + 200)
        self.assertTrue(statusLine.endswith(b"..."))

    def test_agentFailure(self) -> None:
        conn = self.proxy.get()
        self.link.head(outcome=Outcome.TIMED_OUT, reason="target slow", last=True)
        r = response(conn)
        self.assertEqual((r.status, r.body), (408, b"target slow\n"))

    def test_failureMidBody(self) -> None:
        conn = self.proxy.get()
        self.link.head(b"x" * 10)
        self.link.chunk(last=True, outcome=Outcome.UNREACHABLE, reason="target broke off")
        self.assertFalse(response(conn).complete)
        self.assertTrue(conn.disconnecting)
        self.assertEqual(self.proxy.records[-1].reason, "aborted mid-body: target broke off")

    def test_proxyDeadline(self) -> None:
        """
        An agent that never answers gets a 503 at the proxy's deadline, and
        is told to stop.
        """
        conn = self.proxy.get(X_Prometheus_Scrape_Timeout_Seconds="4")
        self.proxy.clock.advance(3.9)
        self.assertEqual(conn.value(), b"")
        self.proxy.clock.advance(0.1)
        r = response(conn)
        self.assertEqual(r.status, 503)
        self.assertEqual(r.body, b"no complete answer from agent 'a1' within 4s\n")
        self.assertEqual(self.link.kinds(), ["cancel_scrape"])
        self.assertEqual(self.link.streams, {})
        self.assertEqual(self.proxy.timers(), [])

    def test_proxyDeadlineMidBody(self) -> None:
        conn = self.proxy.get()
        self.link.head(b"x" * 10)
        self.proxy.clock.advance(10)
        self.assertTrue(conn.disconnecting)
        self.assertEqual(self.proxy.records[-1].type, "timed_out")

    def test_prometheusHangsUp(self) -> None:
        conn = self.proxy.get()
        self.proxy.hangUp(conn)
        self.assertEqual(self.link.kinds(), ["cancel_scrape"])
        self.assertEqual((self.proxy.records[-1].status, self.proxy.inFlight), (499, 0))
        self.assertEqual(self.proxy.timers(), [])
        # prometheus-proxy's handler is cancelled then and counts nothing.
        self.assertEqual(self.proxy.records[-1].legs, ())

    def test_prometheusHangsUpMidBody(self) -> None:
        conn = self.proxy.get()
        self.link.head(b"x" * 10)
        self.proxy.hangUp(conn)
        self.assertEqual(self.link.kinds(), ["scrape_credit", "cancel_scrape"])
        self.assertEqual(self.proxy.records[-1].type, "client_gone")

    def test_linkLost(self) -> None:
        conn = self.proxy.get()
        self.link.current.linkLost("connection reset")
        r = response(conn)
        self.assertEqual((r.status, r.body), (502, b"agent disconnected: connection reset\n"))
        # No transfer had begun.
        self.assertEqual(transfers(self.link), ({}, 0))

    def test_linkLostMidBody(self) -> None:
        """
        A link lost between an answer's frames abandons the transfer.
        """
        conn = self.proxy.get()
        self.link.head(b"x" * 10)
        self.link.current.linkLost("connection reset")
        self.assertTrue(conn.disconnecting)
        self.assertEqual(transfers(self.link), ({}, 1))
        self.assertEqual([leg.type for leg in self.proxy.records[-1].legs], ["upstream_error"])

    def test_refusalCountedUntimed(self) -> None:
        """
        A request no agent serves is one untimed leg.
        """
        self.proxy.get(b"/nothing")
        record = self.proxy.records[-1]
        self.assertEqual(record.legs, (ScrapeLeg("invalid_path", None),))

    def test_stopping(self) -> None:
        self.proxy.resource.stopping = True
        r = response(self.proxy.get())
        self.assertEqual((r.status, r.body), (503, b"the proxy is shutting down\n"))
        self.assertEqual(self.link.calls, [])

    def test_queryBytesRefused(self) -> None:
        """
        A query string that could not be forwarded as it is gets a 400 at
        the proxy, saying where the bad byte is (llhttp refuses it before
        the proxy's own check would); no agent is asked.
        """
        r = response(self.proxy.get(b"/p?a=\x7f"))
        self.assertEqual(r.status, 400)
        self.assertEqual(r.body, b"malformed request: Invalid char in url query\n")
        self.assertEqual(self.link.calls, [])
        self.assertEqual(badQueryByte(b"a=\x7f"), "query string has byte 0x7f at position 2")

    def test_headerBytesRefused(self) -> None:
        """
        A forwarded header holding a control byte gets a 400 naming the
        header, never its value; no agent is asked.
        """
        r = response(self.proxy.get(Authorization="Bearer s3cret\x01"))
        self.assertEqual(r.status, 400)
        self.assertEqual(r.body, b"malformed request: Invalid header value char\n")
        self.assertEqual(self.link.calls, [])
        self.assertEqual(
            badHeaderByte({b"authorization": b"Bearer s3cret\x01"}),
            "the Authorization header has byte 0x01 at position 13",
        )

    def test_noContentAnswer(self) -> None:
        """
        A target's 204 is passed on without a length for a body it has not.
        """
        conn = self.proxy.get()
        self.link.head(b"", status=204, last=True, content_length=-1)
        self.assertTrue(conn.value().startswith(b"HTTP/1.1 204 "))
        self.assertNotIn(b"Content-Length", conn.value())

    def test_slowPrometheusBlamed(self) -> None:
        """
        A body that fails while Prometheus holds the agent back (it reads
        slowly) is recorded as Prometheus' slowness, not the target's.
        """
        conn = self.proxy.get()
        self.link.head(b"x" * 10)
        self.link.current.pauseProducing()
        self.link.chunk(last=True, outcome=Outcome.AGENT_ERROR, reason="waited for credit")
        self.assertTrue(conn.disconnecting)
        record = self.proxy.records[-1]
        self.assertEqual(record.type, "client_slow")
        self.assertIn("Prometheus read the answer too slowly", record.reason)

    def test_unknownPathReasonClipped(self) -> None:
        r = response(self.proxy.get(b"/" + b"q" * 5000))
        self.assertEqual(r.status, 404)
        self.assertLess(len(r.body), 300)


class GzipTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = Proxy()
        self.link = self.proxy.agent("a1")

    def test_passedThrough(self) -> None:
        body = gzip.compress(b"up 1\n")
        conn = self.proxy.get(Accept_Encoding="gzip")
        self.link.head(body, last=True, content_encoding="gzip")
        r = response(conn)
        self.assertEqual((r.body, r.headers[b"content-encoding"]), (body, b"gzip"))
        self.assertEqual(self.proxy.records[-1].encoding, "gzipped")
        # The body's own size, from the gzip trailer, as it came over the link.
        self.assertEqual(self.proxy.records[-1].legs, (ScrapeLeg("success", 0.0, 5, "gzipped"),))

    def test_inflatedForClientsWithoutGzip(self) -> None:
        conn = self.proxy.get()
        body = gzip.compress(b"up 1\n" * 1000)
        self.link.head(body[:100], content_encoding="gzip")
        self.link.chunk(body[100:], last=True)
        r = response(conn)
        self.assertEqual((r.status, r.body, r.complete), (200, b"up 1\n" * 1000, True))
        self.assertNotIn(b"content-encoding", r.headers)
        self.assertEqual(self.proxy.records[-1].legs, (ScrapeLeg("success", 0.0, 5000, "gzipped"),))

    def test_multiMemberInflatedWhole(self) -> None:
        """
        Every member of a multi-member body reaches a client that does not
        accept gzip; garbage after the last member is a 502, not a 200 with
        the body cut short.
        """
        body = gzip.compress(b"a 1\n") + gzip.compress(b"b 2\n")
        conn = self.proxy.get()
        self.link.head(body[:30], content_encoding="gzip")
        self.link.chunk(body[30:], last=True)
        r = response(conn)
        self.assertEqual((r.status, r.body, r.complete), (200, b"a 1\nb 2\n", True))
        conn = self.proxy.get()
        self.link.head(body + b"junk", last=True, content_encoding="gzip")
        r = response(conn)
        self.assertEqual(r.status, 502)
        self.assertIn(b"trailing garbage after member 2", r.body)

    def test_xGzipInflated(self) -> None:
        conn = self.proxy.get()
        self.link.head(gzip.compress(b"up 1\n"), last=True, content_encoding="x-gzip")
        self.assertEqual(response(conn).body, b"up 1\n")

    def test_bomb(self) -> None:
        """
        A body that inflates past the limit costs one 413, not the memory.
        """
        conn = self.proxy.get()
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        bomb = compressor.compress(b"\0" * (50 * 1024 * 1024)) + compressor.flush()
        self.link.head(bomb, last=True, content_encoding="gzip")
        r = response(conn)
        self.assertEqual(r.status, 413)
        self.assertIn(b"maxUnzippedContentSizeMBytes", r.body)

    def test_invalid(self) -> None:
        conn = self.proxy.get()
        self.link.head(b"not gzip at all", last=True, content_encoding="gzip")
        r = response(conn)
        self.assertEqual(r.status, 502)
        self.assertIn(b"invalid gzip", r.body)


class InvalidHeadTests(SynchronousTestCase):
    """
    A head the proxy cannot pass on truthfully is a 502 at once, naming what
    was wrong, with one log line; never a wait for the deadline.
    """

    def check(self, expected: str, **fields: Any) -> None:
        proxy = Proxy()
        link = proxy.agent("a1")
        conn = proxy.get()
        with capturedLogs() as events:
            link.head(last=True, **fields)
        r = response(conn)
        self.assertEqual(r.status, 502, r)
        self.assertIn(expected.encode(), r.body)
        self.assertEqual(proxy.inFlight, 0)
        self.assertEqual(len([e for e in events if expected in str(e.get("reason"))]), 1)

    def test_status(self) -> None:
        self.check("status 99999 is not a final HTTP status", status=99999)

    def test_interimStatus(self) -> None:
        self.check("status 101 is not a final HTTP status", status=101)

    def test_contentTypeNotLatin1(self) -> None:
        self.check("is not latin-1 text", content_type="text/plain; \u2603")

    def test_contentTypeControlCharacters(self) -> None:
        self.check("contains control characters", content_type="text/plain\r\nSet-Cookie: x=1")

    def test_contentTypeTooLong(self) -> None:
        self.check("content type of 5000 characters", content_type="t" * 5000)

    def test_encodingNotLatin1(self) -> None:
        self.check("content encoding", content_encoding="\u2603")

    def test_unknownOutcome(self) -> None:
        self.check("unknown outcome 42", outcome=42)

    def test_disconnectedIsNotTheAgents(self) -> None:
        self.check("unknown outcome 7", outcome=Outcome.DISCONNECTED)

    def test_negativeLength(self) -> None:
        self.check("content length -5", content_length=-5)

    def test_secondHead(self) -> None:
        proxy = Proxy()
        link = proxy.agent("a1")
        conn = proxy.get()
        link.head(b"x")
        link.head(b"y")
        self.assertTrue(conn.disconnecting)
        self.assertIn("a second answer head", proxy.records[-1].reason)

    def test_reasonBounded(self) -> None:
        proxy = Proxy()
        link = proxy.agent("a1")
        conn = proxy.get()
        link.head(outcome=Outcome.AGENT_ERROR, reason="r" * 1_000_000, last=True)
        r = response(conn)
        self.assertEqual(r.status, 503)
        self.assertLess(len(r.body), 1100)
        self.assertIn(b"(1000000 characters)", r.body)


class CollectMergeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = Proxy()
        self.a = self.proxy.agent("a", consolidated=True)
        self.b = self.proxy.agent("b", consolidated=True)

    def test_merged(self) -> None:
        conn = self.proxy.get()
        self.a.head(b"a 1\n# EOF\n", last=True)
        self.assertEqual(conn.value(), b"")
        self.b.head(b"b 2\n", last=False)
        self.b.chunk(b"b 3\n# EOF\n", last=True)
        r = response(conn)
        self.assertEqual((r.status, r.body, r.complete), (200, b"a 1\nb 2\nb 3\n# EOF\n", True))
        self.assertEqual(self.proxy.records[-1].agents, "a, b")

    def test_gzipPartsInflated(self) -> None:
        conn = self.proxy.get(Accept_Encoding="gzip")
        self.a.head(gzip.compress(b"a 1\n"), last=True, content_encoding="gzip")
        self.b.head(b"b 2\n", last=True)
        self.assertEqual(response(conn).body, b"a 1\nb 2\n")

    def test_oneMissing(self) -> None:
        conn = self.proxy.get()
        self.a.head(b"a 1\n", last=True)
        self.proxy.clock.advance(0.5)
        self.b.head(outcome=Outcome.UNREACHABLE, reason="refused", last=True)
        r = response(conn)
        self.assertEqual((r.status, r.body), (200, b"a 1\n"))
        self.assertEqual(r.headers[b"x-promtwist-missing-agents"], b"b: refused")
        # Each agent is a leg of its own, with its own outcome and time, as
        # prometheus-proxy counts a consolidated path.
        self.assertEqual(
            self.proxy.records[-1].legs,
            (ScrapeLeg("success", 0.0, 4, "plain"), ScrapeLeg("upstream_error", 0.5, 0)),
        )

    def test_noneAnswers(self) -> None:
        conn = self.proxy.get()
        self.a.head(outcome=Outcome.UNREACHABLE, reason="refused", last=True)
        self.b.head(outcome=Outcome.TIMED_OUT, reason="slow", last=True)
        r = response(conn)
        self.assertEqual(r.status, 503)
        self.assertEqual(r.body, b"agent 'a': refused; agent 'b': slow\n")

    def test_deadline(self) -> None:
        conn = self.proxy.get(X_Prometheus_Scrape_Timeout_Seconds="2")
        self.a.head(b"a 1\n", last=True)
        self.b.head(b"b 2\n")
        self.proxy.clock.advance(2)
        r = response(conn)
        self.assertEqual((r.status, r.body), (200, b"a 1\n"))
        self.assertIn(b"no complete answer within 2s", r.headers[b"x-promtwist-missing-agents"])
        self.assertIn("cancel_scrape", self.b.kinds())
        self.assertEqual(self.proxy.resource.budget.used, 0)

    def test_prometheusHangsUp(self) -> None:
        """
        A hang-up on a consolidated path is recorded like any other, and
        every agent is told to stop.
        """
        conn = self.proxy.get()
        self.a.head(b"a 1\n")
        self.proxy.hangUp(conn)
        self.assertEqual(self.proxy.records[-1].type, "client_gone")
        self.assertEqual(self.proxy.records[-1].legs, ())
        self.assertIn("cancel_scrape", self.a.kinds())
        self.assertEqual(self.b.kinds(), ["cancel_scrape"])
        self.assertEqual((self.proxy.inFlight, self.proxy.resource.budget.used), (0, 0))

    def test_partTooLarge(self) -> None:
        conn = self.proxy.get()
        self.a.head()
        self.a.body(b"a" * (1024 * 1024 + 1))
        self.b.head(b"b 2\n", last=True)
        r = response(conn)
        self.assertEqual(r.body, b"b 2\n")
        self.assertIn(b"maxUnzippedContentSizeMBytes", r.headers[b"x-promtwist-missing-agents"])

    def test_budget(self) -> None:
        """
        Bodies past the proxy-wide buffer budget are left out with a reason;
        the budget is returned when the scrape ends.
        """
        proxy = Proxy(ProxySettings(max_consolidated_buffer_mbytes=1))
        a = proxy.agent("a", consolidated=True)
        b = proxy.agent("b", consolidated=True)
        conn = proxy.get()
        a.head()
        a.body(b"a" * (700 * 1024))
        self.assertEqual(proxy.resource.budget.used, 700 * 1024)
        b.head()
        b.body(b"b" * (700 * 1024))
        r = response(conn)
        self.assertEqual(r.status, 200)
        self.assertIn(b"maxConsolidatedBufferMBytes", r.headers[b"x-promtwist-missing-agents"])
        self.assertEqual(proxy.resource.budget.used, 0)

    def test_budgetExhaustedForAll(self) -> None:
        proxy = Proxy(ProxySettings(max_consolidated_buffer_mbytes=1))
        a = proxy.agent("a", consolidated=True)
        proxy.agent("b", consolidated=True)
        proxy.resource.budget.reserve(1024 * 1024)
        conn = proxy.get()
        a.head(b"a 1\n", last=True)
        for link in (a, proxy.registry.lookup("p")[1]):
            assert isinstance(link, FakeLink)
            if link.streams:
                link.head(b"b 1\n", last=True)
        r = response(conn)
        self.assertEqual(r.status, 503)
        self.assertIn(b"maxConsolidatedBufferMBytes", r.body)

    def test_noTypeIsNoType(self) -> None:
        conn = self.proxy.get()
        self.a.head(b"a 1\n", last=True)
        self.b.head(b"b 2\n", last=True)
        self.assertNotIn(b"Content-Type", conn.value())

    def test_otherEncodingsLeftOut(self) -> None:
        """
        Parts are merged as text: an x-gzip one is inflated, one in an
        encoding the proxy cannot undo is left out with the reason.
        """
        conn = self.proxy.get()
        self.a.head(gzip.compress(b"a 1\n"), last=True, content_encoding="x-gzip")
        self.b.head(zlib.compress(b"b 2\n"), last=True, content_encoding="deflate")
        r = response(conn)
        self.assertEqual(r.body, b"a 1\n")
        self.assertIn(
            b"cannot merge a body encoded deflate", r.headers[b"x-promtwist-missing-agents"]
        )

    def test_budgetHeldUntilSent(self) -> None:
        """
        The merged body leaves as fast as Prometheus reads it, and its parts
        stay counted in the budget until the last byte is handed over.
        """
        conn = SlowReader(64 * 1024)
        self.proxy.get(transport=conn)
        part = b"m 1\n" * 25_000
        for link in (self.a, self.b):
            link.head()
            link.body(part)
        budget = self.proxy.resource.budget
        self.assertEqual(budget.used, 2 * len(part))
        self.assertLess(len(conn.value()), len(part))
        self.assertEqual(self.proxy.inFlight, 1)
        received = b""
        for _ in range(100):
            if not self.proxy.inFlight:
                break
            received += conn.read()
        received += conn.value()
        r = parseResponse(received)
        self.assertEqual((r.status, len(r.body), r.complete), (200, 2 * len(part), True))
        self.assertEqual(budget.used, 0)

    def test_deadlineWhileSending(self) -> None:
        conn = self.proxy.get(transport=SlowReader(64 * 1024))
        for link in (self.a, self.b):
            link.head()
            link.body(b"m 1\n" * 25_000)
        self.proxy.clock.advance(10)
        self.assertTrue(conn.disconnecting)
        self.assertEqual(self.proxy.records[-1].type, "client_slow")
        self.assertEqual(self.proxy.resource.budget.used, 0)

    def test_invalidHeadLeftOut(self) -> None:
        conn = self.proxy.get()
        self.a.head(b"a 1\n", last=True)
        self.b.head(status=99999, last=True)
        r = response(conn)
        self.assertEqual(r.body, b"a 1\n")
        self.assertIn(b"not a final HTTP status", r.headers[b"x-promtwist-missing-agents"])
