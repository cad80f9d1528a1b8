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
source's bodies refused, and two could between them, so the budget is
shared by design rather than first come, first served:

  - a source that is reading no body takes one if it fits in what is
    free: the budget keeps room for such sources, since
  - a source already reading one takes another only while it then holds at
    most half of the budget (its share), and an eighth of the budget (the
    reserve) stays free beside it.

So sources already pushing never take the reserve: whatever they do, a
source with no push in progress finds at least the reserve free, unless
other sources' first bodies took it, which takes as many sources as
pushes of that size fit in it. (The port says what a source is: an
address, or an identity on an address.)
"""

from __future__ import annotations

from promtwist.httpguard import Refusal


class BodyBudget:
    """
    At most C{limit} declared body bytes held at once, across the port's
    connections, shared as the module docstring says; one body alone is
    always taken, so a limit below the largest body a policy allows slows
    pushes down rather than refusing them all.

    @ivar held: the declared bytes of the bodies taken and not given back.
    @ivar bySource: those bytes by source, for the sources that hold some.
    """

    def __init__(self, limit: int, setting: str, what: str = "request bodies") -> None:
        """
        @param setting: the key that sets C{limit}, for the refusal's
            reason.
        @param what: what the bytes are, for the refusal's reason.
        """
        self.limit = limit
        self.held = 0
        self.bySource: dict[str, int] = {}
        self._setting = setting
        self._what = what

    @property
    def share(self) -> int:
        """
        The most one source may hold once it holds a body: half the limit.
        """
        return self.limit // 2

    @property
    def reserve(self) -> int:
        """
        What a source already holding a body leaves free: an eighth of the
        limit.
        """
        return self.limit // 8

    def take(self, size: int, source: str) -> Refusal | None:
        """
        Hold C{size} bytes for a body about to be read from C{source}, or
        say why not.
        """
        held = self.held
        mine = self.bySource.get(source, 0)
        reading = f"the proxy is reading {held} bytes of {self._what}"
        if not mine:
            if held and held + size > self.limit:
                return self._refusal(
                    f"{reading}, and this one's {size} would pass their budget of"
                    f" {self.limit} ({self._setting})"
                )
        elif mine + size > self.share:
            return self._refusal(
                f"{reading}, {mine} of them from {source}, and this one's {size} would pass"
                f" one source's share of {self.share}, half of {self._setting}"
            )
        elif held + size > self.limit - self.reserve:
            return self._refusal(
                f"{reading}, {mine} of them from {source}, and this one's {size} would leave"
                f" less than {self.reserve} (an eighth of {self._setting}) for sources"
                " reading none"
            )
        self.held = held + size
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
