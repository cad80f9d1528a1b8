"""
Tests for L{promtwist.agent.retries} and the retries and per-request
timeout of L{promtwist.agent.scraper.Scrape}, driven by a L{Clock}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from promtwist.agent.client import TargetPool
from promtwist.agent.retries import JITTER, MAX_DELAY, RetryPolicy
from promtwist.agent.scraper import Scrape, Scraper
from promtwist.agent.slots import Slots
from promtwist.config.settings import AgentSettings, PathConfig
from promtwist.protocol.promtwist_pb2 import Frame, Outcome, ScrapeRequest
from promtwist.test.helpers import servedOnLoopback
from promtwist.test.test_scraper import FakeResponse, Recorder, Run

# No jitter: every wait is the schedule's.
NO_JITTER = RetryPolicy(3, random=lambda: 0.0)


class RetryPolicyTests(SynchronousTestCase):
    def test_schedule(self) -> None:
        """
        Retry n waits 2**n seconds, capped at 5, plus the jitter.
        """
        self.assertEqual([NO_JITTER.delay(n) for n in (1, 2, 3, 4)], [2.0, 4.0, 5.0, 5.0])
        jittered = RetryPolicy(3, random=lambda: 0.5)
        self.assertEqual(jittered.delay(1), 2.0 + JITTER / 2)
        self.assertEqual(jittered.delay(9), MAX_DELAY + JITTER / 2)

    def test_retryableStatus(self) -> None:
        """
        Only server errors are asked again.
        """
        self.assertEqual(
            [s for s in (200, 301, 404, 429, 500, 503, 599) if NO_JITTER.retryableStatus(s)],
            [500, 503, 599],
        )

    def test_defaultNone(self) -> None:
        self.assertEqual(RetryPolicy().maxRetries, 0)


class ScrapeRetryTests(SynchronousTestCase):
    def run_(self, retries: RetryPolicy = NO_JITTER, **kwargs: object) -> Run:
        self.recorder = Recorder()
        return Run(retries=retries, observer=self.recorder, **kwargs)  # type: ignore[arg-type]

    def test_unreachableRetried(self) -> None:
        """
        A connection failure is asked again after the backoff, with
        C{x-retry-count}; nothing went to the proxy meanwhile, and the second
        answer is the scrape's.
        """
        run = self.run_(timeoutMs=10_000)
        run.http.requests[0].receiver.responseFailed("connection refused")
        self.assertEqual((run.frames, len(run.http.requests)), ([], 1))
        run.clock.advance(1.999)
        self.assertEqual(len(run.http.requests), 1)
        run.clock.advance(0.001)
        self.assertEqual(len(run.http.requests), 2)
        self.assertEqual(run.headers.getRawHeaders(b"x-retry-count"), [b"1"])
        self.assertEqual(
            run.headers.getRawHeaders(b"X-Prometheus-Scrape-Timeout-Seconds"), [b"8.000"]
        )
        self.assertIsNone(run.http.requests[0].headers.getRawHeaders(b"x-retry-count"))
        run.respond(FakeResponse()).body(b"up 1\n")
        run.http.requests[-1].receiver.responseEnded()
        head = run.last().scrape_response
        self.assertEqual((head.status, head.body, head.last), (200, b"up 1\n", True))
        self.assertEqual(self.recorder.retries, ["unreachable"])
        self.assertEqual(self.recorder.ended, ["success"])
        self.successResultOf(run.scrape.done)
        self.assertEqual(run.clock.getDelayedCalls(), [])

    def test_serverErrorRetried(self) -> None:
        """
        A 5xx head is held back and asked again; the retried request's body
        is read for its connection's reuse, never passed on.
        """
        run = self.run_()
        first = run.respond(FakeResponse(503))
        self.assertEqual(run.frames, [])
        first.body(b"busy")
        self.assertFalse(first.producer.stopped)
        run.clock.advance(2)
        self.assertEqual(run.headers.getRawHeaders(b"x-retry-count"), [b"1"])
        run.respond(FakeResponse()).end()
        self.assertEqual(len(run.frames), 1)
        self.assertEqual(run.last().scrape_response.status, 200)
        self.assertEqual(run.body(), b"")
        self.assertEqual(self.recorder.retries, ["server_error"])

    def test_retriesUsedUp(self) -> None:
        """
        After C{maxRetries} the last failure is the answer, saying how many
        retries were made; waits grow 2s, then 4s.
        """
        run = self.run_(RetryPolicy(2, random=lambda: 0.0), timeoutMs=30_000)
        run.respond(FakeResponse(500))
        run.clock.advance(2)
        run.respond(FakeResponse(502))
        run.clock.advance(3.999)
        self.assertEqual(len(run.http.requests), 2)
        run.clock.advance(0.001)
        self.assertEqual(run.headers.getRawHeaders(b"x-retry-count"), [b"2"])
        run.respond(FakeResponse(503))
        head = run.last().scrape_response
        self.assertEqual((head.status, head.last), (503, True))
        self.assertIn("answered HTTP 503", head.reason)
        self.assertTrue(head.reason.endswith("(after 2 retries)"), head.reason)
        self.assertEqual(self.recorder.retries, ["server_error", "server_error"])
        self.assertEqual(self.recorder.ended, ["unsuccessful"])

    def test_notPastTheDeadline(self) -> None:
        """
        A retry that could not start before the deadline is not made: the
        failure is answered at once.
        """
        run = self.run_(timeoutMs=2_000)
        run.http.requests[0].receiver.responseFailed("connection refused")
        head = run.last().scrape_response
        self.assertEqual(head.outcome, Outcome.UNREACHABLE)
        self.assertEqual(len(run.http.requests), 1)
        self.assertEqual(self.recorder.retries, [])

    def test_deadlineDuringRetry(self) -> None:
        """
        The deadline still bounds the whole: a retried request that is slow
        times out at it, the reason naming the bound and the retry.
        """
        run = self.run_(timeoutMs=5_000)
        run.http.requests[0].receiver.responseFailed("connection refused")
        run.clock.advance(5)
        head = run.last().scrape_response
        self.assertEqual(head.outcome, Outcome.TIMED_OUT)
        self.assertEqual(
            head.reason,
            "target http://target.test/metrics did not answer within 5s"
            " (the proxy's scrape deadline) (after 1 retry)",
        )
        self.assertEqual(run.http.cancelled, [b"http://target.test/metrics"])
        self.assertEqual(run.clock.getDelayedCalls(), [])

    def test_noRetryOnceTheHeadIsPassedOn(self) -> None:
        """
        A body broken off after a 2xx head is not retried: the head was
        decided on; and a 4xx is not retried.
        """
        run = self.run_()
        response = run.respond(FakeResponse())
        response.body(b"x" * 40_000)
        response.end("connection reset")
        self.assertEqual(run.last().scrape_chunk.outcome, Outcome.UNREACHABLE)
        other = self.run_()
        other.respond(FakeResponse(404))
        self.assertEqual(other.last().scrape_response.status, 404)
        self.assertEqual((len(run.http.requests), len(other.http.requests)), (1, 1))
        self.assertEqual(self.recorder.retries, [])

    def test_noRetriesByDefault(self) -> None:
        run = self.run_(RetryPolicy(0))
        run.respond(FakeResponse(503))
        self.assertEqual(run.last().scrape_response.status, 503)
        self.assertNotIn("after", run.last().scrape_response.reason)

    def test_cancelledWhileWaiting(self) -> None:
        """
        A scrape cancelled during the backoff leaves no timer, and drops the
        body the failed request was still reading.
        """
        run = self.run_()
        first = run.respond(FakeResponse(503))
        run.scrape.cancel()
        self.assertTrue(first.producer.stopped)
        self.assertEqual(run.clock.getDelayedCalls(), [])
        self.assertEqual(run.frames, [])
        self.assertEqual(len(run.http.requests), 1)


class ClientTimeoutTests(SynchronousTestCase):
    def test_boundsTheWholeRequest(self) -> None:
        """
        C{agent.http.clientTimeoutSecs} below the deadline bounds the request
        to its last byte, and the reason names it; the target is told the
        smaller bound.
        """
        run = Run(timeoutMs=10_000, client_timeout_secs=2.0)
        self.assertEqual(
            run.headers.getRawHeaders(b"X-Prometheus-Scrape-Timeout-Seconds"), [b"2.000"]
        )
        response = run.respond(FakeResponse())
        response.body(b"x" * 40_000)
        run.clock.advance(2)
        chunk = run.last().scrape_chunk
        self.assertEqual((chunk.last, chunk.outcome), (True, Outcome.TIMED_OUT))
        self.assertEqual(
            chunk.reason,
            "target http://target.test/metrics did not answer within 2s"
            " (agent.http.clientTimeoutSecs)",
        )
        self.assertTrue(response.producer.stopped)
        self.assertEqual(run.clock.getDelayedCalls(), [])

    def test_deadlineSmaller(self) -> None:
        """
        When the deadline is the smaller bound, it is the one that ends the
        scrape and is named.
        """
        run = Run(timeoutMs=3_000, client_timeout_secs=5.0)
        self.assertEqual(len(run.clock.getDelayedCalls()), 1)
        run.clock.advance(3)
        self.assertIn("(the proxy's scrape deadline)", run.last().scrape_response.reason)
        run = Run(timeoutMs=0, scrape_timeout_secs=3.0, client_timeout_secs=5.0)
        run.clock.advance(3)
        self.assertIn("(agent.scrapeTimeoutSecs)", run.last().scrape_response.reason)

    def test_stopsWithTheRequest(self) -> None:
        """
        A request that ended no longer runs the client timeout, even while
        its answer waits for the proxy's credit.
        """
        run = Run(window=16 * 1024, chunkBytes=16 * 1024, client_timeout_secs=2.0)
        response = run.respond(FakeResponse())
        response.body(b"x" * 40_000)
        response.end()
        self.assertEqual(len(run.clock.getDelayedCalls()), 1)

    def test_eachRetryHasItsOwn(self) -> None:
        """
        A client timeout is not retried (it used its time, as upstream's
        Ktor C{retryOnException} does not retry timeouts), and each retry
        gets a fresh one.
        """
        run = Run(
            timeoutMs=20_000, client_timeout_secs=3.0, retries=RetryPolicy(2, random=lambda: 0.0)
        )
        run.http.requests[0].receiver.responseFailed("connection refused")
        run.clock.advance(2)
        run.clock.advance(2.999)
        self.assertEqual(run.frames, [])
        run.clock.advance(0.001)
        head = run.last().scrape_response
        self.assertEqual(head.outcome, Outcome.TIMED_OUT)
        self.assertIn("(agent.http.clientTimeoutSecs) (after 1 retry)", head.reason)
        self.assertEqual(len(run.http.requests), 2)


class _Quick(RetryPolicy):
    """
    Retries at once, so that a loopback test takes no seconds.
    """

    def delay(self, retry: int) -> float:
        return 0.01


class LoopbackRetryTests(TestCase):
    """
    A retried scrape of a real target over 127.0.0.1.
    """

    timeout = 30

    async def test_serverErrorThenSuccess(self) -> None:
        """
        A target that answers 503 then 200 is scraped once, with one retry
        that says so; the 503's connection is read to its end for reuse.
        """
        requests: list[bytes] = []
        connections: list[Protocol] = []

        class Flaky(Protocol):
            def connectionMade(self) -> None:
                connections.append(self)

            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                requests.append(data)
                if len(requests) == 1:
                    self.transport.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
                else:
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nup 1\n")

        endpoints = await servedOnLoopback(self, Flaky)
        pool = TargetPool(reactor, endpoints, 4)
        self.addCleanup(pool.closeCachedConnections)
        recorder = Recorder()
        scraper = Scraper(AgentSettings(), pool, reactor, recorder, _Quick(2))
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
        (head,) = [f.scrape_response for f in frames]
        self.assertEqual((head.status, head.body), (200, b"up 1\n"))
        self.assertEqual((len(requests), len(connections)), (2, 1))
        self.assertNotIn(b"x-retry-count", requests[0])
        self.assertIn(b"x-retry-count: 1\r\n", requests[1])
        self.assertEqual(recorder.retries, ["server_error"])
