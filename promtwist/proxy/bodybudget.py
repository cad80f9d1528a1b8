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

One source alone could still fill the whole budget and have every other
source's bodies refused, so each source (the port says what one is: an
identity, an address) holds at most half of it.
"""

from __future__ import annotations

from promtwist.httpguard import Refusal


class BodyBudget:
    """
    At most C{limit} declared body bytes held at once, across the port's
    connections, and at most half of that by one source; one body alone is
    always taken, and a source's first body passes its share, so a limit
    below the largest body a policy allows slows pushes down rather than
    refusing them all.

    @ivar held: the declared bytes of the bodies taken and not given back.
    @ivar bySource: those bytes by source, for the sources that hold some.
    """

    def __init__(self, limit: int, setting: str) -> None:
        """
        @param setting: the key that sets C{limit}, for the refusal's
            reason.
        """
        self.limit = limit
        self.held = 0
        self.bySource: dict[str, int] = {}
        self._setting = setting

    def take(self, size: int, source: str) -> Refusal | None:
        """
        Hold C{size} bytes for a body about to be read from C{source}, or
        say why not.
        """
        if self.held and self.held + size > self.limit:
            return self._refusal(
                f"the proxy is reading {self.held} bytes of request bodies, and this one's"
                f" {size} would pass their budget of {self.limit} ({self._setting})"
            )
        mine = self.bySource.get(source, 0)
        share = self.limit // 2
        if mine and mine + size > share:
            return self._refusal(
                f"the proxy is reading {mine} bytes of request bodies from {source}, and"
                f" this one's {size} would pass one source's share of {share}, half of"
                f" {self._setting}"
            )
        self.held += size
        self.bySource[source] = mine + size
        return None

    def give(self, size: int, source: str) -> None:
        """
        A body of C{size} bytes taken before from C{source} is no longer
        held.
        """
        mine = self.bySource.get(source, 0)
        assert 0 <= size <= mine <= self.held, f"giving back {size} of {mine} bytes held"
        self.held -= size
        if mine == size:
            del self.bySource[source]
        else:
            self.bySource[source] = mine - size

    def _refusal(self, why: str) -> Refusal:
        return Refusal(503, b"Service Unavailable", f"{why}: try again shortly")
