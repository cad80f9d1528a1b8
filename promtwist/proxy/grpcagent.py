# -*- test-case-name: promtwist.test.test_grpc_proxyservice -*-
"""
Unmodified prometheus-proxy agents on the agent port: upstream's
C{ProxyService} (C{promtwist/grpc/proxy_service.proto}) answered on the
gRPC transport, each agent one more kind of link in the registry.

A L{GrpcAgent} is to the registry what a native L{promtwist.proxy.link}
link is (an L{AgentHandle}) and to the relay what any agent is (a
L{ScrapeSource} whose answers arrive on a L{ScrapeStream}): the same
ownership and consolidation rules, identities, limits, reasons and
eviction apply to it. L{GrpcAgents} answers the calls.

Both of upstream's modes are served at once:

  - C{connectAgent} binds the agent to its HTTP/2 connection
    (L{AgentConnection}, whose id every call's headers carry as
    C{agent-id}); the agent leaves when the connection does;
  - C{connectAgentWithTransportFilterDisabled} makes an agent not bound to
    any connection (calls behind an L7 proxy arrive on several), whose id
    is in the answer; it leaves when its request stream ends, or is
    evicted.

Agent ids are random (128 bits), not upstream's 1, 2, 3, and an agent
answers only to calls proving the identity that opened it (its token or
client certificate), on its own connection when it is bound to one.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.logger import Logger

from promtwist.addresses import peerName
from promtwist.config.settings import Identity, MiB, ProxySettings
from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.grpc.call import CallCancelled, ServerCall
from promtwist.grpc.context import ConnectionContext
from promtwist.grpc.limits import Limits
from promtwist.grpc.service import Authorizer, Method, clientStreaming, serverStreaming, unary
from promtwist.grpc.status import GrpcError, StatusCode
from promtwist.logs import RepeatedWarnings, clip, hostShown, observer
from promtwist.metrics import ProxyMetrics
from promtwist.protocol.promtwist_pb2 import Frame
from promtwist.proxy.admission import AuthThrottle, hostOf
from promtwist.proxy.auth import AuthenticationFailed, Authenticator
from promtwist.proxy.bodybudget import BodyBudget
from promtwist.proxy.grpcanswers import ChunkedResults, Transfers, answerOf
from promtwist.proxy.grpcbuffers import sourceName
from promtwist.proxy.registry import AgentHandle, RegistrationRefused, Registry
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.stream import ScrapeStream, TransferMetrics
from promtwist.tls import peerCommonName

KIND = "gRPC agent"
# What one chunked result may hold: upstream's
# proxy.internal.maxZippedContentSizeMBytes default (that key is accepted
# for compatibility and not read).
MAX_ZIPPED_BYTES = 5 * MiB
SERVICE = "/ProxyService/"
# Upstream's words, which its agents and operators know.
UNAUTHENTICATED = "Missing or invalid agent token"
_L7_HINT = (
    ": an agent behind an L7 proxy such as nginx grpc_pass must run with"
    " transportFilterDisabled=true, since its calls arrive on several connections"
)

# Departed agents remembered for the refusals of calls still naming them:
# a few hundred bytes each.
DEPARTED_REMEMBERED = 1024

M = TypeVar("M", bound=Message)
_log = Logger(namespace="promtwist.proxy.grpcagent", observer=observer)


def newAgentId() -> str:
    """
    An agent id no one can guess: 128 random bits, as URL-safe base64.
    """
    return secrets.token_urlsafe(16)


class AgentConnection(ConnectionContext):
    """
    One HTTP/2 connection to the agent port's gRPC server: its id goes in
    the headers of every call on it (upstream's C{agent-id}), and the agent
    C{connectAgent} bound to it leaves when it is lost.

    @ivar agent: the agent bound to this connection, once it connected.
    """

    def __init__(self, transport: ITCPTransport, agents: GrpcAgents) -> None:
        super().__init__(transport)
        self.agentId = newAgentId()
        self.initialMetadata.append(("agent-id", self.agentId))
        self.agent: GrpcAgent | None = None
        self._agents = agents

    def connectionLost(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            self._agents.remove(agent, "its HTTP/2 connection closed", "lost")


class GrpcAgent:
    """
    One upstream agent: a registry agent, a scrape source, and the link of
    its scrapes' streams.

    @ivar connection: the connection it is bound to (C{connectAgent}), or
        L{None} (C{connectAgentWithTransportFilterDisabled}).
    @ivar registered: whether C{registerAgent} put it in the registry.
    """

    kind = KIND
    roundTripSeconds: float | None = None

    def __init__(
        self,
        agents: GrpcAgents,
        agentId: str,
        identity: Identity,
        peer: str,
        source: str,
        connection: AgentConnection | None,
    ) -> None:
        self.agents = agents
        self.agentId = agentId
        self.identity = identity
        self.peer = peer
        self.source = source
        self.connection = connection
        self.name = ""
        self.hostName = ""
        self.launchId = ""
        self.consolidated = False
        self.registered = False
        self.gone = False
        self.establishedAt: float | None = None
        self.MAX_LENGTH = agents.limits.maxMessageBytes
        self._heard = agents.clock.seconds()
        self._scrapes: dict[int, ScrapeStream] = {}
        # Requests waiting for the agent's readRequestsFromProxy stream, or
        # for the one before them to have gone down it.
        self._queue: deque[pb.ScrapeRequest] = deque()
        self._sending = False
        self._pumping = False
        self._requests: ServerCall[pb.AgentInfo, pb.ScrapeRequest] | None = None
        self._requestsDone: Deferred[None] | None = None
        # Until registerAgent: an agent that never registers is dropped, as
        # a native link without its Hello.
        self._handshake: IDelayedCall | None = agents.clock.callLater(
            agents.settings.handshake_timeout_secs, self._notRegistered
        )

    def __repr__(self) -> str:
        return f"<GrpcAgent {self.name!r} {self.agentId}>"

    # Liveness (promtwist.proxy.eviction).

    def heard(self) -> None:
        """
        The agent showed it is alive: what upstream counts as activity.
        """
        self._heard = self.agents.clock.seconds()

    def silentFor(self) -> float:
        return self.agents.clock.seconds() - self._heard

    def evict(self, why: str) -> None:
        self.agents.metrics.agentEvicted()
        self.agents.remove(self, why, "evicted")

    def registering(self) -> None:
        """
        The agent called registerAgent: its handshake is over.
        """
        self.registered = True
        self._endHandshake()

    def _endHandshake(self) -> None:
        timer, self._handshake = self._handshake, None
        if timer is not None and timer.active():
            timer.cancel()

    def _notRegistered(self) -> None:
        self._handshake = None
        self.agents.warnings.warn(
            "gRPC handshake timeout",
            "gRPC agent {id} from {peer} did not call registerAgent within {secs}s"
            " of connecting; dropped",
            id=self.agentId,
            peer=self.peer,
            secs=self.agents.settings.handshake_timeout_secs,
        )
        self.agents.remove(
            self,
            "no registerAgent within proxy.internal.handshakeTimeoutSecs of connecting",
            "lost",
        )

    # ScrapeSource.

    def scrape(self, call: ScrapeCall) -> ScrapeStream:
        scrapeId = next(self.agents.scrapeIds)
        stream = ScrapeStream(self, scrapeId, self.agents.maxZippedBytes)
        if self.gone:
            stream.linkLost("the agent is gone")
            return stream
        self._scrapes[scrapeId] = stream
        request = pb.ScrapeRequest(
            agent_id=self.agentId,
            scrape_id=scrapeId,
            path=call.path,
            accept=call.accept,
            debug_enabled=self.agents.settings.admin_debug_enabled,
            encodedQueryParams=call.query,
            authHeader=call.authorization,
        )
        self._queue.append(request)
        self._sendQueued()
        return stream

    def stream(self, scrapeId: int) -> ScrapeStream | None:
        """
        The stream awaiting this agent's answer to C{scrapeId}, if one does.
        """
        return self._scrapes.get(scrapeId)

    @property
    def scrapesInFlight(self) -> int:
        return len(self._scrapes)

    @property
    def transfersInProgress(self) -> int:
        return sum(stream.transferring for stream in self._scrapes.values())

    # StreamLink.

    @property
    def metrics(self) -> TransferMetrics:
        return self.agents.metrics

    def forget(self, scrapeId: int) -> None:
        self._scrapes.pop(scrapeId, None)
        # Its chunked transfer, on whichever call, holds nothing more.
        self.agents.transfers.purge(scrapeId)
        if self._queue:
            # Not sent yet (no request stream is open): never will be.
            self._queue = deque(r for r in self._queue if r.scrape_id != scrapeId)

    def sendIfConnected(self, frame: Frame) -> None:
        # Credit and cancellations are promtwist's; upstream's agent knows
        # neither (its answers are paced by HTTP/2's flow control).
        pass

    def violation(self, why: str) -> None:
        self.agents.remove(self, f"protocol violation: {why}", "lost")

    # AgentHandle.

    def pathRoleChanged(
        self,
        path: str,
        role: str,
        reason: str,
        holder: AgentHandle,
        since: float,
        position: int = 0,
    ) -> None:
        _log.info(
            "gRPC agent {name!r} ({id}) is now {role} of {path} ({reason})",
            name=clip(self.name),
            id=self.agentId,
            role=role,
            path=clip(path),
            reason=reason,
        )

    # The request stream.

    def readRequests(self, call: ServerCall[pb.AgentInfo, pb.ScrapeRequest]) -> Deferred[None]:
        """
        C{call} is the agent's readRequestsFromProxy: the scrapes go down it
        until the agent leaves (the call then ends OK, and the agent
        reconnects, as upstream's does) or the call ends (the agent leaves).
        """
        if self._requests is not None:
            raise GrpcError(
                StatusCode.FAILED_PRECONDITION,
                f"agent {self.agentId} already reads its requests on another stream",
            )
        self._requests = call
        done: Deferred[None] = Deferred(lambda _: self._requestsEnded(call))
        self._requestsDone = done
        self._sendQueued()
        return done

    def _requestsEnded(self, call: ServerCall[Any, Any]) -> None:
        if self._requests is call:
            self._requests = self._requestsDone = None
            self.agents.remove(self, "its readRequestsFromProxy stream ended", "lost")

    def _sendQueued(self) -> None:
        """
        Send the next request, once the one before it has gone: an agent
        that does not read its stream then holds only the requests of the
        scrapes still waiting for it (L{forget} drops the others), not one
        for every scrape ever made.
        """
        if self._pumping:
            # A send that went at once: the loop below goes on.
            return
        self._pumping = True
        try:
            call = self._requests
            while call is not None and self._queue and not self._sending and not call.cancelled:
                request = self._queue.popleft()
                self._sending = True
                sent = call.send(request)
                sent.addCallbacks(self._sent, self._notSent, errbackArgs=(request.scrape_id,))
        finally:
            self._pumping = False

    def _sent(self, _: None) -> None:
        self._sending = False
        self._sendQueued()

    def _notSent(self, failure: Any, scrapeId: int) -> None:
        self._sending = False
        failure.trap(CallCancelled)
        stream = self._scrapes.get(scrapeId)
        if stream is not None:
            stream.linkLost("the request stream ended before the scrape reached the agent")

    def leave(self, why: str) -> None:
        """
        The agent is gone: its scrapes fail with C{why}, its request stream
        ends.
        """
        self.gone = True
        self._endHandshake()
        self._queue.clear()
        scrapes, self._scrapes = self._scrapes, {}
        for stream in scrapes.values():
            stream.linkLost(why)
        done, self._requestsDone = self._requestsDone, None
        self._requests = None
        if done is not None:
            done.callback(None)


class GrpcAgents:
    """
    The agent port's C{ProxyService}: every upstream agent, and the
    handlers of its calls.

    @ivar scrapeIds: scrape ids, proxy-wide (upstream's are too).
    """

    def __init__(
        self,
        settings: ProxySettings,
        registry: Registry,
        authenticator: Authenticator,
        throttle: AuthThrottle,
        metrics: ProxyMetrics,
        clock: IReactorTime,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.authenticator = authenticator
        self.throttle = throttle
        self.metrics = metrics
        self.clock = clock
        self.limits = limits if limits is not None else Limits()
        self.maxZippedBytes = MAX_ZIPPED_BYTES
        self.transfers = Transfers(
            metrics,
            MAX_ZIPPED_BYTES,
            BodyBudget(
                settings.max_chunked_buffer_mbytes * MiB,
                "proxy.internal.maxChunkedBufferMBytes",
                "chunked results",
            ),
        )
        self.scrapeIds: Iterator[int] = itertools.count()
        self._pathIds = itertools.count()
        self._agents: dict[str, GrpcAgent] = {}
        # Why recent agents left, and whether each was bound to its
        # connection, by id (oldest first).
        self._departed: OrderedDict[str, _Departed] = OrderedDict()
        self.warnings = RepeatedWarnings(_log, clock)

    def context(self, transport: ITCPTransport) -> AgentConnection:
        return AgentConnection(transport, self)

    def connected(self) -> list[GrpcAgent]:
        """
        The agents that registered and have not left.
        """
        return [agent for agent in self._agents.values() if agent.registered]

    def agents(self) -> list[GrpcAgent]:
        """
        Every agent, registered or not.
        """
        return list(self._agents.values())

    def unbound(self) -> list[GrpcAgent]:
        """
        The agents not bound to a connection, registered or not: always
        evicted when silent, as upstream evicts them whatever its settings.
        """
        return [agent for agent in self._agents.values() if agent.connection is None]

    def remove(self, agent: GrpcAgent, why: str, reason: str) -> None:
        """
        C{agent} leaves: its paths go to their standbys, its scrapes fail.

        @param reason: for the registry, a key of
            L{promtwist.proxy.registry.HOLDER_CHANGE_REASONS}.
        """
        if self._agents.get(agent.agentId) is not agent:
            return
        del self._agents[agent.agentId]
        self._departed[agent.agentId] = _Departed(why, agent.connection is not None, agent.identity)
        while len(self._departed) > DEPARTED_REMEMBERED:
            self._departed.popitem(last=False)
        if agent.connection is not None and agent.connection.agent is agent:
            agent.connection.agent = None
        if agent.registered:
            self.registry.removeAgent(agent, reason)
        agent.leave(why)
        if not agent.registered:
            # Anyone with a token can connect and leave at will: only agents
            # that registered are news (rate-limited warnings say the rest).
            _log.debug(
                "unregistered gRPC agent {id} ({peer}) left: {why}",
                id=agent.agentId,
                peer=agent.peer,
                why=why,
            )
            return
        _log.info(
            "gRPC agent {name!r} ({id}, {peer}) left: {why}",
            name=clip(agent.name),
            id=agent.agentId,
            peer=agent.peer,
            why=why,
        )

    def stop(self) -> None:
        """
        The proxy stops: every agent leaves.
        """
        for agent in list(self._agents.values()):
            self.remove(agent, "the proxy is shutting down", "lost")

    def revoked(self) -> None:
        """
        The identities were reloaded: agents whose identity no longer holds
        leave; they prove a new one when they reconnect.
        """
        for agent in list(self._agents.values()):
            if not self.authenticator.stillHolds(agent.identity):
                self.remove(agent, "its identity changed on reload", "reload")

    # Who calls.

    def _identify(self, call: ServerCall[Any, Any], agent: GrpcAgent | None = None) -> Identity:
        """
        The identity a call proves, checked on every call as upstream's
        interceptor checks the token.

        While the failed-token throttle holds the call's address, a new
        authentication (C{agent} L{None}) is refused without its token being
        checked, as the native port refuses a C{Hello}. A call naming
        C{agent}, already established, passes only if it proves exactly that
        agent's identity, so guesses from an address (all of a front end's
        agents share it) do not lock out the agents that proved their token;
        any other token, wrong or valid for another identity, gets the
        throttled answer too and counts as a failure, so the answer tells a
        guesser nothing about its token.

        @param agent: the established agent the call names, if any.

        @raise GrpcError: C{UNAUTHENTICATED} with upstream's words, or
            saying the address is throttled.
        """
        host = hostOf(_address(call.peer))
        blocked = self.throttle.blockedFor(host)
        if blocked and agent is None:
            self.warnings.warn(
                "gRPC authentication throttled",
                "gRPC call {method} from {peer} refused without checking its token:"
                " {peer} is throttled",
                method=call.method,
                peer=host or "?",
            )
            raise self._throttled(host, blocked)
        token = call.get("agent-token")
        try:
            identity = self.authenticator.authenticate(
                token if isinstance(token, str) else "", peerCommonName(call.transport)
            )
            if blocked and agent is not None and identity != agent.identity:
                raise AuthenticationFailed(
                    f"it proves identity {identity.name}, not that of agent {agent.agentId}"
                )
        except AuthenticationFailed as e:
            self.throttle.failed(host)
            self.warnings.warn(
                "gRPC authentication",
                "gRPC call {method} from {peer} refused: {why}",
                method=call.method,
                peer=host or "?",
                why=str(e),
            )
            if blocked:
                raise self._throttled(host, blocked) from None
            self.metrics.rejected("grpc_unauthenticated")
            raise GrpcError(StatusCode.UNAUTHENTICATED, UNAUTHENTICATED) from None
        return identity

    def _throttled(self, host: str, blocked: float) -> GrpcError:
        """
        The answer to a call from C{host} while the throttle holds it for
        C{blocked} more seconds, whatever the call's token.
        """
        self.metrics.rejected("grpc_throttled")
        return GrpcError(
            StatusCode.UNAUTHENTICATED,
            f"too many failed authentication attempts from {host or '?'}; retry in"
            f" {blocked:.0f} s (proxy.internal.maxAuthFailuresPerAddress)",
        )

    def authorizeNamed(self, call: ServerCall[Any, Any]) -> Identity | None:
        """
        At the headers of a call that names its agent in its body (every
        call but the connects): its identity, checked as it opens (for the
        agent its connection carries, if any), unless the throttle holds its
        address and its connection carries no agent. It is then undecided
        (L{None}: the connection is not proven by it): an agent bound to no
        connection names itself only in each request or result, which is
        checked against the agent it names (L{agentFor}), so that agent's
        calls still go through, and every other call gets the throttled
        answer, as at its headers.

        @raise GrpcError: as L{_identify}.
        """
        connection = call.context
        carried = connection.agent if isinstance(connection, AgentConnection) else None
        if carried is not None:
            return self._identify(call, carried)
        if not self.throttle.blockedFor(hostOf(_address(call.peer))):
            return self._identify(call)
        return None

    def agentFor(self, call: ServerCall[Any, Any], agentId: str, rpc: str) -> GrpcAgent:
        """
        The agent C{agentId} names, if this call may act for it: the call
        proves the agent's identity and, for an agent bound to a
        connection, comes on that connection.

        @raise _Refused: why not, in upstream's words where it has some.
        """
        agent = self._agents.get(agentId)
        identity = self._identify(call, agent)
        connection = call.context
        if agent is None:
            raise _Refused(
                f"Invalid agentId: {clip(agentId, 64)} ({rpc})"
                + self._departure(agentId, identity, connection),
                StatusCode.NOT_FOUND,
            )
        if agent.connection is not None and agent.connection is not connection:
            raise _Refused(
                f"agentId {clip(agentId, 64)} does not match the connection's agentId ({rpc})"
                + _L7_HINT,
                StatusCode.PERMISSION_DENIED,
            )
        if agent.identity != identity:
            raise _Refused(
                f"agentId {clip(agentId, 64)} belongs to another identity than this call's ({rpc})",
                StatusCode.PERMISSION_DENIED,
            )
        # For an established agent: proof enough for the connection, if
        # its headers decided nothing (authorizeNamed).
        call.prove()
        return agent

    def _departure(self, agentId: str, identity: Identity, connection: object) -> str:
        """
        What the proxy remembers of agent C{agentId} that left, for the
        refusal of a call of its identity naming it: why it left and, for
        one bound to a connection when the call came on another, the L7
        hint, which holds only then.
        """
        departed = self._departed.get(agentId)
        if departed is None or departed.identity != identity:
            return ""
        elsewhere = not isinstance(connection, AgentConnection) or connection.agentId != agentId
        return f"; it left: {departed.why}" + (_L7_HINT if departed.bound and elsewhere else "")

    def _newAgent(
        self, call: ServerCall[Any, Any], connection: AgentConnection | None
    ) -> GrpcAgent:
        identity = self._identify(call)
        source = sourceName(identity, call.peer)
        bound = self.settings.max_pending_handshakes
        waiting = [agent for agent in self._agents.values() if not agent.registered]
        if len(waiting) >= bound:
            # As the native port bounds connections before their Hello:
            # connects cost nothing to send, and each is kept until its
            # handshake deadline.
            self.metrics.rejected("pending_handshakes")
            raise GrpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"{len(waiting)} gRPC agents connected and have not called registerAgent"
                " (proxy.internal.maxPendingHandshakes); retry later",
            )
        share = bound - bound // 8
        mine = sum(agent.source == source for agent in waiting)
        if mine >= share:
            # So that one holder of a token, connecting without registering,
            # leaves an eighth of the bound to every other.
            self.metrics.rejected("pending_handshakes_per_source")
            raise GrpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"{mine} gRPC agents of {source} connected and have not called registerAgent,"
                f" all one source may have of proxy.internal.maxPendingHandshakes ({bound})"
                " less an eighth kept for others; retry later",
            )
        agentId = connection.agentId if connection is not None else newAgentId()
        agent = GrpcAgent(self, agentId, identity, _peerName(call), source, connection)
        self._agents[agentId] = agent
        self.metrics.agentConnected()
        return agent

    # The calls.

    def connectAgent(self, request: pb.Empty, call: ServerCall[Any, Any]) -> pb.Empty:
        connection = call.context
        assert isinstance(connection, AgentConnection)
        if connection.agent is not None:
            # A real agent connects once per connection: a second connect
            # is another agent's, multiplexed by a front end.
            raise GrpcError(
                StatusCode.FAILED_PRECONDITION,
                f"this connection already carries agent {connection.agentId}" + _L7_HINT,
            )
        connection.agent = self._newAgent(call, connection)
        return pb.Empty()

    def connectAgentWithTransportFilterDisabled(
        self, request: pb.Empty, call: ServerCall[Any, Any]
    ) -> pb.AgentInfo:
        return pb.AgentInfo(agent_id=self._newAgent(call, None).agentId)

    def registerAgent(
        self, request: pb.RegisterAgentRequest, call: ServerCall[Any, Any]
    ) -> pb.RegisterAgentResponse:
        try:
            agent = self.agentFor(call, request.agent_id, "registerAgent")
        except _Refused as refused:
            return pb.RegisterAgentResponse(
                valid=False, reason=refused.reason, agent_id=request.agent_id
            )
        agent.heard()
        if not agent.registered:
            maxAgents = self.settings.max_agents
            if self.registry.agentCount() >= maxAgents:
                self.metrics.rejected("too_many_agents")
                return pb.RegisterAgentResponse(
                    valid=False,
                    reason=f"this proxy already serves {maxAgents} agents"
                    " (proxy.internal.maxAgents)",
                    agent_id=request.agent_id,
                )
            limit = self.settings.max_agent_name_length
            agent.name = clip(request.agent_name, limit) or "unnamed"
            agent.hostName = clip(request.host_name, limit)
            agent.launchId = clip(request.launch_id, 64)
            agent.consolidated = request.consolidated
            agent.registering()
            agent.establishedAt = self.clock.seconds()
            self.registry.addAgent(agent)
            _log.info(
                "gRPC agent {name!r} ({host}, {peer}, identity {identity}) connected as {id}",
                name=clip(agent.name),
                host=hostShown(agent.hostName),
                peer=agent.peer,
                identity=agent.identity.name,
                id=agent.agentId,
            )
        return pb.RegisterAgentResponse(valid=True, agent_id=agent.agentId)

    def registerPath(
        self, request: pb.RegisterPathRequest, call: ServerCall[Any, Any]
    ) -> pb.RegisterPathResponse:
        try:
            agent = self._registered(call, request.agent_id, "registerPath")
            agent.heard()
            reason = self._claim(agent, request.path, request.labels)
        except _Refused as refused:
            return pb.RegisterPathResponse(
                valid=False, reason=refused.reason, path_count=self._pathCount(), path_id=-1
            )
        return pb.RegisterPathResponse(
            valid=True,
            reason=reason,
            path_count=self._pathCount(),
            path_id=next(self._pathIds),
        )

    def _claim(self, agent: GrpcAgent, path: str, labelText: str) -> str:
        """
        Register C{path} for C{agent}; what to tell it besides C{valid}.

        @raise _Refused: why it is refused.
        """
        path = path.removeprefix("/")
        if "/" in path:
            raise _Refused(
                f"Multi-segment path not supported (use a single path segment): /{clip(path)}"
            )
        labels = _labels(labelText)
        try:
            placement = self.registry.registerPath(agent, path, path, labels)
        except RegistrationRefused as e:
            raise _Refused(str(e)) from None
        if placement.position:
            # Upstream's agent knows no standbys: it is told valid, and why
            # it is not scraped yet.
            return (
                f"standby {placement.position} for /{path}: agent"
                f" {clip(placement.holder.name)!r} holds it; this agent serves it when"
                " that one leaves"
            )
        return ""

    def unregisterPath(
        self, request: pb.UnregisterPathRequest, call: ServerCall[Any, Any]
    ) -> pb.UnregisterPathResponse:
        path = request.path.removeprefix("/")
        try:
            agent = self._registered(call, request.agent_id, "unregisterPath")
            agent.heard()
            try:
                self.registry.unregisterPath(agent, path)
            except RegistrationRefused as e:
                raise _Refused(f"Unable to remove path /{clip(path)} - {e}") from None
        except _Refused as refused:
            return pb.UnregisterPathResponse(valid=False, reason=refused.reason)
        return pb.UnregisterPathResponse(valid=True)

    def pathMapSize(
        self, request: pb.PathMapSizeRequest, call: ServerCall[Any, Any]
    ) -> pb.PathMapSizeResponse:
        self._identify(call, self._agents.get(request.agent_id))
        return pb.PathMapSizeResponse(path_count=self._pathCount())

    def sendHeartBeat(
        self, request: pb.HeartBeatRequest, call: ServerCall[Any, Any]
    ) -> pb.HeartBeatResponse:
        try:
            # Activity counts from a registered agent only: connecting and
            # then heartbeating must not hold a pending place for ever.
            agent = self._registered(call, request.agent_id, "sendHeartBeat")
        except _Refused as refused:
            return pb.HeartBeatResponse(valid=False, reason=refused.reason)
        agent.heard()
        self.metrics.heartbeats(1)
        return pb.HeartBeatResponse(valid=True)

    def readRequestsFromProxy(
        self, request: pb.AgentInfo, call: ServerCall[pb.AgentInfo, pb.ScrapeRequest]
    ) -> Deferred[None]:
        try:
            agent = self.agentFor(call, request.agent_id, "readRequestsFromProxy")
        except _Refused as refused:
            if refused.code is StatusCode.NOT_FOUND:
                raise GrpcError(
                    StatusCode.NOT_FOUND,
                    f"No AgentContext found for agentId: {clip(request.agent_id, 64)}",
                ) from None
            raise GrpcError(refused.code, refused.reason) from None
        return agent.readRequests(call)

    async def _responses(self, call: ServerCall[pb.ScrapeResponse, pb.Empty]) -> pb.Empty:
        while (response := await call.receive()) is not None:
            agent = self._answering(call, response.agent_id, "writeResponsesToProxy")
            stream = agent.stream(response.scrape_id) if agent is not None else None
            if agent is None or stream is None:
                self._late(response.scrape_id)
                continue
            agent.heard()
            stream.responseReceived(answerOf(agent.name, response))
        return pb.Empty()

    def writeResponsesToProxy(
        self, call: ServerCall[pb.ScrapeResponse, pb.Empty]
    ) -> Deferred[pb.Empty]:
        return Deferred.fromCoroutine(self._responses(call))

    async def _chunkedResponses(
        self, call: ServerCall[pb.ChunkedScrapeResponse, pb.Empty]
    ) -> pb.Empty:
        results = ChunkedResults(
            lambda agentId: self._answering(call, agentId, "writeChunkedResponsesToProxy"),
            self.transfers,
            self._late,
        )
        try:
            while (message := await call.receive()) is not None:
                results.received(message)
        finally:
            results.ended()
        return pb.Empty()

    def writeChunkedResponsesToProxy(
        self, call: ServerCall[pb.ChunkedScrapeResponse, pb.Empty]
    ) -> Deferred[pb.Empty]:
        return Deferred.fromCoroutine(self._chunkedResponses(call))

    def _answering(self, call: ServerCall[Any, Any], agentId: str, rpc: str) -> GrpcAgent | None:
        """
        The agent whose results C{call} may carry, or L{None}: its answers
        are then dropped, never given to another agent's scrape.
        """
        if agentId not in self._agents:
            return None
        try:
            return self.agentFor(call, agentId, rpc)
        except _Refused:
            return None

    def _late(self, scrapeId: int) -> None:
        # A scrape that timed out or that Prometheus left, or an id never
        # issued to the sender: dropped (logged at debug level),
        # never delivered.
        _log.debug("dropping a result for scrape {id}: none awaits it", id=scrapeId)

    def _registered(self, call: ServerCall[Any, Any], agentId: str, rpc: str) -> GrpcAgent:
        agent = self.agentFor(call, agentId, rpc)
        if not agent.registered:
            raise _Refused(f"agent {clip(agentId, 64)} has not called registerAgent ({rpc})")
        return agent

    def _pathCount(self) -> int:
        return len(self.registry.snapshot())

    def methods(self) -> list[Method]:
        """
        The C{ProxyService} methods, as upstream's agents call them.
        """

        # The connects are new authentications, which the throttle may
        # refuse; every other call names its agent, decided by it.
        named = self.authorizeNamed

        def _unary(
            name: str,
            handler: Callable[..., Any],
            request: type[M],
            response: type[Message],
            authorize: Authorizer = named,
        ) -> Method:
            return unary(
                SERVICE + name,
                handler,
                request.FromString,
                response.SerializeToString,
                authorize=authorize,
            )

        return [
            _unary("connectAgent", self.connectAgent, pb.Empty, pb.Empty, self._identify),
            _unary(
                "connectAgentWithTransportFilterDisabled",
                self.connectAgentWithTransportFilterDisabled,
                pb.Empty,
                pb.AgentInfo,
                self._identify,
            ),
            _unary(
                "registerAgent",
                self.registerAgent,
                pb.RegisterAgentRequest,
                pb.RegisterAgentResponse,
            ),
            _unary(
                "registerPath", self.registerPath, pb.RegisterPathRequest, pb.RegisterPathResponse
            ),
            _unary(
                "unregisterPath",
                self.unregisterPath,
                pb.UnregisterPathRequest,
                pb.UnregisterPathResponse,
            ),
            _unary("pathMapSize", self.pathMapSize, pb.PathMapSizeRequest, pb.PathMapSizeResponse),
            _unary("sendHeartBeat", self.sendHeartBeat, pb.HeartBeatRequest, pb.HeartBeatResponse),
            serverStreaming(
                SERVICE + "readRequestsFromProxy",
                self.readRequestsFromProxy,
                pb.AgentInfo.FromString,
                pb.ScrapeRequest.SerializeToString,
                authorize=named,
            ),
            clientStreaming(
                SERVICE + "writeResponsesToProxy",
                self.writeResponsesToProxy,
                pb.ScrapeResponse.FromString,
                pb.Empty.SerializeToString,
                authorize=named,
            ),
            clientStreaming(
                SERVICE + "writeChunkedResponsesToProxy",
                self.writeChunkedResponsesToProxy,
                pb.ChunkedScrapeResponse.FromString,
                pb.Empty.SerializeToString,
                authorize=named,
            ),
        ]


@dataclass(frozen=True)
class _Departed:
    """
    An agent that left: why, whether it was bound to its connection, and
    the identity it had (only calls proving it are told).
    """

    why: str
    bound: bool
    identity: Identity


class _Refused(Exception):
    """
    A call may not act for the agent it names: C{reason}, and the status a
    streaming call ends with for it.
    """

    def __init__(self, reason: str, code: StatusCode = StatusCode.FAILED_PRECONDITION) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def _labels(text: str) -> dict[str, str]:
    """
    A path's labels as upstream's agent sends them: a JSON object of
    strings, as text (C{"{}"} for none).

    @raise _Refused: for anything else.
    """
    try:
        labels = json.loads(text or "{}")
    except ValueError:
        raise _Refused(
            "labels are not JSON: upstream agents send a JSON object of strings"
        ) from None
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise _Refused("labels are not a JSON object of strings")
    return labels


def _address(peer: object) -> IAddress | None:
    return peer if IAddress.providedBy(peer) else None


def _peerName(call: ServerCall[Any, Any]) -> str:
    return peerName(call.transport)
