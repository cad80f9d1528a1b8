"""
L{promtwist.proxy.grpcanswers} against a lying or hostile upstream agent,
on real C{proxy_service} messages: each refusal names what was wrong and
costs only its own scrape; results for scrapes not awaited from the sender
reach nobody. And upstream's results through the scrape port and the relay,
byte for byte, gzip handled as any agent's.
"""

from __future__ import annotations

import gzip
import random
import zlib
from dataclasses import dataclass, field

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.protocol.promtwist_pb2 import Frame
from promtwist.proxy.answers import ScrapeFailed
from promtwist.proxy.grpcanswers import ChunkedResults, Transfers, answerOf
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.stream import AnswerHead, ScrapeStream
from promtwist.test.test_relay import FakeLink, Proxy, response, transfers
from promtwist.test.upstreamchunks import chunkedResult, transfersOf

AGENT = "a3f9"
OTHER = "77c1"
LIMIT = 5 * 1024 * 1024
ABANDONED = "Chunked transfer abandoned: stream terminated before summary received"


@dataclass(eq=False)
class Agent:
    """
    A gRPC agent with scrapes in flight, as grpcagent's link is one: a
    StreamLink whose streams' window is the transfer cap, and an
    AnsweringAgent.
    """

    name: str = "node-1"
    source: str = "identity test from 192.0.2.7"
    MAX_LENGTH: int = 4 * 1024 * 1024
    streams: dict[int, ScrapeStream] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    abandoned: int = 0
    violations: list[str] = field(default_factory=list)
    transfers: Transfers | None = None

    @property
    def metrics(self) -> Agent:
        return self

    def chunkInvalid(self, stage: str) -> None:
        self.invalid.append(stage)

    def transferAbandoned(self) -> None:
        self.abandoned += 1

    def issue(self, scrapeId: int) -> Scrape:
        stream = self.streams[scrapeId] = ScrapeStream(self, scrapeId, LIMIT)
        return Scrape(stream)

    def forget(self, scrapeId: int) -> None:
        self.streams.pop(scrapeId, None)
        if self.transfers is not None:
            self.transfers.purge(scrapeId)

    def sendIfConnected(self, frame: Frame) -> None:
        pass

    def violation(self, why: str) -> None:
        self.violations.append(why)

    def stream(self, scrapeId: int) -> ScrapeStream | None:
        return self.streams.get(scrapeId)

    def heard(self) -> None:
        pass


@dataclass(eq=False)
class Scrape:
    """
    The relay's side of one stream: its head, body and ending.
    """

    stream: ScrapeStream
    heads: list[AnswerHead] = field(default_factory=list)
    failures: list[ScrapeFailed] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    done: bool = False
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.stream.head.addCallbacks(self._head, self._failed)

    def _head(self, head: AnswerHead) -> None:
        self.heads.append(head)
        self.stream.deliverBody(self)

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            # The relay's side stopped it before any head.
            self.cancelled = True
            return
        failure.trap(ScrapeFailed)
        assert isinstance(failure.value, ScrapeFailed)
        self.failures.append(failure.value)

    def write(self, data: bytes) -> None:
        self.body += data

    def bodyDone(self) -> None:
        self.done = True

    def bodyFailed(self, failure: ScrapeFailed) -> None:
        self.failures.append(failure)

    @property
    def failure(self) -> ScrapeFailed:
        (failure,) = self.failures
        return failure

    @property
    def untouched(self) -> bool:
        return not (self.heads or self.failures or self.body)


def chunked(scrapeId: int, payload: bytes, agentId: str = AGENT) -> list[pb.ChunkedScrapeResponse]:
    """
    A chunked result as upstream's agent sends it by default: chunks of
    C{agent.chunkContentSizeKbs} (32 KiB).
    """
    return chunkedResult(scrapeId, payload, agentId, 32768, "text/plain; version=0.0.4")


# Varied enough to need several 32 KiB chunks once gzipped.
METRICS = b"".join(b'm{i="%d"} %d\n' % (i, zlib.crc32(b"%d" % i)) for i in range(20000))
ZIPPED = gzip.compress(METRICS)


