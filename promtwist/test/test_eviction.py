"""
Tests for L{promtwist.proxy.eviction}: stale agents evicted by the time on
a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import ProxySettings
from promtwist.protocol.session import LinkState
from promtwist.proxy.answers import ScrapeFailed
from promtwist.proxy.eviction import evictStale
from promtwist.test.test_framing import logText
from promtwist.test.test_link import Pair

# Long heartbeats, so that the proxy's own liveness check does not act
# first. (The agent's still gives up on a proxy silent for 16 s: the tests
# stay below that.)
SETTINGS = ProxySettings(heartbeat_period_secs=60.0)


class EvictStaleTests(SynchronousTestCase):
    def evictions(self, pair: Pair) -> float | None:
        return pair.factory.metrics.registry.get_sample_value("proxy_eviction_count_total")

    def test_silentOverTheLimit(self) -> None:
        """
        A link nothing arrived on for longer than the limit is evicted: its
        paths leave the registry, its scrapes in flight fail at once, the
        eviction is logged and counted.
        """
        pair = Pair(SETTINGS)
        self.successResultOf(pair.ready)
        stream = pair.scrape("slow")
        # Nothing more from the agent: the pump is not flushed again.
        pair.clock.advance(10.5)
        with capturedLogs() as events:
            evicted = evictStale(pair.factory.connected(), 10.0)
        self.assertEqual(evicted, [pair.proxy])
        pair.flush()
        self.assertEqual(pair.registry.lookup("fast"), ())
        self.assertIs(pair.proxy.state, LinkState.CLOSED)
        self.assertIn("evicting agent 'a1'", logText(events))
        self.assertIn("nothing heard for 10s", logText(events))
        self.assertEqual(self.evictions(pair), 1)
        failure = self.failureResultOf(stream.head, ScrapeFailed)
        self.assertIn("nothing heard for 10s", failure.value.reason)

    def test_heardWithinTheLimit(self) -> None:
        """
        A link that was heard from within the limit stays, and so do its
        paths; silence is measured from the last frame received.
        """
        pair = Pair(SETTINGS)
        self.successResultOf(pair.ready)
        pair.clock.advance(6)
        # The agent answers a scrape: it was heard from.
        self.assertEqual(self.successResultOf(pair.scrape("fast").head).status, 200)
        pair.clock.advance(6)
        self.assertEqual(evictStale(pair.factory.connected(), 10.0), [])
        self.assertEqual(pair.registry.lookup("fast"), (pair.proxy,))
        self.assertEqual(self.evictions(pair), 0)

    def test_exactlyAtTheLimit(self) -> None:
        """
        The limit itself is not over it.
        """
        pair = Pair(SETTINGS)
        self.successResultOf(pair.ready)
        pair.clock.advance(10)
        self.assertEqual(evictStale(pair.factory.connected(), 10.0), [])
