# -*- test-case-name: promtwist.test.test_dialling -*-
"""
What the agent says while it cannot reach a proxy: why, in the words an
operator acts on (refused, timed out, a name that does not resolve, a TLS
alert, the proxy's rejection), once per change of cause, then a summary at
most once a minute while the retries go on.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.agent.connection import Rejected
from promtwist.tls import describeTLSFailure

# While the cause stays the same, one "still failing" line per this many
# seconds.
SUMMARY_INTERVAL = 60.0


def describeDialFailure(failure: Failure, proxy: str) -> str:
    """
    Why an attempt to reach C{proxy} (C{host:port}) failed, in one line.
    """
    if failure.check(error.DNSLookupError):
        host = proxy.rsplit(":", 1)[0]
        return f"cannot resolve the host name {host!r} (DNS: check --proxy or agent.proxy.hostname)"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused (nothing listens there: is the proxy running, on this port?)"
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return "connection timed out (a firewall drops the packets, or the host is down)"
    if failure.check(error.NoRouteError):
        return "no route to the host"
    if failure.check(Rejected):
        return f"the proxy rejected this agent ({failure.getErrorMessage()})"
    return describeTLSFailure(failure) or failure.getErrorMessage()


class DialReport:
    """
    The log of one agent's attempts to reach its proxies.

    L{failed} records why an attempt failed; L{retrying}, told by the retry
    policy how long until the next attempt, logs: a warning when a proxy's
    cause is new, else at most one summary per C{interval}. L{connected}
    ends the episode.

    @ivar attempts: failed attempts since the last working link.
    """

    def __init__(
        self, log: Logger, clock: IReactorTime, interval: float = SUMMARY_INTERVAL
    ) -> None:
        self._log = log
        self._clock = clock
        self.interval = interval
        self.attempts = 0
        self._causes: dict[str, str] = {}
        self._last: tuple[str, str] | None = None
        self._logged = False
        self._summarisedAt = 0.0

    def failed(self, proxy: str, cause: str) -> None:
        """
        An attempt to reach C{proxy} failed for C{cause}.
        """
        self.attempts += 1
        self._last = (proxy, cause)
        self._logged = self._causes.get(proxy) == cause
        self._causes[proxy] = cause

    def retrying(self, delay: float) -> None:
        """
        The next attempt is C{delay} seconds away: log the last failure if it
        is news, or a summary if one is due.
        """
        if self._last is None:
            return
        proxy, cause = self._last
        now = self._clock.seconds()
        if not self._logged:
            self._logged = True
            self._summarisedAt = now
            self._log.warn(
                "no link to proxy {proxy}: {cause}; next attempt in {delay:.1f}s",
                proxy=proxy,
                cause=cause,
                delay=delay,
            )
        elif now - self._summarisedAt >= self.interval:
            self._summarisedAt = now
            self._log.warn(
                "still no link to proxy {proxy} after {attempts} attempts ({cause});"
                " next in {delay:.1f}s",
                proxy=proxy,
                attempts=self.attempts,
                cause=cause,
                delay=delay,
            )

    def connected(self, proxy: str) -> None:
        """
        A link to C{proxy} is ready: the next failure is news again.
        """
        if self.attempts:
            self._log.info(
                "link to proxy {proxy} is up after {attempts} failed attempt(s)",
                proxy=proxy,
                attempts=self.attempts,
            )
        self.attempts = 0
        self._causes.clear()
        self._last = None
