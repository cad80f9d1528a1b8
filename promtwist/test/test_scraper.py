"""
Tests for L{promtwist.agent.scraper}.
"""

from __future__ import annotations

import base64
import gzip
import zlib

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IPushProducer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from promtwist.agent.scraper import FRAME_OVERHEAD, Scrape, Scraper, Target
from promtwist.config import AgentSettings, MetricFilter, PathConfig
from promtwist.httputil import redacted
from promtwist.protocol.framing import FrameTooLarge
from promtwist.protocol.promtwist_pb2 import Frame, Outcome, ScrapeRequest


@implementer(IPushProducer)
class FakeBodyProducer:
    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    def __init__(
        self,
        code: int = 200,
        headers: dict[bytes, list[bytes]] | None = None,
        length: object = UNKNOWN_LENGTH,
    ) -> None:
        self.code = code
        self.phrase = b"Whatever"
        self.headers = Headers(headers or {b"Content-Type": [b"text/plain"]})
        self.length = length
        self.producer = FakeBodyProducer()
        self.protocol: IProtocol | None = None

    def deliverBody(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.producer)  # type: ignore[arg-type]

    def body(self, *pieces: bytes) -> None:
        assert self.protocol is not None
        for piece in pieces:
            self.protocol.dataReceived(piece)

    def end(self, reason: Failure = Failure(ResponseDone())) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(reason)


class FakeAgent:
    def __init__(self) -> None:
        self.requests: list[tuple[bytes, Headers, Deferred[FakeResponse]]] = []
        self.cancelled: list[bytes] = []

    def request(
        self, method: bytes, uri: bytes, headers: Headers, bodyProducer: object = None
    ) -> Deferred[FakeResponse]:
        d: Deferred[FakeResponse] = Deferred(lambda _: self.cancelled.append(uri))
        self.requests.append((uri, headers, d))
        return d


class Run:
    """
    One scrape against a fake target, recording the frames it sends.
    """

    def __init__(
        self,
        url: str = "http://target.test/metrics",
        query: str = "",
        acceptEncoding: str = "",
        authorization: str = "",
        window: int = 0,
        chunkBytes: int = 32 * 1024,
        **settings: object,
    ) -> None:
        self.clock = Clock()
        self.http = FakeAgent()
        self.settings = AgentSettings(**settings)  # type: ignore[arg-type]
        self.frames: list[Frame] = []
        request = ScrapeRequest(
            scrape_id=7,
            path="p",
            query=query,
            accept="text/plain",
            accept_encoding=acceptEncoding,
            authorization=authorization,
            timeout_ms=10_000,
            window_bytes=window,
        )
        self.scrape = Scrape(
            Scraper(self.settings, self.http, self.clock),  # type: ignore[arg-type]
            request,
            PathConfig("p", "p", url),
            self.frames.append,
            chunkBytes,
        )
        self.scrape.start()
        self.scrape.run()

    def respond(self, response: FakeResponse) -> FakeResponse:
        self.http.requests[-1][2].callback(response)
        return response

    @property
    def headers(self) -> Headers:
        return self.http.requests[-1][1]

    def body(self) -> bytes:
        head = self.frames[0].scrape_response
        data = head.body + b"".join(f.scrape_chunk.data for f in self.frames[1:])
        return gzip.decompress(data) if head.content_encoding == "gzip" else data

    def last(self) -> Frame:
        return self.frames[-1]


