# -*- test-case-name: promtwist.test.test_liveness -*-
"""
One timer for the liveness of many links.

Ten thousand idle links each with a timer of their own cost the proxy ten
thousand timer calls per heartbeat period whether or not anything is due. A
L{DeadlineSweep} instead files each link under the time its next liveness
check is due, in buckets of L{RESOLUTION} seconds, and keeps one reactor
timer for the earliest bucket: each sweep visits only the links whose
deadline passed, O(expired) and not O(links).

Traffic does not touch the sweep: a link only records when it last sent and
received (two floats), and when its deadline comes it works out, from those,
whether it must ping or abort now and when to be looked at next.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from promtwist.logs import observer
from promtwist.sendnow import sendsOnReturn

# How late a deadline may be met, in seconds: a ping goes out, and a silent
# link is aborted, at most this long after it is due.
RESOLUTION = 0.25


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
    Deadlines of many L{Watched}, met within L{RESOLUTION} seconds by one
    timer.

    A watched thing has at most one deadline at a time: L{schedule} moves
    it, L{cancel} removes it. The timer exists only while some deadline
    does, so a sweep with nothing filed leaves the reactor clean.
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
        Look at C{watched} at C{at} (or within L{RESOLUTION} after), and not
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
                key = heapq.heappop(self._order)
                for watched in list(self._buckets.pop(key)):
                    del self._where[watched]
                    try:
                        again = watched.deadlinePassed(now)
                    except Exception:  # noqa: BLE001
                        # One link's bug costs that link its liveness
                        # checks, not every other link its own.
                        self._log.failure("liveness check failed")
                        continue
                    if again is not None:
                        self.schedule(watched, again)
        finally:
            self._sweeping = -1
            self._arm()