class Attacks(SynchronousTestCase):
    """
    An agent's chunked sequences that upstream's agent never sends.
    """

    def setUp(self) -> None:
        self.agent = Agent()
        self.scrape = self.agent.issue(7)
        self.dropped: list[int] = []
        self.transfers = self.agent.transfers = transfersOf(self.agent, LIMIT)
        self.results = self.call()
        self.messages = chunked(7, ZIPPED)
        self.assertGreater(len(self.messages), 4)

    def call(self) -> ChunkedResults:
        """
        Another writeChunkedResponsesToProxy call of the agent's.
        """
        return ChunkedResults(
            lambda agentId: self.agent if agentId == AGENT else None,
            self.transfers,
            self.dropped.append,
        )

    def feed(self, messages: list[pb.ChunkedScrapeResponse]) -> None:
        for message in messages:
            self.results.received(message)

    def assertNothingHeld(self) -> None:
        self.assertEqual((len(self.transfers), self.transfers.budget.held), (0, 0))

    def assertRefused(self, stage: str, text: str) -> None:
        failure = self.scrape.failure
        self.assertEqual(failure.status, 502)
        self.assertIn(text, failure.reason)
        self.assertIn("node-1", failure.reason)
        self.assertEqual(self.agent.invalid, [stage])
        self.assertEqual(self.scrape.body, b"")

    def test_whole(self) -> None:
        """
        Upstream's own sequence gives the gzip byte for byte.
        """
        self.feed(self.messages)
        (head,) = self.scrape.heads
        self.assertEqual(
            (head.status, head.contentType, head.contentEncoding, head.size),
            (200, "text/plain; version=0.0.4", "gzip", len(ZIPPED)),
        )
        self.assertEqual(bytes(self.scrape.body), ZIPPED)
        self.assertTrue(self.scrape.done)
        self.assertEqual((self.agent.invalid, self.dropped), ([], []))

    def test_byteCountWithinChunk(self) -> None:
        """
        Only C{chunk_byte_count} of a chunk's bytes count.
        """
        chunk = self.messages[1].chunk
        chunk.chunk_bytes = chunk.chunk_bytes + b"padding"
        self.feed(self.messages)
        self.assertEqual(bytes(self.scrape.body), ZIPPED)

    def test_perChunkChecksum(self) -> None:
        """
        The checksum runs over all the bytes so far: one over the chunk
        alone fails.
        """
        chunk = self.messages[2].chunk
        chunk.chunk_checksum = zlib.crc32(chunk.chunk_bytes)
        self.feed(self.messages)
        self.assertRefused("chunk", "Chunk validation failed: checksum mismatch at chunk 2")

    def test_signedChecksum(self) -> None:
        """
        CRC32 is unsigned: the same value read as a signed 32-bit number
        fails.
        """
        chunk = self.messages[1].chunk
        if chunk.chunk_checksum < 2**31:
            chunk.chunk_checksum += 2**31
        chunk.chunk_checksum -= 2**32
        self.feed(self.messages)
        self.assertRefused("chunk", "checksum mismatch at chunk 1")

    def test_repeatedChunk(self) -> None:
        self.feed(self.messages[:2] + self.messages[1:])
        self.assertRefused("chunk", "chunk 1 came where chunk 2 was due")

    def test_skippedChunk(self) -> None:
        self.feed(self.messages[:2] + self.messages[3:])
        self.assertRefused("chunk", "chunk 3 came where chunk 2 was due")

    def test_zeroOrdinal(self) -> None:
        self.messages[1].chunk.chunk_count = 0
        self.feed(self.messages)
        self.assertRefused("chunk", "chunk 0 came where chunk 1 was due")

    def test_hugeByteCount(self) -> None:
        """
        A byte count past the chunk's bytes fails, and sizes nothing.
        """
        self.messages[1].chunk.chunk_byte_count = 2**31 - 1
        self.feed(self.messages)
        self.assertRefused("chunk", f"chunk byte count {2**31 - 1} is not within")

    def test_negativeByteCount(self) -> None:
        self.messages[1].chunk.chunk_byte_count = -1
        self.feed(self.messages)
        self.assertRefused("chunk", "chunk byte count -1 is not within")

    def test_overCap(self) -> None:
        """
        More zipped bytes than the cap fail at the chunk past it.
        """
        results = ChunkedResults(
            lambda agentId: self.agent, transfersOf(self.agent, 40000), self.dropped.append
        )
        for message in self.messages:
            results.received(message)
        self.assertRefused("chunk", "more than 40000 zipped bytes")

    def test_summaryMismatch(self) -> None:
        """
        Each of the summary's totals is checked.
        """
        for name in ("summary_chunk_count", "summary_byte_count", "summary_checksum"):
            with self.subTest(name):
                self.setUp()
                summary = self.messages[-1].summary
                setattr(summary, name, getattr(summary, name) + 1)
                self.feed(self.messages)
                self.assertRefused("summary", "Summary validation failed")

    def test_headerTwice(self) -> None:
        """
        A second header mid-transfer fails it; what follows belongs to no
        transfer and is dropped.
        """
        self.feed(self.messages[:3] + self.messages[:1] + self.messages[1:])
        self.assertRefused("chunk", "Chunk validation failed: a second header")
        self.assertEqual(len(self.dropped), len(self.messages) - 1)

    def test_chunkBeforeHeader(self) -> None:
        """
        Chunks and a summary before any header are dropped; the scrape can
        still be answered by a proper transfer.
        """
        self.feed(self.messages[1:])
        self.assertEqual(self.dropped, [7] * (len(self.messages) - 1))
        self.assertTrue(self.scrape.untouched)
        self.feed(self.messages)
        self.assertTrue(self.scrape.done)

    def test_notIssued(self) -> None:
        """
        A whole transfer for an id never issued, or naming another agent
        (whose scrape it is), is dropped; neither scrape gets anything.
        """
        other = Agent(name="node-2")
        theirs = other.issue(8)
        self.feed(chunked(8, ZIPPED))
        self.feed(chunked(8, ZIPPED, agentId=OTHER))
        self.feed(chunked(7, ZIPPED, agentId=OTHER))
        self.assertEqual(len(self.dropped), 3 * len(self.messages))
        self.assertTrue(self.scrape.untouched)
        self.assertTrue(theirs.untouched)
        self.assertEqual(self.agent.invalid, [])

    def test_oneTransferPerScrape(self) -> None:
        """
        A header for a scrape already transferring, on another call (an
        agent not bound to a connection may use any), is refused and counted,
        and the agent that sent two gets neither: one scrape's memory does
        not multiply by the calls it is sent on.
        """
        calls = [self.call() for _ in range(3)]
        for call in calls:
            for message in self.messages[:3]:
                call.received(message)
        self.assertRefused("chunk", "Chunk validation failed: a second header")
        self.assertNothingHeld()
        for call in calls:
            call.ended()
        self.assertEqual(self.agent.abandoned, 0)

    def test_purgedWhenItsScrapeEnds(self) -> None:
        """
        A transfer is purged the moment its scrape ends, whatever its call
        does after: a call that keeps transfers open for scrapes that timed
        out holds nothing for them.
        """
        self.feed(self.messages[:3])
        self.assertGreater(self.transfers.budget.held, 0)
        self.scrape.stream.stop()
        self.assertNothingHeld()
        self.results.ended()
        self.assertEqual((self.agent.invalid, self.agent.abandoned), ([], 0))

    def test_budget(self) -> None:
        """
        All transfers' bytes together are held within the proxy's budget,
        an agent already holding some within half of it: a chunk past that
        fails its scrape with 503 naming the setting, and gives back what
        its transfer held.
        """
        self.transfers = self.agent.transfers = transfersOf(
            self.agent, LIMIT, budget=3 * len(ZIPPED)
        )
        self.results = self.call()
        failure = self.twoTransfers(self.agent.issue(8), chunked(8, ZIPPED))
        self.assertIn("bytes of chunked results", failure.reason)
        self.assertIn("the test's budget", failure.reason)

    def twoTransfers(
        self, second: Scrape, messages: list[pb.ChunkedScrapeResponse]
    ) -> ScrapeFailed:
        """
        Feed this test's transfer and C{messages} (C{second}'s) side by
        side: one of the two fails with 503, the other is answered whole,
        and nothing stays held. Return the failure.
        """
        for pair in zip(self.messages, messages, strict=True):
            self.feed(list(pair))
        (failure,) = self.scrape.failures + second.failures
        self.assertEqual(failure.status, 503)
        self.assertEqual(bytes((second if self.scrape.failures else self.scrape).body), ZIPPED)
        self.assertNothingHeld()
        return failure

    def test_budgetPerSource(self) -> None:
        """
        The budget is shared by source, not by agent: a token holder's
        second agent id on the same address takes from the same share, so
        making agent ids does not multiply what one source may hold.
        """
        self.transfers = self.agent.transfers = transfersOf(
            self.agent, LIMIT, budget=3 * len(ZIPPED)
        )
        other = Agent(name="node-2", transfers=self.transfers)
        agents = {AGENT: self.agent, OTHER: other}
        self.results = ChunkedResults(agents.get, self.transfers, self.dropped.append)
        failure = self.twoTransfers(other.issue(8), chunked(8, ZIPPED, agentId=OTHER))
        self.assertIn("one source's share", failure.reason)
        self.assertIn("identity test from 192.0.2.7", failure.reason)

    def test_empty(self) -> None:
        """
        A message with nothing set changes nothing.
        """
        self.feed([pb.ChunkedScrapeResponse(), *self.messages])
        self.assertTrue(self.scrape.done)

    def test_negativeStatus(self) -> None:
        """
        A negative status in a header (int32 upstream, unsigned in
        promtwist's message) fails the scrape by name, not with a traceback
        that ends the agent's result stream.
        """
        self.messages[0].header.header_status_code = -200
        self.feed(self.messages)
        self.assertEqual(self.scrape.failure.status, 502)
        self.assertIn("status -200", self.scrape.failure.reason)

    def test_interleaved(self) -> None:
        """
        Two transfers on one call, interleaved, each get their own bytes.
        """
        second = self.agent.issue(8)
        for pair in zip(self.messages, chunked(8, ZIPPED[::-1]), strict=True):
            self.feed(list(pair))
        self.assertEqual(bytes(self.scrape.body), ZIPPED)
        self.assertEqual(bytes(second.body), ZIPPED[::-1])

    def test_abandoned(self) -> None:
        """
        The call ending mid-transfer fails that scrape with upstream's
        reason; a finished transfer is not counted.
        """
        done = self.agent.issue(9)
        self.feed(chunked(9, b"x" * 10))
        self.feed(self.messages[:3])
        self.results.ended()
        self.assertEqual(self.scrape.failure.status, 502)
        self.assertIn(ABANDONED, self.scrape.failure.reason)
        self.assertEqual(self.agent.abandoned, 1)
        self.assertTrue(done.done)

    def test_prometheusGaveUp(self) -> None:
        """
        Once the scrape is over (Prometheus left, the deadline passed), the
        rest of its transfer is dropped, not held to its summary (upstream's
        open wart: it buffers up to 5 MiB for nobody).
        """
        self.feed(self.messages[:2])
        self.scrape.stream.stop()
        self.assertTrue(self.scrape.cancelled)
        self.feed(self.messages[2:])
        self.results.ended()
        self.assertEqual(self.dropped, [7] * (len(self.messages) - 2))
        self.assertEqual((self.agent.invalid, self.agent.abandoned), ([], 0))


