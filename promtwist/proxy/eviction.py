# -*- test-case-name: promtwist.test.test_eviction -*-
"""
Stale-agent eviction (C{proxy.internal.staleAgentCheck*}): agents nothing
was heard from for too long are dropped, so that their scrapes fail at once
instead of at their deadlines.

It is a function over links, not a part of the service that schedules it,
so that it can be driven on a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from twisted.logger import Logger

from promtwist.logs import observer

_log = Logger(namespace="promtwist.proxy.eviction", observer=observer)


class Evictable(Protocol):
    """
    An agent that can be evicted: a native link or a gRPC agent.
    """

    name: str
    agentId: str

    def silentFor(self) -> float:
        """
        Seconds since anything was heard from the agent.
        """

    def evict(self, why: str) -> None:
        """
        Drop the agent for C{why}.
        """


E = TypeVar("E", bound=Evictable)


def evictStale(links: Iterable[E], limit: float) -> list[E]:
    """
    Evict every link in C{links} whose agent has been silent for more than
    C{limit} seconds, by its own clock (C{silentFor}).

    @return: the links evicted.
    """
    evicted = []
    for link in list(links):
        silence = link.silentFor()
        if silence > limit:
            _log.warn(
                "evicting agent {name!r} ({id}): nothing heard for {secs:.0f}s",
                name=link.name,
                id=link.agentId,
                secs=silence,
            )
            link.evict(f"evicted: nothing heard for {silence:.0f}s")
            evicted.append(link)
    return evicted
