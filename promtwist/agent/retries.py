# -*- test-case-name: promtwist.test.test_retries -*-
"""
When a failed target fetch is tried again (C{agent.scrapeMaxRetries}), and
after how long.

As prometheus-proxy's agent (Ktor's C{HttpRequestRetry} with
C{exponentialDelay}): a connection failure or a 5xx answer is retried, a
timeout is not (it has used up its time), nor is any other status. Retry
C{n} waits C{2**n} seconds capped at L{MAX_DELAY}, plus up to L{JITTER}
seconds at random so that agents retrying the same target spread out. A
retry that could not start before the scrape's deadline is not made: the
failure is answered at once instead of at the deadline.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

# The longest wait before one retry, jitter excluded, seconds.
MAX_DELAY = 5.0
# The most random time added to each wait, seconds.
JITTER = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """
    How often, and after how long, a scrape's fetch is retried.

    @ivar maxRetries: C{agent.scrapeMaxRetries}; 0 retries nothing.
    @ivar random: a number in [0, 1) for the jitter; injected so that tests
        are deterministic.
    """

    maxRetries: int = 0
    random: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, retry: int) -> float:
        """
        Seconds to wait before retry number C{retry} (1 for the first).
        """
        return min(2.0**retry, MAX_DELAY) + JITTER * self.random()

    def retryableStatus(self, status: int) -> bool:
        """
        Whether an answer with C{status} may be worth asking again: a
        server error, which may be passing.
        """
        return 500 <= status < 600