class WholeResults(SynchronousTestCase):
    """
    C{writeResponsesToProxy}'s results that upstream's agent never sends.
    """

    def test_negativeStatus(self) -> None:
        """
        A negative status is an answer naming it, not a ValueError.
        """
        answer = answerOf("node-1", pb.ScrapeResponse(status_code=-1, failure_reason="x"))
        self.assertEqual(answer.status, 502)
        self.assertIn("status -1", answer.reason)

    def test_zippedMarkedTextSent(self) -> None:
        """
        Marked zipped and sent as text: refused naming the contradiction,
        not passed on as an empty gzip body.
        """
        answer = answerOf(
            "node-1",
            pb.ScrapeResponse(
                valid_response=True, status_code=200, zipped=True, content_as_text="up 1\n"
            ),
        )
        self.assertEqual(answer.status, 502)
        self.assertIn("marked zipped", answer.reason)

    def test_invalid2xxKeepsReason(self) -> None:
        """
        A 2xx the agent calls invalid is a 502 that says so.
        """
        answer = answerOf("node-1", pb.ScrapeResponse(status_code=200, content_as_text="up 1\n"))
        self.assertEqual((answer.status, answer.body), (502, b""))
        self.assertIn("marked its HTTP 200 result invalid", answer.reason)


@dataclass(eq=False)
class GrpcLikeLink(FakeLink):
    """
    A fake link whose streams, as a gRPC agent's, have the transfer cap as
    their window (upstream's agent knows nothing of credit).
    """

    source: str = "identity test from 192.0.2.7"

    def scrape(self, call: ScrapeCall) -> ScrapeStream:
        self.calls.append(call)
        stream = ScrapeStream(self, len(self.calls), LIMIT)
        self.streams[stream.scrapeId] = stream
        return stream

    def stream(self, scrapeId: int) -> ScrapeStream | None:
        return self.streams.get(scrapeId)

    def heard(self) -> None:
        pass


