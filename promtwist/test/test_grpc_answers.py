"""
L{promtwist.proxy.grpcanswers}: upstream's results into the awaited
L{ScrapeStream}, and the validation of chunked ones, on real messages.
"""

from __future__ import annotations

import zlib

from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.protocol.promtwist_pb2 import Frame
from promtwist.proxy.answers import ScrapeFailed
from promtwist.proxy.grpcanswers import ChunkedResults, answerOf
from promtwist.proxy.stream import AnswerHead, ScrapeStream
from promtwist.test.upstreamchunks import chunks, header, summary, transfersOf

BODY = b"".join(b'm{i="%d"} %d\n' % (i, i * 31 % 97) for i in range(2000))
ZIPPED = zlib.compress(BODY, wbits=31)


class _Agent:
    """
    An agent with scrapes in flight: a StreamLink and an AnsweringAgent.
    """

    name = "up"
    source = "identity test from 192.0.2.7"
    MAX_LENGTH = 4 * 1024 * 1024

    def __init__(self) -> None:
        self.streams: dict[int, ScrapeStream] = {}
        self.invalid: list[str] = []
        self.abandoned = 0
        self.heardCount = 0

    @property
    def metrics(self) -> _Agent:
        return self

    def chunkInvalid(self, stage: str) -> None:
        self.invalid.append(stage)

    def transferAbandoned(self) -> None:
        self.abandoned += 1

    def forget(self, scrapeId: int) -> None:
        self.streams.pop(scrapeId, None)

    def sendIfConnected(self, frame: Frame) -> None:
        pass

    def violation(self, why: str) -> None:
        raise AssertionError(why)

    def stream(self, scrapeId: int) -> ScrapeStream | None:
        return self.streams.get(scrapeId)

    def heard(self) -> None:
        self.heardCount += 1

    def scrape(self, scrapeId: int) -> list[AnswerHead | ScrapeFailed]:
        stream = self.streams[scrapeId] = ScrapeStream(self, scrapeId, 6 * 1024 * 1024)
        outcome: list[AnswerHead | ScrapeFailed] = []
        stream.head.addCallbacks(outcome.append, lambda f: outcome.append(f.value))
        return outcome


class AnswerTests(SynchronousTestCase):
    def test_text(self) -> None:
        response = answerOf(
            "up",
            pb.ScrapeResponse(
                valid_response=True, status_code=200, content_type="t", content_as_text="é 1\n"
            ),
        )
        self.assertEqual(
            (response.status, response.body, response.content_encoding, response.last),
            (200, "é 1\n".encode(), "", True),
        )

    def test_zipped(self) -> None:
        response = answerOf(
            "up",
            pb.ScrapeResponse(
                valid_response=True, status_code=200, zipped=True, content_as_zipped=ZIPPED
            ),
        )
        self.assertEqual((response.body, response.content_encoding), (ZIPPED, "gzip"))

    def test_targetFailure(self) -> None:
        """
        A target's failure is its status and upstream's reason, no body; a
        2xx the agent calls invalid is a 502.
        """
        failed = answerOf("up", pb.ScrapeResponse(status_code=404, failure_reason="invalid_path"))
        self.assertEqual((failed.status, failed.body), (404, b""))
        self.assertIn("invalid_path", failed.reason)
        odd = answerOf("up", pb.ScrapeResponse(valid_response=False, status_code=200))
        self.assertEqual(odd.status, 502)


class ChunkedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.agent = _Agent()
        self.dropped: list[int] = []
        self.results = ChunkedResults(
            lambda agentId: self.agent if agentId == "a" else None,
            transfersOf(self.agent, len(ZIPPED) + 10),
            self.dropped.append,
        )

    def feed(self, *messages: pb.ChunkedScrapeResponse) -> None:
        for message in messages:
            self.results.received(message)

    def test_whole(self) -> None:
        outcome = self.agent.scrape(7)
        pieces = chunks(7, ZIPPED, 1000)
        self.feed(header(7, "a"), *pieces)
        self.assertEqual(outcome, [])
        self.feed(summary(7, ZIPPED, len(pieces)))
        (head,) = outcome
        assert isinstance(head, AnswerHead)
        self.assertEqual((head.status, head.contentEncoding, head.size), (200, "gzip", len(ZIPPED)))
        self.assertEqual(self.agent.invalid, [])

    def failure(self, outcome: list[AnswerHead | ScrapeFailed]) -> ScrapeFailed:
        (failed,) = outcome
        assert isinstance(failed, ScrapeFailed)
        self.assertEqual(failed.status, 502)
        return failed

    def test_checksum(self) -> None:
        outcome = self.agent.scrape(7)
        pieces = chunks(7, ZIPPED, 1000)
        pieces[1].chunk.chunk_checksum += 1
        self.feed(header(7, "a"), *pieces)
        self.assertIn(
            "Chunk validation failed: checksum mismatch at chunk 2", self.failure(outcome).reason
        )
        self.assertEqual(self.agent.invalid, ["chunk"])
        # What follows for it is dropped.
        self.feed(summary(7, ZIPPED, len(pieces)))
        self.assertIn(7, self.dropped)

    def test_ordinal(self) -> None:
        outcome = self.agent.scrape(7)
        pieces = chunks(7, ZIPPED, 1000)
        self.feed(header(7, "a"), pieces[1])
        self.assertIn("chunk 2 came where chunk 1 was due", self.failure(outcome).reason)

    def test_byteCount(self) -> None:
        outcome = self.agent.scrape(7)
        (chunk, *_) = chunks(7, ZIPPED, 1000)
        chunk.chunk.chunk_byte_count = 2**31 - 1
        self.feed(header(7, "a"), chunk)
        self.assertIn("chunk byte count", self.failure(outcome).reason)

    def test_tooLarge(self) -> None:
        outcome = self.agent.scrape(7)
        big = ZIPPED + b"x" * 100
        self.feed(header(7, "a"), *chunks(7, big, 1000))
        self.assertIn("maxZippedContentSizeMBytes", self.failure(outcome).reason)

    def test_summaryMismatch(self) -> None:
        outcome = self.agent.scrape(7)
        pieces = chunks(7, ZIPPED, 1000)
        self.feed(header(7, "a"), *pieces, summary(7, ZIPPED, len(pieces) + 1))
        self.assertIn("Summary validation failed", self.failure(outcome).reason)
        self.assertEqual(self.agent.invalid, ["summary"])

    def test_headerTwice(self) -> None:
        outcome = self.agent.scrape(7)
        self.feed(header(7, "a"), header(7, "a"))
        self.assertIn("a second header", self.failure(outcome).reason)

    def test_notIssued(self) -> None:
        """
        Chunks before a header, a header for an id not awaited, or from an
        agent this stream may not answer for: dropped, nothing delivered.
        """
        outcome = self.agent.scrape(7)
        pieces = chunks(7, ZIPPED, 1000)
        self.feed(pieces[0], header(8, "a"), header(7, "other"), *chunks(8, ZIPPED, 1000))
        self.assertEqual(outcome, [])
        self.assertEqual(self.dropped[:3], [7, 8, 7])

    def test_abandoned(self) -> None:
        outcome = self.agent.scrape(7)
        self.feed(header(7, "a"), chunks(7, ZIPPED, 1000)[0])
        self.results.ended()
        self.assertIn("Chunked transfer abandoned", self.failure(outcome).reason)
        self.assertEqual(self.agent.abandoned, 1)
