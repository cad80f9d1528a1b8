# -*- test-case-name: promtwist.test.test_agentport -*-
"""
The agent port speaks two protocols: promtwist's own link, and gRPC over
HTTP/2 for unmodified prometheus-proxy agents (and promtwist agents with
C{agent.transport = grpc}). The first byte a connection sends tells them
apart, under TLS the first byte decrypted: HTTP/2's client preface begins
with C{P} (C{PRI * HTTP/2.0}), while a native frame begins with the high
byte of its 4-byte length, 0 for any frame the link accepts. So an operator
switching from prometheus-proxy keeps the agents' port (50051), and nginx
C{grpc_pass} can point at it.

Every connection starts as a native link, counted against the handshake
caps as before; one that turns out to speak HTTP/2 hands its connection
over to the gRPC server before anything was written to it. With gRPC
agents turned off (C{proxy.agent.grpcEnabled = false}) the port is the
native link's alone, as before.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IAddress, IConsumer, IProtocol
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

from promtwist.grpc.connection import GrpcServerFactory
from promtwist.proxy.link import AgentLink, AgentLinkFactory

# What HTTP/2's client preface begins with.
PREFACE_START = b"P"


class HandedOver(Exception):
    """
    The connection speaks HTTP/2: the native link that held it lets go.
    """


class AgentPortProtocol(Protocol):
    """
    One connection to the agent port: a native link until its first byte
    says otherwise.
    """

    def __init__(self, native: IProtocol, grpc: GrpcServerFactory | None, addr: object) -> None:
        self._active = native
        self._grpc = grpc
        self._addr = addr
        self._deciding = True

    @property
    def active(self) -> IProtocol:
        """
        The protocol that has the connection now.
        """
        return self._active

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._active.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._deciding:
            self._deciding = False
            if (
                data.startswith(PREFACE_START)
                and self._grpc is not None
                and isinstance(self._active, AgentLink)
            ):
                self._handOver()
        self._active.dataReceived(data)

    def _handOver(self) -> None:
        """
        Give the connection to the gRPC server: the native link stops (its
        timers, its handshake place) without writing anything.
        """
        assert self._grpc is not None and self.transport is not None
        native = self._active
        cast(IConsumer, self.transport).unregisterProducer()
        native.connectionLost(Failure(HandedOver("the connection speaks HTTP/2 (gRPC)")))
        self._active = self._grpc.buildProtocol(self._addr)
        self._active.makeConnection(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._active.connectionLost(reason)


class AgentPortFactory(ServerFactory):
    """
    The agent port: native links from C{links}, gRPC connections from
    C{grpc} (none if L{None}).
    """

    def __init__(self, links: AgentLinkFactory, grpc: GrpcServerFactory | None) -> None:
        self.links = links
        self.grpc = grpc

    def startFactory(self) -> None:
        self.links.doStart()

    def stopFactory(self) -> None:
        self.links.doStop()

    def buildProtocol(self, addr: IAddress | None) -> AgentPortProtocol:
        return AgentPortProtocol(self.links.buildProtocol(addr), self.grpc, addr)