class ThroughTheRelay(SynchronousTestCase):
    """
    Upstream's results through the scrape port and the relay.
    """

    def setUp(self) -> None:
        self.proxy = Proxy()
        self.link = GrpcLikeLink(AGENT, agentId=AGENT)
        self.proxy.registry.addAgent(self.link)
        self.proxy.registry.registerPath(self.link, "p", "p", {})
        self.results = ChunkedResults(
            lambda agentId: self.link if agentId == AGENT else None,
            transfersOf(self.link.metrics, LIMIT),
            lambda scrapeId: None,
        )

    def send(self, payload: bytes) -> list[pb.ChunkedScrapeResponse]:
        (scrapeId,) = self.link.streams
        return chunked(scrapeId, payload)

    def feed(self, messages: list[pb.ChunkedScrapeResponse]) -> None:
        for message in messages:
            self.results.received(message)

    def test_inflated(self) -> None:
        """
        For a Prometheus that takes no gzip, the result is inflated, byte for
        byte the target's, with its content type.
        """
        conn = self.proxy.get()
        self.feed(self.send(ZIPPED))
        r = response(conn)
        self.assertEqual((r.status, r.body, r.complete), (200, METRICS, True))
        self.assertEqual(r.headers[b"content-type"], b"text/plain; version=0.0.4")

    def test_passedOnZipped(self) -> None:
        """
        For one that takes gzip, the agent's gzip goes on as it is, with
        its length.
        """
        conn = self.proxy.get(accept_encoding="gzip")
        self.feed(self.send(ZIPPED))
        r = response(conn)
        self.assertEqual((r.status, r.body), (200, ZIPPED))
        self.assertEqual(r.headers[b"content-encoding"], b"gzip")
        self.assertEqual(r.headers[b"content-length"], b"%d" % len(ZIPPED))

    def test_large(self) -> None:
        """
        A result of megabytes, past the native link's credit window, is no
        violation: the agent cannot know of credit.
        """
        payload = gzip.compress(random.Random(13).randbytes(3 * 1024 * 1024), 1)
        self.assertGreater(len(payload), 2 * 1024 * 1024)
        conn = self.proxy.get(accept_encoding="gzip")
        self.feed(self.send(payload))
        r = response(conn)
        self.assertEqual((r.status, r.body), (200, payload))
        self.assertEqual(self.link.violations, [])

    def test_bomb(self) -> None:
        """
        A result that inflates past proxy.internal.maxUnzippedContentSizeMBytes
        costs one 413, not the memory.
        """
        conn = self.proxy.get()
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        bomb = compressor.compress(b"\0" * (50 * 1024 * 1024)) + compressor.flush()
        self.feed(self.send(bomb))
        r = response(conn)
        self.assertEqual(r.status, 413)
        self.assertIn(b"maxUnzippedContentSizeMBytes", r.body)

    def test_badChunk(self) -> None:
        """
        A chunk that fails validation is Prometheus's 502 with upstream's
        reason, counted at the chunk stage.
        """
        conn = self.proxy.get(accept_encoding="gzip")
        messages = self.send(ZIPPED)
        messages[3].chunk.chunk_checksum += 1
        self.feed(messages)
        r = response(conn)
        self.assertEqual(r.status, 502)
        self.assertIn(b"Chunk validation failed: checksum mismatch at chunk 3", r.body)
        self.assertEqual(transfers(self.link), ({"chunk": 1}, 0))
        self.assertEqual(self.proxy.inFlight, 0)

    def test_abandoned(self) -> None:
        """
        The call ending before the summary is a 502 with upstream's reason,
        counted as abandoned.
        """
        conn = self.proxy.get()
        self.feed(self.send(ZIPPED)[:3])
        self.results.ended()
        r = response(conn)
        self.assertEqual(r.status, 502)
        self.assertIn(ABANDONED.encode(), r.body)
        self.assertEqual(transfers(self.link), ({}, 1))

    def test_wholeResult(self) -> None:
        """
        A whole text result is sent with its length.
        """
        conn = self.proxy.get()
        (scrapeId,) = self.link.streams
        self.link.streams[scrapeId].responseReceived(
            answerOf(
                AGENT,
                pb.ScrapeResponse(
                    valid_response=True,
                    scrape_id=scrapeId,
                    status_code=200,
                    content_type="text/plain",
                    content_as_text="up 1\n",
                ),
            )
        )
        r = response(conn)
        self.assertEqual((r.status, r.body, r.headers[b"content-length"]), (200, b"up 1\n", b"5"))

    def test_targetFailure(self) -> None:
        """
        A target's failure is Prometheus's status with upstream's reason.
        """
        conn = self.proxy.get()
        (scrapeId,) = self.link.streams
        self.link.streams[scrapeId].responseReceived(
            answerOf(
                AGENT,
                pb.ScrapeResponse(
                    scrape_id=scrapeId, status_code=404, failure_reason="invalid_path"
                ),
            )
        )
        r = response(conn)
        self.assertEqual(r.status, 404)
        self.assertIn(b"invalid_path", r.body)
