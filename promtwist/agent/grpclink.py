# -*- test-case-name: promtwist.test.test_grpc_link -*-
"""
The agent's end of promtwist's own link carried by a gRPC call
(C{agent.transport = grpc}): an endpoint that dials the proxy (or the
front end before it) over HTTP/2, opens the one call
C{/promtwist.Link/Connect}, and connects the agent's native link
(L{promtwist.agent.connection.ProxyConnection}) to the call's messages.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from zope.interface import implementer

from promtwist.grpc.client import CallRequest, GrpcClientProtocol
from promtwist.grpc.limits import Limits
from promtwist.grpc.tunnel import LINK_METHOD, CallTransport


class _OneCall(Factory):
    """
    Makes the HTTP/2 connection of one attempt, with its call.
    """

    noisy = False

    def __init__(self, request: CallRequest, limits: Limits, clock: IReactorTime) -> None:
        self.request = request
        self.limits = limits
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> GrpcClientProtocol:
        return GrpcClientProtocol(self.request, self.limits, self.clock)


@implementer(IStreamClientEndpoint)
class GrpcLinkEndpoint:
    """
    Connects a protocol to a new C{/promtwist.Link/Connect} call on a new
    HTTP/2 connection through C{endpoint} (TCP, or TLS offering ALPN
    C{h2}), which lives and ends with the protocol's connection.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        authority: str,
        clock: IReactorTime,
        limits: Limits | None = None,
    ) -> None:
        """
        @param authority: the C{:authority} of the call, the C{host:port}
            dialled.
        """
        self._endpoint = endpoint
        self._calls = _OneCall(CallRequest(LINK_METHOD, authority), limits or Limits(), clock)
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        connection = cast(GrpcClientProtocol, await self._endpoint.connect(self._calls))
        assert connection.transport is not None
        http2 = connection.transport
        protocol = protocolFactory.buildProtocol(http2.getPeer())
        assert protocol is not None
        call = connection.call
        transport = CallTransport(call, http2, call.halfClose, call.cancel, self._clock)
        call.whenDone().addErrback(transport.callEnded)
        transport.start(protocol)
        return protocol
