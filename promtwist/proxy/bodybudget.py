# -*- test-case-name: promtwist.test.test_httpserver -*-
"""
The scrape port's budget of request-body bytes in flight.

A request body (a PushProx client's push, up to the content limit) is held
whole while it arrives and is parsed, so every connection sending one
holds up to that limit: a few hundred connections that each declare the
largest body and send all but its last byte would hold gigabytes until
their deadline. The budget bounds the sum: a body is taken on its head,
before a byte of it is read, only if the bytes it declares fit beside
those already held, and its bytes are given back when its request ends,
however it ends.
"""

from __future__ import annotations

from promtwist.httpguard import Refusal


class BodyBudget:
    """
    At most C{limit} declared body bytes held at once, across the port's
    connections; one body alone is always taken, so a limit below the
    largest body a policy allows slows pushes down rather than refusing
    them all.

    @ivar held: the declared bytes of the bodies taken and not given back.
    """

    def __init__(self, limit: int, setting: str) -> None:
        """
        @param setting: the key that sets C{limit}, for the refusal's
            reason.
        """
        self.limit = limit
        self.held = 0
        self._setting = setting

    def take(self, size: int) -> Refusal | None:
        """
        Hold C{size} bytes for a body about to be read, or say why not.
        """
        if self.held and self.held + size > self.limit:
            return Refusal(
                503,
                b"Service Unavailable",
                f"the proxy is reading {self.held} bytes of request bodies, and this one's"
                f" {size} would pass their budget of {self.limit} ({self._setting}):"
                " try again shortly",
            )
        self.held += size
        return None

    def give(self, size: int) -> None:
        """
        A body of C{size} bytes taken before is no longer held.
        """
        assert 0 <= size <= self.held, f"giving back {size} of {self.held} bytes held"
        self.held -= size