class TargetTests(SynchronousTestCase):
    def test_queryAppended(self) -> None:
        self.assertEqual(Target.build("http://h:1/m", "a=1").uri, b"http://h:1/m?a=1")
        self.assertEqual(Target.build("http://h:1/m?x=y", "a=1").uri, b"http://h:1/m?x=y&a=1")
        self.assertEqual(Target.build("http://h:1/m", "").uri, b"http://h:1/m")

    def test_federateUrl(self) -> None:
        """
        prometheus-proxy's federate example, raw characters and all, becomes a
        valid request target; Prometheus' already encoded query is kept.
        """
        target = Target.build(
            "http://prometheus:9090/federate?match[]={job=~'.*'}", "match%5B%5D=up"
        )
        self.assertEqual(
            target.uri,
            b"http://prometheus:9090/federate?match%5B%5D=%7Bjob=~'.*'%7D&match%5B%5D=up",
        )

    def test_basicAuthLifted(self) -> None:
        target = Target.build("http://us%40er:p%3Ass@[::1]:9100/metrics", "")
        self.assertEqual(target.uri, b"http://[::1]:9100/metrics")
        self.assertEqual(target.authorization, b"Basic " + base64.b64encode(b"us@er:p:ss"))

    def test_redacted(self) -> None:
        self.assertEqual(
            redacted("http://u:pw@h:1/m?token=abc&x=1"), "http://***@h:1/m?token=***&x=***"
        )


