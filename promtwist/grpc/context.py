# -*- test-case-name: promtwist.test.test_grpc_context -*-
"""
What one HTTP/2 connection carries for every call on it.

gRPC's calls are streams of one connection, and some of what a service
knows belongs to the connection rather than to a call: who the peer is (its
transport, and with it a client certificate), and, for upstream's
C{ProxyService}, the agent id the proxy gives each connection and sends as
C{agent-id} in the headers of every call. The server's factory makes one
L{ConnectionContext} per connection when it is made, every call of that
connection carries it (L{promtwist.grpc.call.ServerCall.context}), and it is
told when the connection is lost: the one place a service's per-connection
state is made and dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import ITCPTransport


class ConnectionContext:
    """
    One connection's state, shared by its calls.

    @ivar transport: the connection's transport (the TLS one under TLS),
        for what it proves about its peer; calls send nothing through it.
    @ivar initialMetadata: sent in the response headers of every call on
        the connection (after any the call adds itself), as text; a
        subclass may change it while the connection lives.
    """

    def __init__(self, transport: ITCPTransport) -> None:
        self.transport = transport
        self.initialMetadata: list[tuple[str, str]] = []

    def connectionLost(self) -> None:
        """
        The connection is gone, and its calls already cancelled: drop what
        belongs to it. Nothing by default.
        """


#: What makes a connection's context, from its transport.
ContextFactory = Callable[[ITCPTransport], ConnectionContext]
