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

Each protocol admits its own connections, once it is known: a native link
is counted against the handshake caps and may be sent a native C{Reject};
a gRPC connection against L{GrpcAdmission}'s caps, and refused in HTTP/2
(L{GrpcRefusal}), so that neither peer is answered in a protocol it does
not speak, and a front end's many connections from one address are not
held to the native per-address handshake share. Until its first bytes
decide, a connection has proved nothing and is bounded as such: it must
send them within C{proxy.internal.handshakeTimeoutSecs} of being accepted,
and connections still undecided are capped in total and per address by
what the two protocols admit together (one over is closed without a word:
no one knows what it speaks). With gRPC agents turned off
(C{proxy.agent.grpcEnabled = false}) an HTTP/2 client is told so in a
GOAWAY, and the log names the setting.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

from promtwist.addresses import peerName
from promtwist.grpc.connection import GrpcRefusal, GrpcServerFactory, GrpcServerProtocol
from promtwist.proxy.admission import GrpcAdmission, PendingHandshakes, hostOf
from promtwist.proxy.link import AgentLinkFactory
from promtwist.tls import describeServerTLSFailure

# What HTTP/2's client preface begins with: enough to tell it from a
# native frame and from HTTP/1.1.
PREFACE_START = b"PRI "

GRPC_OFF = (
    "this proxy does not serve gRPC agents (proxy.agent.grpcEnabled = false): a"
    " prometheus-proxy agent, or a promtwist agent with agent.transport = grpc, needs it"
    " turned on"
)


class AgentPortProtocol(Protocol):
    """
    One connection to the agent port: undecided until its first bytes say
    which protocol it speaks, then that protocol's.
    """

    def __init__(self, factory: AgentPortFactory, addr: IAddress | None) -> None:
        self._factory = factory
        self.addr = addr
        self.host = hostOf(addr)
        self._active: IProtocol | None = None
        # What arrived while it could still be either.
        self._seen = b""
        self._timer: IDelayedCall | None = None

    @property
    def active(self) -> IProtocol | None:
        """
        The protocol that has the connection, once its first bytes decided.
        """
        return self._active

    def connectionMade(self) -> None:
        self._timer = self._factory.links.clock.callLater(
            self._factory.links.settings.handshake_timeout_secs, self._undecided
        )

    def dataReceived(self, data: bytes) -> None:
        if self._active is not None:
            self._active.dataReceived(data)
            return
        seen = self._seen + data
        if len(seen) < len(PREFACE_START) and PREFACE_START.startswith(seen):
            # Still the preface's beginning: wait for the rest.
            self._seen = seen
            return
        self._seen = b""
        self._decided()
        if seen.startswith(PREFACE_START):
            active = self._factory.grpcProtocol(self)
        else:
            active = self._factory.links.buildProtocol(self.addr)
        self._active = active
        assert self.transport is not None
        active.makeConnection(self.transport)
        active.dataReceived(seen)

    def _decided(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self._factory.undecided.leave(self.host)
            self._factory.connections.discard(self)

    def _undecided(self) -> None:
        self._timer = None
        self._factory.undecided.leave(self.host)
        self._factory.connections.discard(self)
        self._factory.links.warnings.warn(
            "undecided connection",
            "closing the connection from {peer}: it sent no agent protocol within {secs:g}s",
            peer=peerName(self.transport),
            secs=self._factory.links.settings.handshake_timeout_secs,
        )
        cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._decided()
        self._factory.connections.discard(self)
        active = self._active
        if active is None:
            # Under TLS nothing is decrypted before the handshake: one that
            # failed did so here.
            tls = describeServerTLSFailure(reason)
            if tls is not None:
                self._factory.links.warnings.warn(
                    "TLS handshake",
                    "TLS handshake with {peer} on the agent port failed: {cause}",
                    peer=peerName(self.transport),
                    cause=tls,
                )
            return
        active.connectionLost(reason)
        if isinstance(active, GrpcServerProtocol):
            self._factory.grpcAdmission.leave(self.host, active.proven)

    def abortUndecided(self) -> None:
        """
        The agent port stops: a connection that has not said what it
        speaks is aborted.
        """
        if self._active is None and self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()


class _Dropped(Protocol):
    """
    A connection over the undecided caps: closed unanswered.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class AgentPortFactory(ServerFactory):
    """
    The agent port: native links from C{links}, gRPC connections from
    C{grpc} (none if L{None}).

    @ivar undecided: connections that have not sent enough to tell their
        protocol.
    @ivar grpcAdmission: the gRPC connections' caps.
    @ivar connections: the undecided connections.
    """

    def __init__(self, links: AgentLinkFactory, grpc: GrpcServerFactory | None) -> None:
        self.links = links
        self.grpc = grpc
        self.connections: set[AgentPortProtocol] = set()
        settings = links.settings
        grpcOn = grpc is not None
        self.grpcAdmission = GrpcAdmission(
            settings.max_grpc_connections,
            settings.max_unauthenticated_grpc_connections,
            settings.max_unauthenticated_grpc_connections_per_address,
        )
        self.undecided = PendingHandshakes(
            settings.max_pending_handshakes
            + settings.max_waiting_handshakes
            + (settings.max_unauthenticated_grpc_connections if grpcOn else 0),
            max(
                settings.max_pending_handshakes_per_address,
                settings.max_unauthenticated_grpc_connections_per_address if grpcOn else 0,
            ),
            what="undecided connection",
            setting="",
            kind="undecided_connections",
        )

    def startFactory(self) -> None:
        self.links.doStart()

    def stopFactory(self) -> None:
        self.links.doStop()
        if self.grpc is not None:
            self.grpc.warnings.flush()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        host = hostOf(addr)
        refusal = self.undecided.refusal(host)
        if refusal is not None:
            self.links.refused(host, *refusal)
            return _Dropped()
        self.undecided.enter(host)
        connection = AgentPortProtocol(self, addr)
        self.connections.add(connection)
        return connection

    def abortUndecided(self) -> None:
        """
        Abort every connection that has not said what it speaks (the proxy
        stops; the others are their protocols' to close).
        """
        for connection in list(self.connections):
            connection.abortUndecided()

    def grpcProtocol(self, connection: AgentPortProtocol) -> Protocol:
        """
        The protocol for C{connection}, which began HTTP/2's preface: a
        gRPC connection admitted, or told why not.
        """
        host = connection.host
        if self.grpc is None:
            self.links.refused(host, "grpc_disabled", GRPC_OFF)
            return GrpcRefusal(GRPC_OFF, self.links.clock)
        refusal = self.grpcAdmission.refusal(host)
        if refusal is not None:
            kind, message = refusal
            self.links.refused(host, kind, message)
            return GrpcRefusal(f"{message}; retry later", self.links.clock)
        admission = self.grpcAdmission
        admission.enter(host)
        protocol = self.grpc.buildProtocol(connection.addr)
        protocol.whenProven.addCallback(lambda _: admission.proven(host))
        return protocol