class ScrapeTests(SynchronousTestCase):
    def test_forwardedHeaders(self) -> None:
        run = Run(acceptEncoding="gzip", authorization="Bearer t")
        self.assertEqual(run.headers.getRawHeaders(b"Accept"), [b"text/plain"])
        self.assertEqual(run.headers.getRawHeaders(b"Accept-Encoding"), [b"gzip"])
        self.assertEqual(run.headers.getRawHeaders(b"Authorization"), [b"Bearer t"])
        self.assertEqual(
            run.headers.getRawHeaders(b"X-Prometheus-Scrape-Timeout-Seconds"), [b"10.000"]
        )

    def test_configuredCredentialsWin(self) -> None:
        run = Run(url="http://u:p@target.test/m", authorization="Bearer t")
        self.assertEqual(
            run.headers.getRawHeaders(b"Authorization"), [b"Basic " + base64.b64encode(b"u:p")]
        )
        self.assertEqual(run.http.requests[0][0], b"http://target.test/m")

    def test_timeoutCappedByAgentSetting(self) -> None:
        run = Run(scrape_timeout_secs=2.0)
        self.assertEqual(
            run.headers.getRawHeaders(b"X-Prometheus-Scrape-Timeout-Seconds"), [b"2.000"]
        )

    def test_smallBodyOneFrame(self) -> None:
        run = Run()
        response = run.respond(FakeResponse(length=5))
        response.body(b"up 1\n")
        self.assertEqual(run.frames, [])  # waits for the end of the body
        response.end()
        (frame,) = run.frames
        head = frame.scrape_response
        self.assertEqual((head.status, head.body, head.last), (200, b"up 1\n", True))
        self.assertEqual((head.content_length, head.content_encoding), (5, ""))
        self.successResultOf(run.scrape.done)

    def test_chunked(self) -> None:
        """
        A body larger than a chunk travels as a head and chunks, none above
        the chunk size, the last one flagged.
        """
        body = bytes(range(256)) * 400
        run = Run(chunkBytes=32 * 1024)
        response = run.respond(FakeResponse(length=len(body)))
        response.body(*(body[i : i + 10_000] for i in range(0, len(body), 10_000)))
        response.end()
        self.assertEqual(run.body(), body)
        self.assertTrue(all(len(f.scrape_chunk.data) <= 32 * 1024 for f in run.frames[1:]))
        self.assertTrue(run.last().scrape_chunk.last)
        self.assertEqual(
            sum(1 for f in run.frames if f.scrape_chunk.last or f.scrape_response.last), 1
        )

    def test_compressedForTheLink(self) -> None:
        """
        When Prometheus accepts gzip, an uncompressed body above
        C{minGzipSizeBytes} is gzipped for the link.
        """
        body = b'metric_name{label="value"} 1\n' * 4000
        run = Run(acceptEncoding="gzip")
        response = run.respond(FakeResponse())
        response.body(body)
        response.end()
        head = run.frames[0].scrape_response
        self.assertEqual((head.content_encoding, head.content_length), ("gzip", -1))
        self.assertEqual(run.body(), body)
        sent = len(head.body) + sum(len(f.scrape_chunk.data) for f in run.frames[1:])
        self.assertLess(sent, len(body) / 10)

    def test_smallBodyNotCompressed(self) -> None:
        run = Run(acceptEncoding="gzip", min_gzip_size_bytes=512)
        response = run.respond(FakeResponse())
        response.body(b"x" * 512)
        response.end()
        self.assertEqual(run.frames[0].scrape_response.content_encoding, "")

    def test_targetGzipPassedThrough(self) -> None:
        """
        A body the target gzipped itself crosses byte for byte.
        """
        compressed = gzip.compress(b"up 1\n" * 1000)
        run = Run(acceptEncoding="gzip")
        response = run.respond(
            FakeResponse(headers={b"Content-Encoding": [b"gzip"]}, length=len(compressed))
        )
        response.body(compressed)
        response.end()
        head = run.frames[0].scrape_response
        self.assertEqual((head.content_encoding, head.content_length), ("gzip", len(compressed)))
        self.assertEqual(head.body, compressed)

    def test_creditPausesTheTarget(self) -> None:
        """
        Once the window is spent the target read pauses, and more credit
        resumes it.
        """
        run = Run(window=64 * 1024, chunkBytes=16 * 1024)
        response = run.respond(FakeResponse())
        response.body(b"x" * 16 * 1024 * 3)
        self.assertFalse(response.producer.paused)
        response.body(b"x" * 16 * 1024 * 2)
        self.assertTrue(response.producer.paused)
        run.scrape.credit(32 * 1024)
        self.assertFalse(response.producer.paused)

    def test_declaredTooLarge(self) -> None:
        run = Run(max_content_length_mbytes=1)
        response = run.respond(FakeResponse(length=2 * 1024 * 1024))
        head = run.last().scrape_response
        self.assertEqual(head.outcome, Outcome.TOO_LARGE)
        self.assertIn("exceeds agent.http.maxContentLengthMBytes (1 MiB)", head.reason)
        self.assertTrue(response.producer.stopped)

    def test_streamedTooLarge(self) -> None:
        """
        A body without a length that grows past the limit is cut, and the last
        chunk says why.
        """
        run = Run(max_content_length_mbytes=1)
        response = run.respond(FakeResponse())
        for _ in range(20):
            response.body(b"x" * 64 * 1024)
        chunk = run.last().scrape_chunk
        self.assertEqual((chunk.last, chunk.outcome), (True, Outcome.TOO_LARGE))
        self.assertTrue(response.producer.stopped)
        self.assertLessEqual(run.scrape.received, 1024 * 1024 + 64 * 1024)

    def test_targetErrorStatus(self) -> None:
        run = Run()
        run.respond(FakeResponse(code=500))
        head = run.last().scrape_response
        self.assertEqual((head.outcome, head.status, head.last), (Outcome.SUCCESS, 500, True))
        self.assertIn("answered HTTP 500", head.reason)

    def test_unreachable(self) -> None:
        run = Run()
        run.http.requests[0][2].errback(ConnectionRefusedError())
        head = run.last().scrape_response
        self.assertEqual(head.outcome, Outcome.UNREACHABLE)
        self.assertIn("connection refused", head.reason)

    def test_timeout(self) -> None:
        run = Run()
        run.clock.advance(10)
        head = run.last().scrape_response
        self.assertEqual(head.outcome, Outcome.TIMED_OUT)
        self.assertEqual(run.http.cancelled, [b"http://target.test/metrics"])
        self.successResultOf(run.scrape.done)

    def test_bodyTimeout(self) -> None:
        """
        The deadline covers the body too.
        """
        run = Run()
        response = run.respond(FakeResponse())
        response.body(b"x" * 40_000)
        run.clock.advance(10)
        chunk = run.last().scrape_chunk
        self.assertEqual((chunk.last, chunk.outcome), (True, Outcome.TIMED_OUT))
        self.assertTrue(response.producer.stopped)

    def test_bodyBroken(self) -> None:
        run = Run()
        response = run.respond(FakeResponse())
        response.body(b"x" * 40_000)
        response.end(Failure(ResponseFailed([Failure(zlib.error("reset"))])))
        chunk = run.last().scrape_chunk
        self.assertEqual(chunk.outcome, Outcome.UNREACHABLE)
        self.assertIn("broke off the body after 40000 bytes", chunk.reason)

    def test_cancel(self) -> None:
        """
        A cancelled scrape stops the target request and sends nothing.
        """
        run = Run()
        response = run.respond(FakeResponse())
        run.scrape.cancel()
        self.assertTrue(response.producer.stopped)
        response.body(b"more")
        response.end()
        self.assertEqual(run.frames, [])
        self.successResultOf(run.scrape.done)

    def test_filtered(self) -> None:
        """
        A path with a filter asks the target for a plain body, drops the
        denied families while streaming, and reports what it saved.
        """
        body = (
            b"# TYPE go_gc_duration_seconds summary\n"
            b'go_gc_duration_seconds{quantile="0"} 1\n'
            b"go_gc_duration_seconds_count 3\n"
            b"# TYPE app_requests_total counter\n"
            b"app_requests_total 7\n"
        )
        run = Run(
            acceptEncoding="gzip",
            filters=(MetricFilter("p", (), ("go_gc_.*",)),),
        )
        reports: list[tuple[str, int]] = []
        run.scrape.scraper.onFiltered = lambda path, s: reports.append((path, s.linesDropped))
        self.assertIsNone(run.headers.getRawHeaders(b"Accept-Encoding"))
        response = run.respond(FakeResponse(length=len(body)))
        response.body(body[:50], body[50:])
        response.end()
        self.assertEqual(run.body(), b"# TYPE app_requests_total counter\napp_requests_total 7\n")
        self.assertEqual(run.frames[0].scrape_response.content_length, -1)
        self.assertEqual(reports, [("p", 3)])

    def test_filterNotApplicable(self) -> None:
        """
        A body the filter cannot read passes unfiltered, with one warning per
        path however many scrapes.
        """
        with capturedLogs() as events:
            run = Run(filters=(MetricFilter("p", (), (".*",)),))
            response = run.respond(
                FakeResponse(headers={b"Content-Type": [b"application/vnd.google.protobuf"]})
            )
            response.body(b"\x00\x01binary")
            response.end()
            self.assertEqual(run.body(), b"\x00\x01binary")
            (warning,) = [formatEvent(e) for e in events if "not filtering" in formatEvent(e)]
            run.scrape.scraper.warnOnce("p", warning.partition("/p: ")[2])
        warnings = [formatEvent(e) for e in events if "not filtering" in formatEvent(e)]
        self.assertEqual(
            warnings,
            [
                "not filtering /p: the target answers application/vnd.google.protobuf,"
                " which is passed on unfiltered"
            ],
        )

    def test_headTooLargeReportedInAHead(self) -> None:
        """
        A head the link cannot carry is replaced by a failure head, so the
        proxy hears of the failure at once.
        """
        run = Run(chunkBytes=1000)
        sent = run.frames

        def send(frame: Frame) -> None:
            if len(frame.SerializeToString()) > 1200:
                raise FrameTooLarge("too big")
            sent.append(frame)

        run.scrape.send = send
        response = run.respond(FakeResponse(headers={b"Content-Type": [b"t/" + b"x" * 300]}))
        response.body(b"y" * 1500)
        (frame,) = sent
        self.assertEqual(frame.WhichOneof("kind"), "scrape_response")
        self.assertEqual(frame.scrape_response.outcome, Outcome.AGENT_ERROR)
        self.assertTrue(frame.scrape_response.last)

    def test_chunkLeavesRoomForTheHead(self) -> None:
        scraper = Scraper(AgentSettings(chunk_content_size_kbs=4096), FakeAgent(), Clock())  # type: ignore[arg-type]
        self.assertEqual(scraper.chunkBytes(1024 * 1024), 1024 * 1024 - FRAME_OVERHEAD)
