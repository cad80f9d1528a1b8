# -*- test-case-name: promtwist.test.test_heartbeats -*-
"""
C{proxy_heartbeat_count} in prometheus-proxy's units, on promtwist's quieter
links.

prometheus-proxy's agent sends a heartbeat whenever it has sent the proxy
nothing for C{heartbeatMaxInactivitySecs} (5 s), checked every
C{heartbeatCheckPauseMillis} (500 ms), and its proxy counts each one: an
idle agent adds one about every 5.25 s, and an agent answering scrapes more
often than every 5 s adds none. A migrating user's
C{rate(proxy_heartbeat_count_total[5m])} means that.

promtwist's proxy pings an idle link only every two heartbeat periods, so
counting its pongs would read half as many or fewer. Instead each link
counts the heartbeats an upstream agent would have sent on it: one for each
interval in which the agent sent nothing but liveness frames, counted when
the proxy next hears from it (so the agent is known to have been alive
through them). No frame is sent for it.
"""

from __future__ import annotations

# prometheus-proxy's agent checks every heartbeatCheckPauseMillis (500 ms)
# whether it has been silent longer than its interval, so its heartbeats
# come, on average, half a check later than the interval.
UPSTREAM_CHECK_DELAY = 0.25

# Frames that only prove the link alive: they are what stands in for
# upstream's heartbeats, so they do not restart the interval as an answer
# or a registration does.
LIVENESS_FRAMES = frozenset({"ping", "pong"})


class UpstreamHeartbeats:
    """
    The heartbeats prometheus-proxy's agent would have sent on one link.

    @ivar interval: seconds between the heartbeats of an idle agent: the
        proxy's heartbeat period (upstream's C{heartbeatMaxInactivitySecs},
        5 s by default) plus L{UPSTREAM_CHECK_DELAY}.
    """

    def __init__(self, period: float, now: float) -> None:
        """
        @param period: the link's heartbeat period; 0 (heartbeats off)
            counts none, as upstream with C{heartbeatEnabled = false}.
        @param now: when the link was established: the agent's last word.
        """
        self.interval = period + UPSTREAM_CHECK_DELAY if period > 0 else 0.0
        self._since = now

    def heard(self, now: float, kind: str) -> int:
        """
        A frame of C{kind} (the C{Frame} field name) arrived from the agent
        at C{now}.

        @return: the heartbeats due since the agent last sent something
            other than a liveness frame, not counted before.
        """
        if not self.interval:
            return 0
        due = int((now - self._since) // self.interval)
        if kind in LIVENESS_FRAMES:
            self._since += due * self.interval
        else:
            self._since = now
        return max(due, 0)
