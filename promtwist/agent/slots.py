# -*- test-case-name: promtwist.test.test_scraper -*-
"""
C{agent.http.maxConcurrentClients}: how many scrapes of one link fetch at
once; the others wait their turn, first come first served.

Direct calls rather than a L{twisted.internet.defer.DeferredSemaphore}: a
scrape is told its slot is free by a call, with no Deferred chain built and
run for each scrape.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Slots:
    """
    C{limit} slots; L{take} one or queue for it, L{release} it, L{leave}
    the queue.

    @ivar tokens: the free slots.
    @ivar waiting: what L{take} was given, for the scrapes still queued.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tokens = limit
        self.waiting: deque[Callable[[], None]] = deque()
        # Releases not yet handed over, and whether a hand-over is running:
        # a scrape given a slot can end at once and release it (its time ran
        # out while it waited), which is then handed over by the same loop
        # instead of one call deeper per queued scrape.
        self._owed = 0
        self._handing = False

    def take(self, ready: Callable[[], None]) -> bool:
        """
        Take a free slot, or queue for one: C{ready} is called when it is
        given (by a L{release}).

        @return: whether a slot was free (and C{ready} will not be called).
        """
        if self.tokens > 0:
            self.tokens -= 1
            return True
        self.waiting.append(ready)
        return False

    def leave(self, ready: Callable[[], None]) -> None:
        """
        Stop waiting: what was given to L{take} will not be called.
        """
        self.waiting.remove(ready)

    def release(self) -> None:
        """
        Give a slot back: to the longest waiting, if any.
        """
        self._owed += 1
        if self._handing:
            return
        self._handing = True
        try:
            while self._owed:
                self._owed -= 1
                if self.waiting:
                    self.waiting.popleft()()
                else:
                    self.tokens += 1
        finally:
            self._handing = False
