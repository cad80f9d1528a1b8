# -*- test-case-name: promtwist.test.test_grpc_link -*-
"""
The proxy's end of promtwist's own agent link carried by a gRPC call
(L{promtwist.grpc.tunnel}): a bidirectional method, C{/promtwist.Link/Connect},
whose every call is one agent link of the agent port's factory.

The link is the native one, L{promtwist.proxy.link.AgentLink}, made by the
same L{AgentLinkFactory} as a connection to the agent port: the same
handshake places and caps, Hello, tokens and identities, registry,
heartbeats and limits. Its peer address and client certificate are the
HTTP/2 connection's.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.python.failure import Failure

from promtwist.grpc.call import ServerCall
from promtwist.grpc.service import Method, bidirectional
from promtwist.grpc.tunnel import LINK_METHOD, CallTransport
from promtwist.proxy.link import AgentLink, AgentLinkFactory


def linkMethod(links: AgentLinkFactory, clock: IReactorTime) -> Method:
    """
    The method whose calls are agent links of C{links}.
    """

    def connect(call: ServerCall[bytes, bytes]) -> Deferred[None]:
        def cancelled(_: Deferred[None]) -> None:
            transport.callEnded(
                Failure(
                    ConnectionLost(
                        "the gRPC call ended: the agent reset it, or its HTTP/2 connection"
                        " closed or was lost"
                    )
                )
            )

        done: Deferred[None] = Deferred(cancelled)

        def finish() -> None:
            if not done.called:
                done.callback(None)

        transport = CallTransport(
            call, cast(ITCPTransport, call.transport), finish, call.reset, clock
        )
        protocol = links.buildProtocol(cast(IAddress, call.peer))
        if isinstance(protocol, AgentLink):
            # Its Hello, not its headers, proves who the agent is.
            protocol.onEstablished = call.prove
        transport.start(protocol)
        return done

    return bidirectional(LINK_METHOD, connect, bytes, bytes)
