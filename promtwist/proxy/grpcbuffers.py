# -*- test-case-name: promtwist.test.test_grpc_buffers -*-
"""
The agent port's budget of unfinished gRPC messages, shared by source.

Each stream of a gRPC connection may be sent a message of up to 4 MiB and
each connection up to its 16 MiB window of them before its handlers take
a byte, so a token holder that opens many connections and leaves a message
unfinished on each would hold gigabytes of the proxy's memory. No cap on
connections per identity helps: a front end such as nginx opens one from
its one address for each call of each agent behind it, all on one token,
so such a cap would have to allow all of them. What is bounded instead is
the bytes: every message is charged its declared size to one
L{BodyBudget} of C{proxy.internal.maxGrpcMessageBufferMBytes} when its
prefix arrives, and given back when it is whole or its call ends (and it
must be whole within a minute, L{promtwist.grpc.limits.Limits}). The
budget is shared by source, an identity on an address (or IPv6 /64): one
source may hold half of it, and leaves an eighth for sources holding none.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress

from promtwist.config.settings import Identity, MiB, ProxySettings
from promtwist.grpc.call import ServerCall
from promtwist.proxy.admission import hostOf
from promtwist.proxy.bodybudget import BodyBudget


def sourceName(identity: Identity | None, peer: object) -> str:
    """
    The source a gRPC call of C{identity} from C{peer} counts under: the
    identity on its address, or the address alone for a call that proved
    none at its headers.
    """
    host = hostOf(peer if IAddress.providedBy(peer) else None) or "?"
    if identity is None:
        return f"calls of no identity yet from {host}"
    return f"identity {identity.name} from {host}"


class UnfinishedMessages:
    """
    A L{promtwist.grpc.connection.MessageBudget} of
    C{proxy.internal.maxGrpcMessageBufferMBytes}, by L{sourceName}.
    """

    def __init__(self, settings: ProxySettings) -> None:
        self.budget = BodyBudget(
            settings.max_grpc_message_buffer_mbytes * MiB,
            "proxy.internal.maxGrpcMessageBufferMBytes",
            "unfinished gRPC messages",
        )

    def sourceOf(self, call: ServerCall[Any, Any]) -> str:
        authority = call.authority
        return sourceName(authority if isinstance(authority, Identity) else None, call.peer)

    def take(self, size: int, source: str) -> str | None:
        refusal = self.budget.take(size, source)
        return None if refusal is None else refusal.reason

    def give(self, size: int, source: str) -> None:
        self.budget.give(size, source)
