# -*- test-case-name: promtwist.test.test_agentport -*-
"""
The agent port speaks two protocols: promtwist's own link, and gRPC over
HTTP/2 for unmodified prometheus-proxy agents (and promtwist agents with
C{agent.transport = grpc}). The first four bytes a connection sends tell
them apart, under TLS the first decrypted: HTTP/2's client preface begins
C{PRI }, while a native frame begins with its 4-byte length, whose high byte
is 0 for any frame the link accepts; the first byte that differs from the
preface decides at once. So an operator switching from prometheus-proxy
keeps the agents' port (50051), and nginx C{grpc_pass} can point at it; an
HTTP/1.1 C{POST} or C{PUT} is still the native link's to refuse, with its
hint that this is the agent port.

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

# What HTTP/2's client preface begins with: enough to tell it from a
# native frame and from HTTP/1.1.
PREFACE_START = b"PRI "


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
        # What arrived while it could still be either.
        self._seen: bytes | None = b""

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
        if self._seen is not None:
            seen = self._seen + data
            if len(seen) < len(PREFACE_START) and PREFACE_START.startswith(seen):
                # Still the preface's beginning: wait for the rest (the
                # native link's handshake timer runs meanwhile).
                self._seen = seen
                return
            self._seen = None
            data = seen
            if (
                seen.startswith(PREFACE_START)
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
