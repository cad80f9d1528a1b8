"""
Tests for L{promtwist.agent.scraper}.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable, Sequence
from random import Random
from typing import NamedTuple, cast

import httptools
from twisted.internet import reactor
from twisted.internet.base import DelayedCall
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from zope.interface import implementer

from promtwist.agent.client import Head, IResponseReceiver, Origin, TargetPool
from promtwist.agent.fetch import InvalidRequest, Target
from promtwist.agent.filters import FilterStream
from promtwist.agent.retries import RetryPolicy
from promtwist.agent.scraper import FRAME_OVERHEAD, MIN_CHUNK, Scrape, ScrapeObserver, Scraper
from promtwist.agent.slots import Slots
from promtwist.config.settings import AgentSettings, MetricFilter, MiB, PathConfig
from promtwist.httputil import redacted
from promtwist.protocol.framing import FrameTooLarge
from promtwist.protocol.promtwist_pb2 import Frame, Outcome, ScrapeChunk, ScrapeRequest
from promtwist.test.helpers import rss, servedOnLoopback
from promtwist.test.test_client import MemoryEndpoint


class FakeExchange:
    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self.expiresIn: float | None = None

    def expireIn(self, seconds: float) -> None:
        self.expiresIn = seconds

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeRequest(NamedTuple):
    uri: bytes
    headers: Headers
    receiver: IResponseReceiver
    exchange: FakeExchange


def parsed(origin: Origin, request: bytes) -> tuple[bytes, Headers]:
    """
    The URI and headers of a request the scrape wrote.
    """
    head, blank, rest = request.partition(b"\r\n\r\n")
    assert blank and not rest, request
    line, *fields = head.split(b"\r\n")
    method, target, version = line.split(b" ")
    assert (method, version) == (b"GET", b"HTTP/1.1"), line
    headers = Headers()
    for field in fields:
        name, _, value = field.partition(b": ")
        headers.addRawHeader(name, value)
    (host,) = headers.getRawHeaders(b"Host") or [b""]
    return origin.scheme.encode("ascii") + b"://" + host + target, headers


class FakePool:
    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def request(self, origin: Origin, request: bytes, receiver: IResponseReceiver) -> FakeExchange:
        uri, headers = parsed(origin, request)
        exchange = FakeExchange()
        self.requests.append(FakeRequest(uri, headers, receiver, exchange))
        return exchange

    @property
    def cancelled(self) -> list[bytes]:
        return [r.uri for r in self.requests if r.exchange.stopped]


class FakeResponse:
    def __init__(
        self,
        code: int = 200,
        headers: dict[bytes, list[bytes]] | None = None,
        length: int = -1,
    ) -> None:
        fields = headers or {b"Content-Type": [b"text/plain"]}
        self.head = Head(
            status=code,
            phrase="Whatever",
            contentType=fields.get(b"Content-Type", [b""])[0].decode("latin-1"),
            contentEncoding=fields.get(b"Content-Encoding", [b""])[0].decode("latin-1"),
            length=length,
        )
        self.producer = FakeExchange()
        self.receiver: IResponseReceiver | None = None

    def deliver(self, request: FakeRequest) -> None:
        self.receiver = request.receiver
        self.producer = request.exchange
        self.receiver.responseHead(self.head)

    def body(self, *pieces: bytes) -> None:
        assert self.receiver is not None
        for piece in pieces:
            self.receiver.responseData(piece)

    def end(self, failed: str | None = None) -> None:
        assert self.receiver is not None
        if failed is None:
            self.receiver.responseEnded()
        else:
            self.receiver.responseFailed(failed)


class Recorder(ScrapeObserver):
    """
    Keeps what it is told of scrapes.
    """

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.sent: list[str] = []
        self.filterings: list[tuple[str, int]] = []
        self.retries: list[str] = []

    def scrapeEnded(self, kind: str, seconds: float) -> None:
        self.ended.append(kind)

    def resultSent(self, kind: str) -> None:
        self.sent.append(kind)

    def filtered(self, path: str, stream: FilterStream) -> None:
        self.filterings.append((path, stream.linesDropped))

    def retried(self, kind: str) -> None:
        self.retries.append(kind)


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
        accept: str = "text/plain",
        timeoutMs: int = 10_000,
        sharing: Run | None = None,
        observer: ScrapeObserver = ScrapeObserver(),
        retries: RetryPolicy | None = None,
        **settings: object,
    ) -> None:
        """
        @param sharing: another run whose clock, HTTP agent, settings and
            slots this one shares, as scrapes on one link do.
        @param retries: the scraper's retry policy.
        """
        if sharing is None:
            self.clock = Clock()
            self.http = FakePool()
            self.settings = AgentSettings(**settings)  # type: ignore[arg-type]
            self.slots = Slots(self.settings.max_concurrent_clients)
        else:
            self.clock, self.http = sharing.clock, sharing.http
            self.settings, self.slots = sharing.settings, sharing.slots
        self.frames: list[Frame] = []
        request = ScrapeRequest(
            scrape_id=7,
            path="p",
            query=query,
            accept=accept,
            accept_encoding=acceptEncoding,
            authorization=authorization,
            timeout_ms=timeoutMs,
            window_bytes=window,
        )
        self.scrape = Scrape(
            Scraper(self.settings, self.http, self.clock, observer, retries),  # type: ignore[arg-type]
            request,
            PathConfig("p", "p", url),
            self.frames.append,
            chunkBytes,
        )
        self.scrape.start(self.slots)

    def respond(self, response: FakeResponse) -> FakeResponse:
        response.deliver(self.http.requests[-1])
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


def refusing(run: Run, refuses: Callable[[Frame], bool]) -> list[Frame]:
    """
    Make the link refuse as too large the frames of C{run} that C{refuses}
    picks, as a peer with a small frame limit does; the frames it sends are
    returned.
    """
    sent = run.frames

    def send(frame: Frame) -> None:
        if refuses(frame):
            raise FrameTooLarge("too big")
        sent.append(frame)

    run.scrape.answer.send = send
    return sent


def firstFrame() -> Callable[[Frame], bool]:
    """
    Picks the first frame it is shown, and no other.
    """
    seen: list[Frame] = []

    def first(frame: Frame) -> bool:
        seen.append(frame)
        return len(seen) == 1

    return first


def uri(configured: str, query: str) -> bytes:
    """
    The URI a scrape of C{configured} with C{query} asks for.
    """
    target = Target.build(configured)
    host = target.fixed.split(b"\r\n")[0].removeprefix(b"Host: ")
    return target.origin.scheme.encode("ascii") + b"://" + host + target.requestTarget(query)


class TargetTests(SynchronousTestCase):
    def test_ports(self) -> None:
        """
        The scheme's port is the default only when no port is given: port 0
        is not port 80.
        """
        self.assertEqual(Target.build("http://h/m").origin.port, 80)
        self.assertEqual(Target.build("https://h/m").origin.port, 443)
        self.assertEqual(Target.build("http://h:0/m").origin.port, 0)
        self.assertEqual(Target.build("https://h:8443/m").origin.port, 8443)

    def test_queryAppended(self) -> None:
        self.assertEqual(uri("http://h:1/m", "a=1"), b"http://h:1/m?a=1")
        self.assertEqual(uri("http://h:1/m?x=y", "a=1"), b"http://h:1/m?x=y&a=1")
        self.assertEqual(uri("http://h:1/m", ""), b"http://h:1/m")

    def test_federateUrl(self) -> None:
        """
        prometheus-proxy's federate example, raw characters and all, becomes a
        valid request target; Prometheus' already encoded query is kept.
        """
        self.assertEqual(
            uri("http://prometheus:9090/federate?match[]={job=~'.*'}", "match%5B%5D=up"),
            b"http://prometheus:9090/federate?match%5B%5D=%7Bjob=~'.*'%7D&match%5B%5D=up",
        )

    def test_basicAuthLifted(self) -> None:
        target = Target.build("http://us%40er:p%3Ass@[::1]:9100/metrics")
        self.assertEqual(
            uri("http://us%40er:p%3Ass@[::1]:9100/metrics", ""), b"http://[::1]:9100/metrics"
        )
        self.assertEqual(target.origin, Origin("http", "::1", 9100))
        self.assertEqual(target.authorization, b"Basic " + base64.b64encode(b"us@er:p:ss"))

    def test_internationalisedHost(self) -> None:
        """
        A host name with non-ASCII letters is sent in its IDNA form, whatever
        its case, with its port and without its credentials.
        """
        self.assertEqual(
            uri("http://bücher.example/metrics", ""),
            b"http://xn--bcher-kva.example/metrics",
        )
        target = Target.build("https://u:p@BÜCHER.example:9100/m")
        self.assertEqual(
            uri("https://u:p@BÜCHER.example:9100/m", "a=1"),
            b"https://xn--bcher-kva.example:9100/m?a=1",
        )
        self.assertEqual(target.origin, Origin("https", "xn--bcher-kva.example", 9100))
        self.assertEqual(target.authorization, b"Basic " + base64.b64encode(b"u:p"))

    def test_asciiHostUntouched(self) -> None:
        """
        An ASCII host is not judged by IDNA's rules (which refuse C{_}).
        """
        self.assertEqual(uri("http://my_host:1/m", ""), b"http://my_host:1/m")

    def test_hostWithoutIDNAForm(self) -> None:
        error = self.assertRaises(InvalidRequest, Target.build, "http://☃.example:80/m")
        self.assertIn("target host ☃.example has no IDNA", str(error))
        self.assertIn("U+2603", str(error))

    def test_controlByteInHost(self) -> None:
        error = self.assertRaises(InvalidRequest, Target.build, "http://a\x01b:1/m")
        self.assertEqual(str(error), "target host a\\x01b:1 holds byte 0x01 at offset 1")

    def test_invalidQuery(self) -> None:
        """
        A query from the proxy with a byte a request cannot carry is refused,
        naming the byte and where it is.
        """
        for bad, what in [
            ("\x7f", "byte 0x7f"),
            ("\x00", "byte 0x00"),
            (" ", "byte 0x20"),
            ("\n", "byte 0x0a"),
            ("é", "non-ASCII character U+00E9"),
        ]:
            target = Target.build("http://h/m")
            error = self.assertRaises(InvalidRequest, target.requestTarget, "a=1" + bad)
            self.assertIn(f"the query string from the proxy holds {what} at offset 3", str(error))
        self.assertEqual(uri("http://h/m", "a=%7F~"), b"http://h/m?a=%7F~")

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

    def test_noFrameStartedWithoutCredit(self) -> None:
        """
        However much one read brings, no frame is started once the credit
        is spent, so the proxy never holds more than its window and one
        frame; the rest, and the last frame, wait for credit.
        """
        run = Run(window=4096, chunkBytes=1024)
        response = run.respond(FakeResponse())
        response.body(b"x" * 64 * 1024)
        self.assertEqual(len(run.frames), 4)
        self.assertTrue(response.producer.paused)
        response.end()
        self.assertEqual(len(run.frames), 4, "the last frame waits for credit")
        sent = 0
        while not run.scrape.done.called:
            run.scrape.credit(1024)
            sent += 1
            self.assertLess(sent, 100)
        self.assertEqual(run.body(), b"x" * 64 * 1024)
        self.assertTrue(run.last().scrape_chunk.last)

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
        assert run.scrape.fetch is not None
        self.assertLessEqual(run.scrape.fetch.received, 1024 * 1024 + 64 * 1024)

    def test_targetErrorStatus(self) -> None:
        run = Run()
        run.respond(FakeResponse(code=500))
        head = run.last().scrape_response
        self.assertEqual((head.outcome, head.status, head.last), (Outcome.SUCCESS, 500, True))
        self.assertIn("answered HTTP 500", head.reason)

    def test_unreachable(self) -> None:
        run = Run()
        run.http.requests[0].receiver.responseFailed("connection refused")
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

    def test_creditTimeoutNotTheTargets(self) -> None:
        """
        A deadline that passes while the answer waits for the proxy's credit
        (Prometheus reads slowly) does not blame the target.
        """
        run = Run(window=16 * 1024, chunkBytes=16 * 1024)
        response = run.respond(FakeResponse())
        response.body(b"x" * 40_000)
        run.clock.advance(10)
        chunk = run.last().scrape_chunk
        self.assertEqual((chunk.last, chunk.outcome), (True, Outcome.AGENT_ERROR))
        self.assertIn("Prometheus read it more slowly than the target sent it", chunk.reason)
        self.assertNotIn("did not answer", chunk.reason)

    def test_bodyBroken(self) -> None:
        run = Run()
        response = run.respond(FakeResponse())
        response.body(b"x" * 40_000)
        response.end("connection reset")
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
        recorder = Recorder()
        run = Run(
            acceptEncoding="gzip",
            filters=(MetricFilter("p", (), ("go_gc_.*",)),),
            observer=recorder,
        )
        self.assertIsNone(run.headers.getRawHeaders(b"Accept-Encoding"))
        response = run.respond(FakeResponse(length=len(body)))
        response.body(body[:50], body[50:])
        response.end()
        self.assertEqual(run.body(), b"# TYPE app_requests_total counter\napp_requests_total 7\n")
        self.assertEqual(run.frames[0].scrape_response.content_length, -1)
        self.assertEqual(recorder.filterings, [("p", 3)])

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
        sent = refusing(run, lambda frame: len(frame.SerializeToString()) > 1200)
        response = run.respond(FakeResponse(headers={b"Content-Type": [b"t/" + b"x" * 300]}))
        response.body(b"y" * 1500)
        (frame,) = sent
        self.assertEqual(frame.WhichOneof("kind"), "scrape_response")
        self.assertEqual(frame.scrape_response.outcome, Outcome.AGENT_ERROR)
        self.assertTrue(frame.scrape_response.last)

    def test_chunkLeavesRoomForTheHead(self) -> None:
        scraper = Scraper(AgentSettings(chunk_content_size_kbs=4096), FakePool(), Clock())  # type: ignore[arg-type]
        self.assertEqual(scraper.chunkBytes(1024 * 1024), 1024 * 1024 - FRAME_OVERHEAD)


class LinkEncodingTests(SynchronousTestCase):
    """
    C{agent.chunkContentSizeKbs} and C{agent.minGzipSizeBytes} as
    prometheus-proxy means them: gzip a plain body larger than the minimum,
    and chunk the bytes that go on the link.
    """

    TEXT = b'metric_name{label="value"} 1\n'

    def scrape(self, body: bytes, length: int = -1, **kwargs: object) -> tuple[Run, Recorder]:
        recorder = Recorder()
        run = Run(acceptEncoding="gzip", observer=recorder, **kwargs)  # type: ignore[arg-type]
        response = run.respond(FakeResponse(length=length))
        response.body(*(body[i : i + 4096] for i in range(0, len(body), 4096)))
        response.end()
        self.assertEqual(run.body(), body)
        return run, recorder

    def test_chunkSetFromTheSetting(self) -> None:
        """
        C{--chunk 64} makes chunks of 64 KiB on a link whose frames allow it.
        """
        settings = AgentSettings(chunk_content_size_kbs=64)
        scraper = Scraper(settings, FakePool(), Clock())  # type: ignore[arg-type]
        self.assertEqual(scraper.chunkBytes(1024 * 1024), 64 * 1024)

    def test_chunkCappedSaidOnce(self) -> None:
        """
        A C{--chunk} larger than the proxy's frame limit allows is cut down
        to what fits, with one warning naming the setting, however many
        links make the same cut; one that fits says nothing.
        """
        scraper = Scraper(
            AgentSettings(chunk_content_size_kbs=10000),
            FakePool(),  # type: ignore[arg-type]
            Clock(),
        )
        with capturedLogs() as events:
            self.assertEqual(scraper.chunkBytes(MiB), MiB - FRAME_OVERHEAD)
            self.assertEqual(scraper.chunkBytes(MiB), MiB - FRAME_OVERHEAD)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        text = formatEvent(warnings[0])
        self.assertIn("agent.chunkContentSizeKbs (--chunk) is 10000 KiB", text)
        self.assertIn(f"chunks are {MiB - FRAME_OVERHEAD} bytes", text)
        fits = Scraper(AgentSettings(), FakePool(), Clock())  # type: ignore[arg-type]
        with capturedLogs() as events:
            fits.chunkBytes(MiB)
        self.assertEqual(events, [])

    def test_compressedBodyInOneFrame(self) -> None:
        """
        A body whose gzip fits in one chunk is one frame, however many chunks
        its plain bytes would fill: chunks are of link bytes.
        """
        run, recorder = self.scrape(self.TEXT * 4000, chunkBytes=16 * 1024)
        self.assertEqual(len(run.frames), 1)
        self.assertEqual(run.frames[0].scrape_response.content_encoding, "gzip")
        self.assertEqual(recorder.sent, ["gzipped"])

    def test_chunksOfLinkBytes(self) -> None:
        """
        A compressed body larger than a chunk goes in chunks of the chunk
        size, the last one smaller.
        """
        body = Random(7).randbytes(100_000)  # incompressible
        run, recorder = self.scrape(body, chunkBytes=8 * 1024)
        head = run.frames[0].scrape_response
        self.assertEqual((head.content_encoding, len(head.body)), ("gzip", 8 * 1024))
        sizes = [len(f.scrape_chunk.data) for f in run.frames[1:]]
        self.assertTrue(all(size == 8 * 1024 for size in sizes[:-1]), sizes)
        self.assertLessEqual(sizes[-1], 8 * 1024)
        self.assertEqual(recorder.sent, ["chunked"])

    def test_minimumAboveAChunk(self) -> None:
        """
        A minimum larger than a chunk is honoured: a body of unknown length
        below it is sent plain, in chunks, and counted C{non-gzipped} as
        prometheus-proxy counts it; one above it is gzipped.
        """
        settings = {"chunkBytes": 16 * 1024, "min_gzip_size_bytes": 100_000}
        run, recorder = self.scrape(self.TEXT * 2000, **settings)
        self.assertEqual(run.frames[0].scrape_response.content_encoding, "")
        self.assertGreater(len(run.frames), 1)
        self.assertEqual(recorder.sent, ["non-gzipped"])
        run, recorder = self.scrape(self.TEXT * 4000, **settings)
        self.assertEqual(run.frames[0].scrape_response.content_encoding, "gzip")
        self.assertEqual(recorder.sent, ["gzipped"])

    def test_knownLengthDecidesAtTheHead(self) -> None:
        """
        A target's length decides at once, without holding the body: at or
        below the minimum plain, above it gzipped.
        """
        body = self.TEXT * 20
        run, _ = self.scrape(body, length=len(body), min_gzip_size_bytes=len(body))
        head = run.frames[0].scrape_response
        self.assertEqual((head.content_encoding, head.content_length), ("", len(body)))
        run, _ = self.scrape(body, length=len(body), min_gzip_size_bytes=len(body) - 1)
        head = run.frames[0].scrape_response
        self.assertEqual((head.content_encoding, head.content_length), ("gzip", -1))

    def test_gzipZeroCompressesAnyBody(self) -> None:
        run, _ = self.scrape(b"u", min_gzip_size_bytes=0)
        self.assertEqual(run.frames[0].scrape_response.content_encoding, "gzip")

    def test_notCompressedForAClientWithoutGzip(self) -> None:
        """
        Prometheus always takes gzip; a client that does not gets the body
        plain, chunked by the same size.
        """
        run = Run(chunkBytes=8 * 1024)
        response = run.respond(FakeResponse())
        response.body(self.TEXT * 1000)
        response.end()
        self.assertEqual(run.frames[0].scrape_response.content_encoding, "")
        self.assertEqual(len(run.frames[0].scrape_response.body), 8 * 1024)


class FailingPool:
    """
    A target pool with a bug: it raises instead of sending the request.
    """

    def request(self, origin: Origin, request: bytes, receiver: IResponseReceiver) -> None:
        raise RuntimeError("boom")


def traceback(events: Sequence[LogEvent]) -> bool:
    return any("log_failure" in e for e in events)


class ResultCountTests(SynchronousTestCase):
    """
    What the metrics hear of each scrape, as prometheus-proxy's agent counts
    it: every result once, by how it went over the link, and the scrape by
    whether the target answered.
    """

    def scrape(self, **kwargs: object) -> tuple[Run, Recorder]:
        recorder = Recorder()
        return Run(observer=recorder, **kwargs), recorder  # type: ignore[arg-type]

    def test_plainOneFrame(self) -> None:
        run, recorder = self.scrape()
        response = run.respond(FakeResponse())
        response.body(b"up 1\n")
        response.end()
        self.assertEqual((recorder.ended, recorder.sent), (["success"], ["non-gzipped"]))

    def test_targetGzipOneFrame(self) -> None:
        """
        A body the target gzipped itself travels gzipped, and counts so.
        """
        run, recorder = self.scrape(acceptEncoding="gzip")
        response = run.respond(FakeResponse(headers={b"Content-Encoding": [b"gzip"]}))
        response.body(gzip.compress(b"up 1\n"))
        response.end()
        self.assertEqual(recorder.sent, ["gzipped"])

    def test_chunkedCountedOnceAtTheEnd(self) -> None:
        """
        A result in several frames counts once, when its last frame goes:
        one cut off by its link is dropped instead, never both. A gzip body
        in several frames is C{chunked}, as prometheus-proxy counts one.
        """
        run, recorder = self.scrape(chunkBytes=1024, acceptEncoding="gzip")
        response = run.respond(FakeResponse())
        response.body(Random(3).randbytes(5000))
        self.assertEqual(recorder.sent, [])
        response.end()
        self.assertGreater(len(run.frames), 1)
        self.assertEqual(recorder.sent, ["chunked"])

    def test_plainSeveralFramesNonGzipped(self) -> None:
        """
        A plain body in several frames is C{non-gzipped}: prometheus-proxy
        sends a plain body whole and counts it so, whatever its size.
        """
        run, recorder = self.scrape(chunkBytes=1024)
        response = run.respond(FakeResponse())
        response.body(b"x" * 5000)
        response.end()
        self.assertGreater(len(run.frames), 1)
        self.assertEqual(recorder.sent, ["non-gzipped"])

    def test_nonSuccessCounted(self) -> None:
        """
        A target's non-2xx answer is an unsuccessful scrape, and a result.
        """
        run, recorder = self.scrape()
        run.respond(FakeResponse(code=500))
        self.assertEqual((recorder.ended, recorder.sent), (["unsuccessful"], ["non-gzipped"]))

    def test_tooLargeUnsuccessful(self) -> None:
        run, recorder = self.scrape(max_content_length_mbytes=1)
        run.respond(FakeResponse(length=2 * 1024 * 1024))
        self.assertEqual(run.last().scrape_response.outcome, Outcome.TOO_LARGE)
        self.assertEqual((recorder.ended, recorder.sent), (["unsuccessful"], ["non-gzipped"]))

    def test_unreachableFailed(self) -> None:
        """
        No answer from the target: timed, not counted as a scrape type (as
        prometheus-proxy's agent), but its result is sent and counted.
        """
        run, recorder = self.scrape()
        run.http.requests[0].receiver.responseFailed("connection refused")
        self.assertEqual((recorder.ended, recorder.sent), (["failed"], ["non-gzipped"]))

    def test_failureMidBodyChunked(self) -> None:
        run, recorder = self.scrape(chunkBytes=1024)
        response = run.respond(FakeResponse())
        response.body(b"x" * 3000)
        response.end("connection lost")
        self.assertEqual(run.last().scrape_chunk.last, True)
        # A failure is a result without a body to prometheus-proxy's agent.
        self.assertEqual((recorder.ended, recorder.sent), (["failed"], ["non-gzipped"]))


class RefusedAtOnceTests(SynchronousTestCase):
    """
    A scrape that cannot become a valid request is refused with AGENT_ERROR
    before it waits for anything, without a traceback and without
    contacting the target.
    """

    def assertRefused(self, run: Run, *fragments: str) -> str:
        (frame,) = run.frames
        head = frame.scrape_response
        self.assertEqual((head.outcome, head.last), (Outcome.AGENT_ERROR, True))
        for fragment in fragments:
            self.assertIn(fragment, head.reason)
        self.assertIn("the target was not contacted", head.reason)
        self.assertEqual(run.http.requests, [])
        self.successResultOf(run.scrape.done)
        self.assertEqual(run.clock.getDelayedCalls(), [])
        self.assertEqual(run.slots.tokens, run.slots.limit)
        return head.reason

    def test_unencodableHost(self) -> None:
        with capturedLogs() as events:
            run = Run(url="http://☃.example/metrics")
        self.assertRefused(run, "target host ☃.example has no IDNA")
        self.assertFalse(traceback(events))

    def test_invalidQuery(self) -> None:
        with capturedLogs() as events:
            run = Run(query="match[]=up\x7f")
        self.assertRefused(run, "byte 0x7f at offset 10")
        self.assertFalse(traceback(events))

    def test_invalidHeaders(self) -> None:
        """
        Forwarded header values must be latin-1 text without control bytes;
        the value itself (a credential, say) is not repeated.
        """
        reason = self.assertRefused(
            Run(authorization="Bearer s3cret\x00"), "Authorization header", "byte 0x00 at offset 13"
        )
        self.assertNotIn("s3cret", reason)
        self.assertRefused(Run(accept="text/plain€"), "Accept header", "U+20AC at offset 10")
        self.assertRefused(Run(acceptEncoding="gzip\r\n"), "Accept-Encoding header", "0x0d")

    def test_latin1HeaderAccepted(self) -> None:
        run = Run(accept="text/plain; q=0.9\tcharset=é")
        self.assertEqual(run.headers.getRawHeaders(b"Accept"), [b"text/plain; q=0.9\tcharset=\xe9"])

    def test_internationalisedHostScraped(self) -> None:
        run = Run(url="http://bücher.example/metrics")
        self.assertEqual(run.http.requests[0][0], b"http://xn--bcher-kva.example/metrics")
        response = run.respond(FakeResponse())
        response.body(b"up 1\n")
        response.end()
        self.assertEqual(run.body(), b"up 1\n")


class NoDroppedDeferredTests(SynchronousTestCase):
    """
    A bug anywhere on the scrape path fails that scrape at once with
    AGENT_ERROR (logged with its traceback, as a bug should be), frees its
    slot, and never shows up as a target timeout.
    """

    def assertAgentError(self, run: Run, fragment: str) -> None:
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        last = run.last()
        ending = last.scrape_response if last.HasField("scrape_response") else last.scrape_chunk
        self.assertEqual((ending.outcome, ending.last), (Outcome.AGENT_ERROR, True))
        self.assertIn(fragment, ending.reason)
        self.successResultOf(run.scrape.done)
        self.assertEqual(run.slots.tokens, run.slots.limit)
        self.assertEqual(run.clock.getDelayedCalls(), [])

    def test_requestRaises(self) -> None:
        run = Run(max_concurrent_clients=1)
        failing = Run(sharing=run)
        failing.scrape.scraper.fetcher.pool = FailingPool()  # type: ignore[assignment]
        # The second scrape waits behind the first, then meets the bug.
        self.assertEqual(failing.frames, [])
        run.respond(FakeResponse()).end()
        self.assertAgentError(failing, "agent error: boom")

    def test_bodyHandlingRaises(self) -> None:
        run = Run(chunkBytes=1000)
        response = run.respond(FakeResponse())

        def broken() -> None:
            raise RuntimeError("broken buffer")

        run.scrape.answer._sendWholeChunks = broken  # type: ignore[method-assign]
        response.body(b"x" * 5000)
        self.assertAgentError(run, "agent error: broken buffer")
        self.assertTrue(response.producer.stopped)

    def test_schemeNotSupported(self) -> None:
        run = Run(url="gopher://target.test/m")
        head = run.last().scrape_response
        self.assertEqual(head.outcome, Outcome.AGENT_ERROR)
        self.assertIn(
            "cannot request gopher://target.test/m: only http and https URLs", head.reason
        )
        self.assertIn("the target was not contacted", head.reason)
        self.assertNotIn("unreachable", head.reason)
        # The URL is named as in any other reason: without its credentials.
        run = Run(url="ftp://user:s3cret@target.test/m")
        head = run.last().scrape_response
        self.assertIn("cannot request ftp://", head.reason)
        self.assertNotIn("s3cret", head.reason)
        self.assertEqual(run.http.requests, [])


class SlotTests(SynchronousTestCase):
    """
    Scrapes beyond C{agent.http.maxConcurrentClients} wait for a slot; the
    wait counts against their deadline, and a scrape whose time ran out
    while it waited says so instead of blaming its target.
    """

    def setUp(self) -> None:
        self.first = Run(max_concurrent_clients=1)

    def test_manyExpiredHandedOverInALoop(self) -> None:
        """
        A slot handed to a queued scrape whose time ran out comes straight
        back and goes to the next: thousands of them do not recurse.
        """
        slots = Slots(1)
        slots.take(lambda: None)
        given: list[int] = []

        def expired(n: int) -> Callable[[], None]:
            def ready() -> None:
                given.append(n)
                slots.release()

            return ready

        for n in range(5000):
            slots.take(expired(n))
        slots.release()
        self.assertEqual(given, list(range(5000)))
        self.assertEqual((slots.tokens, list(slots.waiting)), (1, []))

    def test_waitedTooLong(self) -> None:
        second = Run(sharing=self.first, timeoutMs=5_000)
        self.assertTrue(second.scrape.queued)
        self.assertEqual(len(self.first.slots.waiting), 1)
        second.clock.advance(5)
        head = second.last().scrape_response
        self.assertEqual(head.outcome, Outcome.AGENT_ERROR)
        self.assertEqual(
            head.reason,
            "waited 5s for a free slot (agent.http.maxConcurrentClients = 1);"
            " the target http://target.test/metrics was not contacted",
        )
        self.assertEqual(list(self.first.slots.waiting), [], "it left the queue")
        self.assertFalse(second.scrape.queued)
        # The slot it no longer wants goes to nobody.
        self.first.respond(FakeResponse()).end()
        self.assertEqual(len(self.first.http.requests), 1)
        self.assertEqual(self.first.slots.tokens, 1)

    def test_slotFreeAsTimeRunsOut(self) -> None:
        """
        A slot freed at the waiting scrape's deadline is not used for a
        request that could only be cancelled at once.
        """
        second = Run(sharing=self.first)
        self.first.clock.advance(10)
        self.assertEqual(self.first.last().scrape_response.outcome, Outcome.TIMED_OUT)
        head = second.last().scrape_response
        self.assertEqual(head.outcome, Outcome.AGENT_ERROR)
        self.assertIn("was not contacted", head.reason)
        self.assertEqual(len(self.first.http.requests), 1)
        self.assertEqual(second.clock.getDelayedCalls(), [])

    def test_contactedAfterWaiting(self) -> None:
        """
        A scrape that got its slot late gives the target what is left of the
        deadline, and its timeout says how long the target really had.
        """
        second = Run(sharing=self.first)
        self.first.clock.advance(4)
        self.first.respond(FakeResponse()).end()
        self.assertEqual(
            second.headers.getRawHeaders(b"X-Prometheus-Scrape-Timeout-Seconds"), [b"6.000"]
        )
        second.clock.advance(6)
        head = second.last().scrape_response
        self.assertEqual(head.outcome, Outcome.TIMED_OUT)
        self.assertEqual(
            head.reason,
            "target http://target.test/metrics did not answer within 6s"
            " (the proxy's scrape deadline; the scrape first waited 4s for a free slot)",
        )

    def test_cancelledWhileQueued(self) -> None:
        second = Run(sharing=self.first)
        second.scrape.cancel()
        self.assertEqual(list(self.first.slots.waiting), [])
        self.assertEqual(second.frames, [])
        self.successResultOf(second.scrape.done)

    def test_slotHeldUntilTheEnd(self) -> None:
        response = self.first.respond(FakeResponse())
        self.assertEqual(self.first.slots.tokens, 0)
        response.end()
        self.assertEqual(self.first.slots.tokens, 1)

    def test_noDeadlineFromTheProxy(self) -> None:
        """
        A request without a deadline gets the agent's own, not zero.
        """
        run = Run(timeoutMs=0, scrape_timeout_secs=3.0)
        self.assertEqual(
            run.headers.getRawHeaders(b"X-Prometheus-Scrape-Timeout-Seconds"), [b"3.000"]
        )


class LinkLimitTests(SynchronousTestCase):
    def test_tinyPeerFrameLimit(self) -> None:
        """
        A proxy announcing a frame limit with no room for body bytes still
        gets chunks of at least L{MIN_CHUNK} bytes (which it refuses, failing
        each scrape) instead of an agent looping forever on empty chunks.
        """
        scraper = Scraper(AgentSettings(), FakePool(), Clock())  # type: ignore[arg-type]
        self.assertEqual(scraper.chunkBytes(100), MIN_CHUNK)

    def test_nothingFits(self) -> None:
        """
        When not even the failure fits in a frame, the scrape still ends, with
        one warning (rate-limited: a proxy can cause it every scrape) and
        nothing raised into the HTTP client.
        """
        run = Run(chunkBytes=MIN_CHUNK)

        def send(frame: Frame) -> None:
            raise FrameTooLarge("scrape_response frame of 99 bytes exceeds the peer's limit of 50")

        run.scrape.answer.send = send
        response = run.respond(FakeResponse())
        with capturedLogs() as events:
            response.body(b"x" * 5000)
        self.successResultOf(run.scrape.done)
        self.assertTrue(response.producer.stopped)
        self.assertEqual(
            [e["log_format"] for e in events if e["log_level"].name in ("warn", "error")],
            ["cannot tell the proxy that {path} failed: {error}"],
        )

    def test_chunkTooLarge(self) -> None:
        """
        A chunk the link refuses after the head went out fails the scrape
        in a last chunk.
        """
        run = Run(chunkBytes=1000)
        sent = refusing(
            run, lambda frame: frame.HasField("scrape_chunk") and len(frame.scrape_chunk.data) > 500
        )
        response = run.respond(FakeResponse())
        response.body(b"y" * 5000)
        self.assertEqual(len(sent), 2)
        chunk = run.last().scrape_chunk
        self.assertEqual((chunk.outcome, chunk.last), (Outcome.AGENT_ERROR, True))
        self.assertIn("answer too large for the link: too big", chunk.reason)
        self.assertTrue(response.producer.stopped)

    def test_headTooLargeSendsNothingMore(self) -> None:
        """
        After a refused head, the rest of a large read is not sent.
        """
        run = Run(chunkBytes=1000)
        sent = refusing(run, firstFrame())
        run.respond(FakeResponse()).body(b"z" * 10_500)
        (frame,) = sent
        self.assertEqual(frame.scrape_response.outcome, Outcome.AGENT_ERROR)

    def test_lastHeadRefused(self) -> None:
        """
        A whole answer whose one head the link refuses ends once, as a
        failure.
        """
        recorder = Recorder()
        run = Run(observer=recorder)
        sent = refusing(run, firstFrame())
        response = run.respond(FakeResponse())
        response.body(b"up 1\n")
        response.end()
        (frame,) = sent
        self.assertEqual(frame.scrape_response.outcome, Outcome.AGENT_ERROR)
        self.assertEqual(recorder.ended, ["failed"])
        self.assertEqual(recorder.sent, ["non-gzipped"])
        self.successResultOf(run.scrape.done)

    def test_oneReadManyChunks(self) -> None:
        """
        One large read becomes whole chunks in order, the remainder waiting
        for more or for the end.
        """
        body = bytes(range(256)) * 41
        run = Run(chunkBytes=1000)
        response = run.respond(FakeResponse())
        response.body(body)
        self.assertEqual(len(run.frames), 10)
        self.assertTrue(all(len(f.scrape_chunk.data) == 1000 for f in run.frames[1:]))
        response.end()
        self.assertEqual(run.body(), body)
        self.assertEqual(len(run.last().scrape_chunk.data), len(body) % 1000)


@implementer(IPushProducer)
class _Big(Protocol):
    """
    A loopback target answering any request with L{BIG} bytes, written as
    fast as its connection takes them.
    """

    PIECE = b"x" * (64 * 1024)

    def dataReceived(self, data: bytes) -> None:
        transport = cast(IConsumer, self.transport)
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
        self.sent = 0
        transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        transport = cast(IConsumer, self.transport)
        self.paused = False
        while not self.paused and self.sent < BIG:
            self.sent += len(self.PIECE)
            transport.write(self.PIECE)
        if self.sent >= BIG:
            transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True


BIG = 50 * 1024 * 1024


class LoopbackTests(TestCase):
    """
    A scrape of a real target over 127.0.0.1.
    """

    timeout = 60

    async def test_shutdownWhileDiscarding(self) -> None:
        """
        A scrape whose target answered 500 with a body that keeps coming,
        cancelled as the link goes, then the pool closed as the agent stops:
        nothing is left on the reactor (trial's dirty-reactor check), and
        the same with the pool closed first.
        """

        class Slow500(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(
                    b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"e" * 100
                )

        endpoints = await servedOnLoopback(self, Slow500)
        for cancelFirst in [True, False]:
            pool = TargetPool(reactor, endpoints, 4)
            scraper = Scraper(AgentSettings(), pool, reactor)
            frames: list[Frame] = []
            scrape = Scrape(
                scraper,
                ScrapeRequest(scrape_id=1, timeout_ms=5000),
                PathConfig("n", "p", "http://target.example/metrics"),
                frames.append,
                65536,
            )
            scrape.start(Slots(4))
            await scrape.done
            self.assertEqual(frames[-1].scrape_response.status, 500)
            if cancelFirst:
                scrape.cancel()
            await pool.closeCachedConnections()
            self.assertEqual(pool.draining, set())

    async def test_largeBodyWithinCredit(self) -> None:
        """
        A 50 MB body streams through a 256 KiB credit window: the target's
        connection is paused while the proxy has no credit, so the agent
        grows by far less than the body.
        """
        endpoints = await servedOnLoopback(self, _Big)
        pool = TargetPool(reactor, endpoints, 2)
        self.addCleanup(pool.closeCachedConnections)
        scraper = Scraper(AgentSettings(max_content_length_mbytes=64), pool, reactor)
        before = rss()
        peak = [0]
        frames: list[Frame] = []
        received = [0]

        def send(frame: Frame) -> None:
            data = (
                frame.scrape_response.body
                if frame.HasField("scrape_response")
                else frame.scrape_chunk.data
            )
            received[0] += len(data)
            if len(frames) % 64 == 0:
                peak[0] = max(peak[0], rss() - before)
            frames.append(Frame(scrape_chunk=ScrapeChunk(last=frame.scrape_chunk.last)))
            # Prometheus reads it, more slowly than the target sends, and the
            # proxy gives the credit back.
            reactor.callLater(0.01, scrape.credit, len(data))

        scrape = Scrape(
            scraper,
            ScrapeRequest(scrape_id=1, path="p", timeout_ms=50_000, window_bytes=256 * 1024),
            PathConfig("p", "p", "http://target.example/metrics"),
            send,
            64 * 1024,
        )
        scrape.start(Slots(1))
        await scrape.done
        # The last credits, given back after the end, are ignored.
        await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(received[0], BIG)
        self.assertTrue(frames[-1].scrape_chunk.last)
        self.assertLess(peak[0], 20 * 1024 * 1024)


class FetchOverTheClientTests(SynchronousTestCase):
    """
    Scrapes through the real target client, on in-memory connections.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = MemoryEndpoint()
        self.pool = TargetPool(self.clock, lambda origin: self.endpoint, 2)
        self.scraper = Scraper(AgentSettings(max_content_length_mbytes=1), self.pool, self.clock)
        self.slots = Slots(4)

    def scrape(self) -> list[Frame]:
        frames: list[Frame] = []
        self.last = Scrape(
            self.scraper,
            ScrapeRequest(scrape_id=1, path="p", timeout_ms=5000),
            PathConfig("p", "p", "http://target.test/metrics"),
            frames.append,
            32 * 1024,
        )
        self.last.start(self.slots)
        return frames

    def test_noReasonPhrase(self) -> None:
        """
        C{HTTP/1.1 200} without a reason phrase is scraped like any answer.
        """
        frames = self.scrape()
        self.answer(b"HTTP/1.1 200\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nup 1\n")
        (frame,) = frames
        head = frame.scrape_response
        self.assertEqual((head.outcome, head.status, head.last), (Outcome.SUCCESS, 200, True))
        self.assertEqual(head.body, b"up 1\n")

    def test_noContentHasLengthZero(self) -> None:
        """
        A 204 goes to the proxy with length 0, whatever it declared, so the
        proxy does not wait for bytes that never come.
        """
        for answer in [
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        ]:
            frames = self.scrape()
            self.answer(answer)
            head = frames[0].scrape_response
            self.assertEqual((head.status, head.content_length, head.body), (204, 0, b""))
            self.assertTrue(frames[-1].scrape_response.last or frames[-1].scrape_chunk.last)

    def test_invalidStatusIsTheTargets(self) -> None:
        frames = self.scrape()
        self.answer(b"HTTP/1.1 700 Odd\r\nContent-Length: 0\r\n\r\n")
        head = frames[-1].scrape_response
        self.assertEqual(head.outcome, Outcome.UNREACHABLE)
        self.assertIn(
            "target http://target.test/metrics unreachable: sent an invalid HTTP status 700",
            head.reason,
        )

    def test_clientBugIsTheAgents(self) -> None:
        """
        A bug in the client's own code fails the scrape with AGENT_ERROR,
        logged once with its traceback; nothing escapes into the reactor.
        """
        frames = self.scrape()
        protocol = self.endpoint.protocols[-1]

        def broken(name: bytes, value: bytes) -> None:
            raise ZeroDivisionError("ours")

        protocol.on_header = broken  # type: ignore[method-assign]
        protocol._parser = httptools.HttpResponseParser(protocol)
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        head = frames[-1].scrape_response
        self.assertEqual(head.outcome, Outcome.AGENT_ERROR)
        self.assertIn("agent error: ours", head.reason)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(self.endpoint.transports[-1].disconnected)

    def test_cancelledWhileDiscarding(self) -> None:
        """
        A scrape cancelled while its unwanted body is read (the link went
        away) drops the connection and leaves no timer.
        """
        self.scrape()
        self.answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\neee")
        self.assertTrue(self.last.done.called)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.last.cancel()
        self.assertTrue(self.endpoint.transports[-1].disconnected)
        self.endpoint.protocols[-1].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.pool._idle, {})

    def test_closedPoolTakesNothingBack(self) -> None:
        """
        Closing the pool stops the reading of unwanted bodies; a body that
        ends afterwards does not put its connection back.
        """
        self.scrape()
        self.answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nee")
        closing = self.pool.closeCachedConnections()
        self.assertTrue(self.endpoint.transports[-1].disconnected)
        self.assertNoResult(closing)
        self.endpoint.protocols[-1].connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closing)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.scrape()
        self.answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nee")
        self.assertEqual(self.pool._idle, {})
        self.assertTrue(self.endpoint.transports[-1].disconnecting)

    def answer(self, data: bytes) -> None:
        self.endpoint.protocols[-1].dataReceived(data)

    def test_errorStatusReusesTheConnection(self) -> None:
        """
        A non-2xx answer is a head with its status; its small body is read
        so that the connection serves the next scrape.
        """
        frames = self.scrape()
        self.clock.advance(1)
        self.answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\n")
        (frame,) = frames
        head = frame.scrape_response
        self.assertEqual((head.outcome, head.status, head.last), (Outcome.SUCCESS, 503, True))
        self.assertIn("answered HTTP 503 Busy", head.reason)
        self.answer(b"busy")
        # Only the idle connection's expiry is left: not the body's deadline.
        self.assertEqual(
            [cast(DelayedCall, c).func for c in self.clock.getDelayedCalls()], [self.pool.close]
        )
        self.scrape()
        self.assertEqual(len(self.endpoint.protocols), 1)

    def test_unwantedBodyWithinTheDeadline(self) -> None:
        """
        The body of a non-2xx answer is read after the scrape ended, but
        not past its deadline.
        """
        self.scrape()
        self.clock.advance(1)
        self.answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbu")
        self.clock.advance(3.9)
        self.assertFalse(self.endpoint.transports[-1].disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.endpoint.transports[-1].disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hostilePhrase(self) -> None:
        """
        A reason phrase with control bytes and of any length is escaped and
        cut in the reason.
        """
        frames = self.scrape()
        self.answer(b"HTTP/1.1 500 " + b"\x7f" + b"x" * 5000 + b"\r\nContent-Length: 0\r\n\r\n")
        reason = frames[-1].scrape_response.reason
        self.assertIn("answered HTTP 500 \\x7fxxx", reason)
        self.assertLess(len(reason), 300)

    def test_brokenAfterTheHead(self) -> None:
        frames = self.scrape()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
        self.endpoint.protocols[-1].connectionLost(Failure(ConnectionDone()))
        (frame,) = frames
        self.assertEqual(frame.scrape_response.outcome, Outcome.UNREACHABLE)
        self.assertIn(
            "broke off the body after 0 bytes: the connection closed", frame.scrape_response.reason
        )

    def test_declaredTooLargeDropsTheConnection(self) -> None:
        frames = self.scrape()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n")
        self.assertEqual(frames[-1].scrape_response.outcome, Outcome.TOO_LARGE)
        self.assertTrue(self.endpoint.transports[-1].disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_smugglingRefused(self) -> None:
        frames = self.scrape()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        reason = frames[-1].scrape_response.reason
        self.assertEqual(frames[-1].scrape_response.outcome, Outcome.UNREACHABLE)
        self.assertIn("target http://target.test/metrics unreachable: sent an invalid HTTP", reason)
        self.assertTrue(self.endpoint.transports[-1].disconnecting)

    def test_timeoutDropsTheConnection(self) -> None:
        frames = self.scrape()
        self.clock.advance(5)
        self.assertEqual(frames[-1].scrape_response.outcome, Outcome.TIMED_OUT)
        self.assertTrue(self.endpoint.transports[-1].disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
