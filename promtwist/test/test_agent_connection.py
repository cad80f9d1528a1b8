"""
Tests for the scrape-serving side of L{promtwist.agent.connection}: readiness
observers, refusals, and how scrapes waiting for a slot end, over the
in-memory L{Pair} of C{test_link}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from promtwist.agent import connection as agentConnection
from promtwist.agent.connection import Rejected
from promtwist.config.settings import AgentSettings, PathConfig
from promtwist.protocol.session import SessionLost
from promtwist.proxy.answers import ScrapeFailed
from promtwist.proxy.relay import ScrapeCall
from promtwist.test.test_link import PATHS, Pair


class WhenReadyTests(SynchronousTestCase):
    def test_everyCallerGetsTheConnection(self) -> None:
        """
        Each caller has its own Deferred: one whose callback returns
        something else (as C{_ReadyLinks} does) changes nothing for the
        others, before or after the link became ready.
        """
        pair = Pair()
        # Pair asked first, at connect time; ask once more now it is ready.
        pair.ready.addCallback(lambda _: None)
        self.assertIs(self.successResultOf(pair.agent.whenReady()), pair.agent)
        self.assertIs(self.successResultOf(pair.agent.whenReady()), pair.agent)

    def test_waitersBeforeReady(self) -> None:
        self.patch(agentConnection.ProxyConnection, "frame_welcome", lambda self, w: None)
        pair = Pair()
        first, second, third = (pair.agent.whenReady() for _ in range(3))
        first.addCallback(lambda _: None)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertNoResult(third)
        pair.agent._ready.callback(pair.agent)
        self.assertIsNone(self.successResultOf(first))
        self.assertIs(self.successResultOf(third), pair.agent)

    def test_rejectionReachesEveryCaller(self) -> None:
        self.patch(agentConnection, "PROTOCOL_VERSION", 99)
        pair = Pair()
        self.failureResultOf(pair.ready, Rejected)
        for _ in range(2):
            self.failureResultOf(pair.agent.whenReady(), Rejected)

    def test_lostBeforeReady(self) -> None:
        self.patch(agentConnection.ProxyConnection, "frame_welcome", lambda self, w: None)
        pair = Pair()
        waiting = pair.agent.whenReady()
        pair.agent.transport.abortConnection()
        pair.flush()
        for d in (waiting, pair.ready, pair.agent.whenReady()):
            failure = self.failureResultOf(d, SessionLost)
            self.assertIn("link lost before it was ready", str(failure.value))


class RefusalTests(SynchronousTestCase):
    def test_unknownPathClipped(self) -> None:
        """
        The path a proxy asked for is repeated in the refusal only in part.
        """
        pair = Pair()
        stream = pair.proxy.scrape(ScrapeCall("x" * 100_000, "", "", "", "", 5.5))
        pair.flush()
        failure = self.failureResultOf(stream.head, ScrapeFailed).value
        self.assertEqual(failure.kind, "path_not_found")
        self.assertIn("does not serve /xxx", failure.reason)
        self.assertLess(len(failure.reason), 400)

    def test_invalidQueryRefusedAtOnce(self) -> None:
        """
        A query with a raw 0x7f is refused before any request, without
        waiting for the deadline, and is not blamed on the target.
        """
        pair = Pair()
        with capturedLogs() as events:
            stream = pair.proxy.scrape(ScrapeCall("slow", "a=\x7f", "text/plain", "", "", 5.5))
            pair.flush()
        failure = self.failureResultOf(stream.head, ScrapeFailed).value
        self.assertEqual(failure.status, 503)
        self.assertIn("byte 0x7f at offset 2", failure.reason)
        self.assertEqual(pair.target.pending, [])
        self.assertFalse([e for e in events if "log_failure" in e])
        self.assertEqual(pair.agent.scrapesInFlight, 0)

    def test_internationalisedHost(self) -> None:
        """
        A configured IDN host is scraped (here: reaches the in-memory target)
        instead of timing out.
        """
        pair = Pair(
            agentSettings=AgentSettings(
                name="a1", path_configs=(PathConfig("idn", "idn", "http://bücher.example/fast"),)
            )
        )
        head = self.successResultOf(pair.scrape("idn").head)
        self.assertEqual(head.status, 200)


class QueuedScrapeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair(
            agentSettings=AgentSettings(name="a1", path_configs=PATHS, max_concurrent_clients=1)
        )

    def test_backlogEmptiesOnTimeout(self) -> None:
        """
        A scrape that timed out waiting for a slot leaves the queue, so the
        backlog (and the health check reading it) counts only live waiters.
        """
        running = self.pair.scrape("slow")
        queued = self.pair.proxy.scrape(ScrapeCall("slow", "", "", "", "", 2.2))
        self.pair.flush()
        self.assertEqual(self.pair.agent.backlog, 1)
        self.pair.clock.advance(2)
        self.pair.flush()
        failure = self.failureResultOf(queued.head, ScrapeFailed).value
        self.assertEqual(failure.status, 503)
        self.assertIn("for a free slot (agent.http.maxConcurrentClients = 1)", failure.reason)
        self.assertEqual(self.pair.agent.backlog, 0)
        self.assertEqual(self.pair.agent.scrapesInFlight, 1)
        self.assertNoResult(running.head)

    def test_linkLostStartsNoQueuedScrape(self) -> None:
        """
        When the link goes, a queued scrape is dropped before the running one
        frees its slot, so it never reaches its target.
        """
        streams = [self.pair.scrape("slow"), self.pair.scrape("slow")]
        self.assertEqual(len(self.pair.target.pending), 1)
        self.pair.agent.transport.abortConnection()
        self.pair.flush()
        self.assertEqual(len(self.pair.target.pending), 1)
        for stream in streams:
            self.failureResultOf(stream.head, ScrapeFailed)
        self.assertEqual(self.pair.agent.scrapesInFlight, 0)
        self.assertEqual(self.pair.agent.backlog, 0)
