"""
Tests for L{promtwist.proxy.heartbeats}: C{proxy_heartbeat_count} counts
what prometheus-proxy's agent would have sent, in its units, from the
frames promtwist's agent sends.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from promtwist.proxy.heartbeats import UPSTREAM_CHECK_DELAY, UpstreamHeartbeats

PERIOD = 5.0
INTERVAL = PERIOD + UPSTREAM_CHECK_DELAY


class UpstreamHeartbeatsTests(SynchronousTestCase):
    def test_idle(self) -> None:
        """
        An idle link answers the proxy's pings every two periods; the
        heartbeats an upstream agent sends meanwhile, one every
        C{INTERVAL}, are counted at each pong, none twice.
        """
        beats = UpstreamHeartbeats(PERIOD, 0.0)
        counted = [beats.heard(10.05 * n, "pong") for n in range(1, 31)]
        self.assertEqual(sum(counted), int(10.05 * 30 // INTERVAL))
        self.assertEqual(set(counted), {1, 2})

    def test_answersRestartTheInterval(self) -> None:
        """
        An answer every 15 s leaves room for two upstream heartbeats in
        between (at 5.25 s and 10.5 s), not three.
        """
        beats = UpstreamHeartbeats(PERIOD, 0.0)
        self.assertEqual([beats.heard(15.0 * n, "scrape_response") for n in (1, 2, 3)], [2, 2, 2])

    def test_busy(self) -> None:
        """
        An agent answering more often than the interval sends no heartbeat.
        """
        beats = UpstreamHeartbeats(PERIOD, 0.0)
        self.assertEqual(sum(beats.heard(5.0 * n, "scrape_chunk") for n in range(1, 100)), 0)

    def test_pongBetweenAnswers(self) -> None:
        """
        A round-trip pong between answers proves the link alive but stands
        for no heartbeat of its own.
        """
        beats = UpstreamHeartbeats(PERIOD, 0.0)
        self.assertEqual(beats.heard(3.0, "pong"), 0)
        self.assertEqual(beats.heard(15.0, "scrape_response"), 2)
        self.assertEqual(beats.heard(20.0, "pong"), 0)
        self.assertEqual(beats.heard(26.0, "pong"), 2)

    def test_off(self) -> None:
        """
        With heartbeats off (a period of 0) nothing is counted, as
        upstream's agent with C{heartbeatEnabled = false} sends none.
        """
        beats = UpstreamHeartbeats(0.0, 0.0)
        self.assertEqual(beats.heard(600.0, "pong"), 0)
