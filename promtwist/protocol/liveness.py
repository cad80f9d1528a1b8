# -*- test-case-name: promtwist.test.test_liveness -*-
"""
One timer for the liveness of many links.

Ten thousand idle links each with a timer of their own cost the proxy ten
thousand timer calls and reactor timer-heap operations per heartbeat period. A
L{DeadlineSweep} instead files each link under the time its next liveness
check is due, in buckets of a resolution (L{resolutionFor}), and keeps one
reactor timer for the earliest bucket: a sweep visits the links whose
deadline passed and no others.

That is not free at idle: an idle link's deadline is its next ping, so
every link is visited once per ping interval (a ping and a refiling in a
set), ten thousand visits per interval for ten thousand idle links, but with
one reactor timer in all and sweeps only as often as buckets come due. A
busy link is visited as rarely as an idle one: traffic does not touch the
sweep. A link only records when it last sent and received (two floats),
and when its deadline comes it works out, from those, whether it must ping
or abort now and when to be looked at next.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from promtwist.logs import observer
from promtwist.sendnow import sendsOnReturn

# How late a deadline may be met, in seconds, at most: a ping goes out, and
# a silent link is aborted, at most this long after it is due.
RESOLUTION = 0.25

# For short heartbeat periods, the resolution is a period divided by this.
RESOLUTION_DIVISOR = 20


def resolutionFor(period: float) -> float:
    """
    How late the deadlines of links with this heartbeat C{period} may be
    met: L{RESOLUTION}, or a twentieth of a short period, so that what is
    due a period or two ahead is never late by much of one.
    """
    return min(RESOLUTION, period / RESOLUTION_DIVISOR)


class Watched(Protocol):
    """
    What a sweep looks after: something with a deadline.
    """

    def deadlinePassed(self, now: float) -> float | None:
        """
        The deadline this was filed under has passed: do what is due, and
        say when to be looked at next (L{None}: no more).
        """


class DeadlineSweep:
    """
    Deadlines of many L{Watched}, met within C{resolution} seconds by one
    timer.

    A watched thing has at most one deadline at a time: L{schedule} moves
    it, L{cancel} removes it, at any time, from a handler too (for the
    thing visited or any other). A handler that schedules what it visits
    wins over the deadline it returns. The timer exists only while some
    deadline does, so a sweep with nothing filed leaves the reactor clean.
    """

    _log = Logger(observer=observer)

    def __init__(self, clock: IReactorTime, resolution: float = RESOLUTION) -> None:
        self.clock = clock
        self.resolution = resolution
        # Bucket number (deadline / resolution, rounded up) to what is due
        # then; the heap holds each bucket number once.
        self._buckets: dict[int, set[Watched]] = {}
        self._order: list[int] = []
        self._where: dict[Watched, int] = {}
        self._timer: IDelayedCall | None = None
        # While sweeping, the last bucket due: what is refiled goes after it.
        self._sweeping = -1

    def __len__(self) -> int:
        return len(self._where)

    def schedule(self, watched: Watched, at: float) -> None:
        """
        Look at C{watched} at C{at} (or within C{resolution} after), and not
        at any earlier deadline it had.
        """
        self.cancel(watched)
        key = max(math.ceil(at / self.resolution), self._sweeping + 1)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            heapq.heappush(self._order, key)
        bucket.add(watched)
        self._where[watched] = key
        if self._sweeping < 0:
            self._arm()

    def serve(self, period: float) -> None:
        """
        Deadlines of links with this heartbeat C{period} will be filed:
        make the resolution at least as fine as L{resolutionFor} it, refiling
        what is filed already (a shorter period than any before is rare, so
        this costs nothing in the steady state). Not from a handler.
        """
        wanted = resolutionFor(period)
        if wanted >= self.resolution:
            return
        assert self._sweeping < 0, "the resolution changes between sweeps"
        filed = {watched: key * self.resolution for watched, key in self._where.items()}
        self.resolution = wanted
        self._buckets.clear()
        self._order.clear()
        self._where.clear()
        for watched, at in filed.items():
            self.schedule(watched, at)

    def cancel(self, watched: Watched) -> None:
        """
        Forget C{watched}'s deadline, if it has one.
        """
        key = self._where.pop(watched, None)
        if key is not None:
            self._buckets[key].discard(watched)
            if not self._where and self._sweeping < 0:
                # The last deadline went: so does the timer.
                self._arm()

    def _arm(self) -> None:
        """
        Point the one timer at the earliest bucket that still holds
        something; drop it when none does.
        """
        while self._order and not self._buckets[self._order[0]]:
            del self._buckets[heapq.heappop(self._order)]
        if not self._order:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, self._order[0] * self.resolution - self.clock.seconds())
        if self._timer is not None and self._timer.active():
            if abs(self._timer.getTime() - (self.clock.seconds() + delay)) > 1e-9:
                self._timer.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._sweep)

    @sendsOnReturn
    def _sweep(self) -> None:
        """
        Visit everything whose bucket is due, refiling what asks to be
        looked at again.

        The pings a sweep writes leave when it returns, not one reactor
        iteration later: thousands of links written to at once would
        otherwise each come back from the poll as writable, one event (and
        its dispatch) more per ping.
        """
        self._timer = None
        now = self.clock.seconds()
        due = math.floor(now / self.resolution + 1e-9)
        self._sweeping = due
        try:
            while self._order and self._order[0] <= due:
                key = self._order[0]
                # Taken one at a time from the live bucket: a handler that
                # cancels or moves another item of it takes that item out
                # before it is visited (what is refiled goes to a later
                # bucket, never this one).
                bucket = self._buckets[key]
                while bucket:
                    watched = bucket.pop()
                    del self._where[watched]
                    try:
                        again = watched.deadlinePassed(now)
                    except Exception:  # noqa: BLE001
                        # One link's bug costs that link its liveness
                        # checks, not every other link its own.
                        self._log.failure("liveness check failed")
                        continue
                    if again is not None and watched not in self._where:
                        self.schedule(watched, again)
                heapq.heappop(self._order)
                del self._buckets[key]
        finally:
            self._sweeping = -1
            self._arm()
