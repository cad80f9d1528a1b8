# -*- test-case-name: promtwist.test.test_proxy_link -*-
"""
The proxy's end of an agent link: it checks the agent's Hello, keeps the
agent's paths in the registry, and carries scrapes to the agent and their
streamed answers back.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.addresses import peerName
from promtwist.config.settings import ProxySettings
from promtwist.hostkeys import claimsPort, isHostKey, spelled
from promtwist.logs import RepeatedWarnings, clip, hostShown, observer
from promtwist.metrics import ProxyMetrics
from promtwist.protocol.liveness import DeadlineSweep, resolutionFor
from promtwist.protocol.promtwist_pb2 import (
    HOLDER,
    RELEASED,
    STANDBY,
    Frame,
    Hello,
    Holder,
    PathReply,
    PathStatus,
    RegisterPath,
    Reject,
    ScrapeChunk,
    ScrapeRequest,
    ScrapeResponse,
    UnregisterPath,
    Welcome,
)
from promtwist.protocol.session import PROTOCOL_VERSION, LinkState, Session, SessionLost
from promtwist.proxy.admission import (
    AuthThrottle,
    Refusal,
    filesNeeded,
    helloProblem,
    hostOf,
    pendingHandshakes,
    raiseOpenFileLimit,
    scrapeConnections,
    waitingRoom,
)
from promtwist.proxy.auth import ANONYMOUS, AuthenticationFailed, Authenticator
from promtwist.proxy.discovery import isReservedLabel
from promtwist.proxy.heartbeats import UpstreamHeartbeats
from promtwist.proxy.registry import (
    HOLDER_CHANGE_REASONS,
    REASONS,
    AgentHandle,
    HolderChange,
    RegistrationRefused,
    Registry,
)
from promtwist.proxy.stream import SCRAPE_WINDOW_BYTES, ScrapeStream
from promtwist.tls import peerCommonName, usesTLS

if TYPE_CHECKING:
    from promtwist.proxy.relay import ScrapeCall

# How many of one link's registered paths are logged at INFO.
PATHS_LOGGED = 20

# How many paths one INFO line about a batch of holder changes names.
CHANGES_NAMED = 5

_ROLES = {"holder": HOLDER, "standby": STANDBY, "released": RELEASED}


def holderOf(agent: AgentHandle, since: float) -> Holder:
    """
    C{agent} as the holder of a path since C{since}, for the wire.
    """
    return Holder(
        agent_name=agent.name,
        host_name=agent.hostName,
        since_ms=int(since * 1000),
        agent_id=agent.agentId,
    )


class AgentLink(Session):
    """
    The proxy's end of one agent's connection.

    Attributes named as in L{promtwist.proxy.registry.AgentHandle} describe the
    agent once its Hello was accepted. A Goodbye moves the link to DRAINING:
    its paths leave the registry, and it closes once its scrapes in flight
    have finished, or after C{proxy.internal.shutdownGraceSecs}.

    @ivar host: the source address the link is counted under.
    """

    _log = Logger(observer=observer)
    misdirected: ClassVar[Mapping[str, str]] = {
        "HTTP": "this is the agent port; Prometheus and browsers belong on the scrape port"
        " (proxy.http.port, default 8080)",
        "TLS": "the agent dials with TLS but this agent port is plain TCP: give the proxy"
        " proxy.tls.certChainFilePath and proxy.tls.privateKeyFilePath, or turn TLS off"
        " in the agent",
    }
    allowedFrames: ClassVar[Mapping[LinkState, frozenset[str]]] = {
        LinkState.HANDSHAKE: frozenset({"hello"}),
        LinkState.ESTABLISHED: frozenset(
            {
                "register_path",
                "unregister_path",
                "scrape_response",
                "scrape_chunk",
                "ping",
                "pong",
                "goodbye",
            }
        ),
        # A leaving agent finishes its scrapes and keeps the link alive; it
        # may drop paths but not add any.
        LinkState.DRAINING: frozenset(
            {"unregister_path", "scrape_response", "scrape_chunk", "ping", "pong"}
        ),
    }

    agentId = ""
    name = ""
    hostName = ""
    launchId = ""
    consolidated = False
    identity = ANONYMOUS
    kind = "agent"
    _pathsLogged = 0
    # Set when the handshake completes: only an established agent's frames
    # stand for upstream's heartbeats.
    _upstreamHeartbeats: UpstreamHeartbeats | None = None
    #: Told when the Hello is accepted: a link inside a gRPC call proves
    #: its HTTP/2 connection so (L{promtwist.grpc.call.ServerCall.prove}).
    onEstablished: Callable[[], None] | None = None

    def __init__(self, factory: AgentLinkFactory, host: str = "", waiting: bool = False) -> None:
        """
        @param waiting: the link waits for a handshake place
            (L{startHandshake}): nothing is read from it until then.
        """
        # A close the agent does not let finish gets the grace period.
        super().__init__(factory.clock, factory.settings.shutdown_grace_secs, factory.sweep)
        self.factory = factory
        self.host = host
        self._scrapes: dict[int, ScrapeStream] = {}
        self._nextScrapeId = 1
        self.waitingForPlace = waiting
        # What arrived before the wait began (the agent port reads a
        # connection's first bytes to tell its protocol): read with the Hello.
        self._early = b""

    @property
    def metrics(self) -> ProxyMetrics:
        """
        The proxy's metrics (one for all links).
        """
        metrics: ProxyMetrics = self.factory.metrics
        return metrics

    @property
    def warnings(self) -> RepeatedWarnings:
        """
        The agent port's one budget of warnings: a peer may open any number
        of links, anonymous or (with a stolen or shared credential) not, so
        no link gets a budget of its own that reconnecting would renew.
        """
        shared: RepeatedWarnings = self.factory.warnings
        return shared

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.waitingForPlace:
            cast(IPushProducer, self.transport).pauseProducing()
        else:
            self._startHandshakeTimer(self.factory.settings.handshake_timeout_secs)

    def dataReceived(self, data: bytes) -> None:
        if self.waitingForPlace:
            self._early += data
            return
        super().dataReceived(data)

    def _startHandshakeTimer(self, secs: float) -> None:
        self._handshakeTimer = self.callLater(secs, self._handshakeTimedOut)

    def startHandshake(self, secs: float) -> None:
        """
        A waiting link got its handshake place: read its Hello now, within
        C{secs}, what its wait left of the handshake timeout.
        """
        self.waitingForPlace = False
        if self.isOpen():
            self._startHandshakeTimer(secs)
            cast(IPushProducer, self.transport).resumeProducing()
            early, self._early = self._early, b""
            if early:
                super().dataReceived(early)

    def refused(self, refusal: Refusal) -> None:
        """
        A waiting link is refused (its address held its share of handshake
        places when its turn came, or it waited past the handshake
        timeout): tell it why, as a connection refused at once is told.
        """
        self.sendFrame(Frame(reject=Reject(reason=Reject.OVERLOADED, message=refusal.message)))
        self.close(f"refused: {refusal.message}")

    def _handshakeTimedOut(self) -> None:
        self.warnings.warn(
            "handshake timeout",
            "no Hello from {peer} within {secs}s of its connection; closing",
            peer=peerName(self.transport),
            secs=self.factory.settings.handshake_timeout_secs,
        )
        self.close("no Hello in time", abort=True)

    # Handshake.

    def frame_hello(self, hello: Hello) -> None:
        self._handshakeTimer.cancel()
        settings = self.factory.settings
        throttle = self.factory.authThrottle
        blocked = throttle.blockedFor(self.host)
        if blocked:
            return self._reject(
                Reject.UNAUTHENTICATED,
                f"too many failed authentication attempts from {self.host or '?'}; "
                f"retry in {blocked:.0f} s",
                "throttled",
            )
        if hello.protocol_version != PROTOCOL_VERSION:
            return self._reject(
                Reject.PROTOCOL_VERSION,
                f"protocol version {hello.protocol_version} is not supported; "
                f"this proxy speaks version {PROTOCOL_VERSION}",
            )
        problem = helloProblem(hello, settings.max_agent_name_length)
        if problem is not None:
            return self._reject(Reject.BAD_REQUEST, problem)
        try:
            self.identity = self.factory.authenticator.authenticate(
                hello.token, peerCommonName(self.transport)
            )
        except AuthenticationFailed as e:
            throttle.failed(self.host)
            return self._reject(Reject.UNAUTHENTICATED, str(e))
        if self.factory.agentCount() >= settings.max_agents:
            return self._reject(
                Reject.OVERLOADED,
                f"this proxy already serves {settings.max_agents} agents "
                "(proxy.internal.maxAgents)",
            )
        self.agentId = uuid.uuid4().hex[:16]
        self.name = hello.agent_name or "unnamed"
        self.hostName = hello.host_name
        self.launchId = hello.launch_id
        self.consolidated = hello.consolidated
        maxFrame = settings.max_frame_bytes
        self.sendFrame(
            Frame(
                welcome=Welcome(
                    agent_id=self.agentId,
                    heartbeat_period_ms=int(settings.heartbeat_period_secs * 1000),
                    max_frame_bytes=maxFrame,
                    protocol_version=PROTOCOL_VERSION,
                )
            )
        )
        # The proxy drives liveness: its one sweep pings every idle link
        # and measures every round trip where the operator looks for it;
        # agents only answer (an older agent also pings, and is answered).
        self.handshakeDone(
            settings.heartbeat_period_secs,
            maxFrame,
            min(hello.max_frame_bytes or maxFrame, maxFrame),
            drives=True,
        )
        self._upstreamHeartbeats = UpstreamHeartbeats(
            settings.heartbeat_period_secs, self.clock.seconds()
        )
        self.factory.handshakeFinished(self)
        if self.onEstablished is not None:
            self.onEstablished()
        self.factory.registry.addAgent(self)
        self.metrics.agentConnected()
        self._log.info(
            "agent {name} ({host}, {peer}, identity {identity}) connected as {id}",
            name=clip(repr(self.name)),
            host=hostShown(self.hostName),
            peer=peerName(self.transport),
            identity=self.identity.name,
            id=self.agentId,
        )

    def _reject(self, reason: Reject.Reason, message: str, kind: str = "") -> None:
        """
        Refuse the Hello: tell the agent why, then close once that is sent.

        @param kind: the metric's and the warning's kind, when it is more
            specific than the reason code.
        """
        kind = kind or Reject.Reason.Name(reason).lower()
        self.metrics.rejected("handshake_" + kind)
        self.warnings.warn(
            "handshake " + kind,
            "refusing agent at {peer}: {why}",
            peer=peerName(self.transport),
            why=clip(message),
        )
        self.sendFrame(Frame(reject=Reject(reason=reason, message=message)))
        self.close(f"rejected: {message}")

    # Paths.

    def peerSilent(self) -> None:
        # prometheus-proxy evicts an agent it heard nothing from for
        # maxAgentInactivitySecs; the heartbeat gives up on a silent agent
        # sooner, and that is this proxy's eviction.
        self.metrics.agentEvicted()

    def frameReceived(self, frame: Frame) -> None:
        heartbeats = self._upstreamHeartbeats
        if heartbeats is not None:
            kind = frame.WhichOneof("kind")
            assert kind is not None
            self.metrics.heartbeats(heartbeats.heard(self.clock.seconds(), kind))
        super().frameReceived(frame)

    def frame_register_path(self, request: RegisterPath) -> None:
        try:
            if isHostKey(request.path) and not claimsPort(request.path):
                # The host on any port is a PushProx client's claim (its FQDN);
                # an agent declares each host:port it fetches.
                raise RegistrationRefused(
                    f"target {spelled(clip(request.path))} names no port: an agent"
                    " claims each target as host:port",
                    "invalid",
                )
            placement = self.factory.registry.registerPath(
                self, request.path, request.name, request.labels
            )
        except RegistrationRefused as e:
            self.metrics.rejected("path_" + e.kind)
            self.warnings.warn(
                "registration refused: " + e.kind,
                "agent {name!r} may not register {path}: {why}",
                name=clip(self.name),
                path=spelled(clip(request.path)),
                why=str(e),
            )
            return self._reply(request.request_id, False, str(e), e.kind)
        reserved = sorted(k for k in request.labels if isReservedLabel(request.path, k))
        if reserved:
            self.warnings.warn(
                "reserved labels",
                "agent {name!r}: labels {labels} of {path} are not its to set;"
                " discovery leaves them out",
                name=clip(self.name),
                labels=clip(", ".join(reserved)),
                path=spelled(clip(request.path)),
            )
        if placement.position:
            holder = placement.holder
            self._logClaim(
                request.path,
                f"waits (standby #{placement.position}) behind agent {clip(holder.name)!r} "
                f"({hostShown(holder.hostName)}, {holder.agentId}) for",
            )
            reply = PathReply(
                request_id=request.request_id,
                ok=True,
                role=STANDBY,
                holder=holderOf(holder, placement.since),
                position=placement.position,
            )
        else:
            self._logClaim(request.path, "serves")
            reply = PathReply(
                request_id=request.request_id,
                ok=True,
                role=HOLDER,
                holder=holderOf(self, placement.since),
            )
        self.sendFrame(Frame(path_reply=reply))

    def pathRoleChanged(
        self,
        path: str,
        role: str,
        reason: str,
        holder: AgentHandle,
        since: float,
        position: int = 0,
    ) -> None:
        """
        Tell the agent its standing on C{path} changed without its asking
        (L{promtwist.proxy.registry.AgentHandle.pathRoleChanged}).
        """
        if self.established:
            status = PathStatus(
                path=path,
                role=_ROLES[role],
                reason=REASONS[reason],
                holder=holderOf(holder, since),
                position=position,
            )
            self.sendFrame(Frame(path_status=status))

    def _logClaim(self, path: str, what: str) -> None:
        """
        Log the first L{PATHS_LOGGED} paths this link claims at INFO ("agent
        'a' serves /p"), then say once that the rest go to DEBUG: agents
        with thousands of paths, or one that registers the same path over
        and over, cost a bounded number of INFO lines.
        """
        self._pathsLogged += 1
        line = "agent {name!r} {what} {path}"
        if self._pathsLogged <= PATHS_LOGGED:
            self._log.info(line, name=clip(self.name), what=what, path=spelled(clip(path)))
            return
        if self._pathsLogged == PATHS_LOGGED + 1:
            self._log.info(
                "agent {name!r} registered more than {n} paths; the rest are logged at debug level",
                name=clip(self.name),
                n=PATHS_LOGGED,
            )
        self._log.debug(line, name=clip(self.name), what=what, path=spelled(clip(path)))

    def frame_unregister_path(self, request: UnregisterPath) -> None:
        try:
            self.factory.registry.unregisterPath(self, request.path)
        except RegistrationRefused as e:
            return self._reply(request.request_id, False, str(e))
        self._reply(request.request_id, True, "")

    def _reply(self, requestId: int, ok: bool, reason: str, refusal: str = "") -> None:
        """
        Answer a path request with no placement: a refusal (of kind
        C{refusal}, a L{RegistrationRefused.kind}) or an unregistration.
        """
        reply = PathReply(request_id=requestId, ok=ok, reason=reason, refusal=refusal)
        self.sendFrame(Frame(path_reply=reply))

    # Scrapes.

    def scrape(self, call: ScrapeCall) -> ScrapeStream:
        """
        Ask the agent for C{call}'s path; the returned stream carries its
        answer (already failed if the link is closing).
        """
        scrapeId = self._nextScrapeId
        self._nextScrapeId += 1
        stream = ScrapeStream(self, scrapeId, SCRAPE_WINDOW_BYTES)
        # Only an established link takes new scrapes.
        if self.state is not LinkState.ESTABLISHED:
            stream.linkLost("the link is closing")
            return stream
        if call.authorization:
            self.factory.credentialsForwarded(self)
        self._scrapes[scrapeId] = stream
        self.sendFrame(
            Frame(
                scrape_request=ScrapeRequest(
                    scrape_id=scrapeId,
                    path=call.path,
                    query=call.query,
                    accept=call.accept,
                    accept_encoding=call.acceptEncoding,
                    authorization=call.authorization,
                    timeout_ms=max(1, int(call.agentTimeout * 1000)),
                    window_bytes=SCRAPE_WINDOW_BYTES,
                    target=call.target.address if call.target is not None else "",
                    scheme=call.target.scheme if call.target is not None else "",
                )
            )
        )
        return stream

    @property
    def scrapesInFlight(self) -> int:
        return len(self._scrapes)

    @property
    def transfersInProgress(self) -> int:
        """
        Answers in several frames under way on this link.
        """
        return sum(stream.transferring for stream in self._scrapes.values())

    def forget(self, scrapeId: int) -> None:
        self._scrapes.pop(scrapeId, None)
        self._scrapeEnded()

    def sendIfConnected(self, frame: Frame) -> None:
        if self._lost is None:
            self.sendFrame(frame)

    def violation(self, why: str) -> None:
        """
        The agent broke the scrape protocol: close its link, and tell every
        scrape on it why.
        """
        self.protocolError(why)

    def frame_scrape_response(self, response: ScrapeResponse) -> None:
        stream = self._scrapes.get(response.scrape_id)
        if stream is None:
            return self._late(response.scrape_id)
        stream.responseReceived(response)

    def frame_scrape_chunk(self, chunk: ScrapeChunk) -> None:
        stream = self._scrapes.get(chunk.scrape_id)
        if stream is None:
            return self._late(chunk.scrape_id)
        stream.chunkReceived(chunk)

    def _late(self, scrapeId: int) -> None:
        # The scrape timed out or Prometheus left; the agent has not yet seen
        # our CancelScrape. Normal, so only counted.
        self.lateReplies += 1
        self._log.debug("dropping data for finished scrape {id}", id=scrapeId)

    # Leaving.

    def goodbyeReceived(self, reason: str) -> None:
        """
        A draining agent leaves the registry at once and takes no new
        scrapes; the link closes when those in flight have finished, and at
        the latest after the grace period.
        """
        self.drain()
        self.factory.registry.removeAgent(self, "goodbye")
        if self._scrapes:
            self.callLater(self.factory.settings.shutdown_grace_secs, self._drainTimedOut)
        self._scrapeEnded()

    def _scrapeEnded(self) -> None:
        """
        A scrape left the table: a draining link whose last one it was is
        done.
        """
        if self.state is LinkState.DRAINING and not self._scrapes:
            self.close("the agent said goodbye")

    def _drainTimedOut(self) -> None:
        self.close(
            f"the agent said goodbye and its scrapes did not finish within "
            f"{self.factory.settings.shutdown_grace_secs}s (proxy.internal.shutdownGraceSecs)",
            abort=True,
        )

    def evict(self, why: str) -> None:
        """
        Drop an agent the proxy gave up on: its paths go to their standbys
        now, and the link is aborted.
        """
        self.metrics.agentEvicted()
        self.factory.registry.removeAgent(self, "evicted")
        self.close(why, abort=True)

    def close(self, reason: str, abort: bool = False) -> None:
        """
        Closing the link takes its paths from the registry at once (their
        standbys take over in this same call), not when the connection is
        finally gone: no scrape is routed to a link that is going away.
        """
        super().close(reason, abort)
        self.factory.registry.removeAgent(self, "lost")

    def connectionLost(self, reason: Failure = Failure(SessionLost())) -> None:
        super().connectionLost(reason)
        self.factory.linkClosed(self)
        if not self.agentId:
            # (A TLS handshake that failed did so before the agent port
            # knew the protocol: agentport logs it.)
            return
        self.factory.registry.removeAgent(self, "lost")
        scrapes, self._scrapes = self._scrapes, {}
        why = self.closeReason or reason.getErrorMessage()
        for stream in scrapes.values():
            stream.linkLost(why)
        self._log.info(
            "agent {name} ({id}) disconnected: {why}; {n} scrape(s) failed",
            name=clip(repr(self.name)),
            id=self.agentId,
            why=why,
            n=len(scrapes),
        )


class AgentLinkFactory(ServerFactory):
    """
    Accepts agent connections on the agent port.

    Every link counts against the caps until its socket is closed: against
    C{proxy.internal.maxPendingHandshakes} (and its per-address share) until
    its Hello is accepted, then against C{proxy.internal.maxAgents}, draining
    or not. A connection over a handshake cap is sent a Reject saying which,
    and closed.

    The agent port never stops accepting, so that every connection gets
    its answer at once, not after waiting unseen in the kernel. At the
    total handshake cap a connection is not refused either: up to
    C{proxy.internal.maxWaitingHandshakes} of them wait, unread and without
    a timer of their own, and take the places that finishing handshakes
    free, in the order they came; beyond that bound (or at once when it is
    0) a connection is refused. A herd of agents reconnecting to a
    restarted proxy then queues instead of being refused and retrying.
    Waiting counts against C{proxy.internal.handshakeTimeoutSecs}, which
    runs from when a connection was accepted (here: when the agent port
    gave it, its first bytes read, to the native link): one that waited that long is
    refused rather than handshaken (its agent gave up on a Welcome by
    then), and one admitted later has what is left of it for its Hello.
    What waits is bounded and costs a socket each (nothing is read from
    it); one timer, for the oldest, expires them all; the per-address
    share is still checked when a waiting connection's turn comes.

    @ivar links: every open link, in its handshake or not.
    @ivar pending: links that have not completed the handshake.
    @ivar waiting: links accepted at the total handshake cap, waiting for a
        place, in the order they came, with when each was accepted.
    @ivar maxWaiting: how many may wait: C{proxy.internal.maxWaitingHandshakes},
        lowered when started if the open-file limit (raised as far as its
        hard limit allows) has no room for them all beside every agent.
    @ivar warnings: the agent port's warnings and news that peers can
        repeat (refusals, failed authentications, handshake errors, paths
        changing holder): a few per kind and minute, then a count.
    """

    noisy = False
    _log = Logger(observer=observer)

    def __init__(
        self,
        settings: ProxySettings,
        registry: Registry,
        clock: IReactorTime,
        authenticator: Authenticator,
        metrics: ProxyMetrics,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.authenticator = authenticator
        self.metrics = metrics
        self.links: set[AgentLink] = set()
        self.pending: set[AgentLink] = set()
        self.waiting: dict[AgentLink, float] = {}
        self.maxWaiting = settings.max_waiting_handshakes
        self._waitExpiry: IDelayedCall | None = None
        # One timer for every link's heartbeat and silence deadlines.
        self.sweep = DeadlineSweep(clock, resolutionFor(settings.heartbeat_period_secs))
        self.warnings = RepeatedWarnings(self._log, clock)
        self.authThrottle = AuthThrottle(clock, settings.max_auth_failures_per_address)
        self._handshakes = pendingHandshakes(settings)
        self._warnedCleartextCredentials = False
        # Paths each connected link took by a claim: see _holderChanged.
        self._claimChanges: Counter[str] = Counter()
        registry.holderObservers.append(self._holderChanged)

    def _holderChanged(self, changes: Sequence[HolderChange]) -> None:
        """
        Say and count the changes of paths' holders one registry call made:
        per old holder, new holder and reason, one INFO line naming both
        agents, why, how many paths and the first L{CHANGES_NAMED}; every
        path at DEBUG, so an agent holding thousands of paths costs a few
        lines when it leaves. Changes a claim makes (a takeover, an owner's
        return) come one registration at a time: the first L{PATHS_LOGGED}
        of each new holder are logged at INFO, then one line says the rest
        go to DEBUG. These INFO lines are L{warnings}: a few a minute,
        then a count, as peers can make holders change at will (PushProx
        clients that poll and go, each promoting a standby when its grace
        ends). The metric counts every change. (The registry tells the
        agents, through L{AgentLink.pathRoleChanged}.)
        """
        batches: dict[tuple[str, str, str], list[HolderChange]] = {}
        for change in changes:
            key = (change.old.agentId, change.new.agentId, change.reason)
            batches.setdefault(key, []).append(change)
            self.metrics.holderChanged(change.reason)
            if change.reason == "takeover":
                self.metrics.agentDisplaced()
            self._log.debug(
                "path {path} changes holder from agent {old} to {new}: {why}",
                path=spelled(clip(change.path)),
                old=change.old.agentId,
                new=change.new.agentId,
                why=change.reason,
            )
        for batch in batches.values():
            old, new = batch[0].old, batch[0].new
            if batch[0].reason in ("takeover", "returned"):
                before = self._claimChanges[new.agentId]
                self._claimChanges[new.agentId] += 1
                if before >= PATHS_LOGGED:
                    if before == PATHS_LOGGED:
                        self.warnings.info(
                            "path holder change",
                            "agent {new!r} ({newId}) took more than {n} paths from other "
                            "links; the rest are logged at debug level",
                            new=clip(new.name),
                            newId=new.agentId,
                            n=PATHS_LOGGED,
                        )
                    continue
            named = ", ".join(spelled(clip(change.path)) for change in batch[:CHANGES_NAMED])
            more = len(batch) - CHANGES_NAMED
            self.warnings.info(
                "path holder change",
                "{count} path(s) change holder from agent {old!r} ({oldHost}, {oldId}) to "
                "{new!r} ({newHost}, {newId}): {why}: {named}{more}",
                count=len(batch),
                old=clip(old.name),
                oldHost=hostShown(old.hostName),
                oldId=old.agentId,
                new=clip(new.name),
                newHost=hostShown(new.hostName),
                newId=new.agentId,
                why=HOLDER_CHANGE_REASONS[batch[0].reason],
                named=named,
                more=f" and {more} more (at debug level)" if more > 0 else "",
            )

    # Raises the open-file limit as far as needed and allowed, and says
    # what it is; replaced in tests.
    openFileLimit = staticmethod(raiseOpenFileLimit)

    def openFileBudget(self) -> int:
        """
        The open-file limit, raised as far as needed and allowed, in which
        the agent port's connections and the scrape port's
        (L{promtwist.proxy.admission.scrapeConnections}) are sized; the
        warning L{startFactory} logs says what it lowered.
        """
        return self.openFileLimit(filesNeeded(self.settings))

    def startFactory(self) -> None:
        settings = self.settings
        openFiles = self.openFileBudget()
        self.maxWaiting = waitingRoom(settings, openFiles)
        connections = scrapeConnections(settings, openFiles)
        if (
            self.maxWaiting < settings.max_waiting_handshakes
            or connections < settings.http_max_connections
        ):
            self._log.warn(
                "the open-file limit of {limit} leaves room for {connections} of the "
                "{maxConnections} scrape-port connections proxy.http.maxConnections allows "
                "and {room} of the {setting} connections proxy.internal.maxWaitingHandshakes "
                "lets wait for a handshake place, beside proxy.internal.maxAgents ({agents}) "
                "links and proxy.internal.maxPendingHandshakes ({pending}) handshakes; "
                "raise the limit (ulimit -n, LimitNOFILE=) to {needed} for them all",
                limit=openFiles,
                connections=connections,
                maxConnections=settings.http_max_connections,
                room=self.maxWaiting,
                setting=settings.max_waiting_handshakes,
                agents=settings.max_agents,
                pending=settings.max_pending_handshakes,
                needed=filesNeeded(settings),
            )
        if self.authenticator.open:
            self._log.warn(
                "the agent port is open: any host that reaches it can register paths "
                "and receive scrapes; set proxy.agentToken, proxy.auth or client "
                "certificates (proxy.tls.trustCertCollectionFilePath)"
            )

    def stopFactory(self) -> None:
        self.warnings.flush()

    def buildProtocol(self, addr: IAddress | None) -> AgentLink | Refusal:
        """
        Every connection is accepted and answered at once: it starts its
        handshake, waits for a place, or is refused (see the class
        docstring).
        """
        host = hostOf(addr)
        refusal = self._handshakes.refusal(host)
        if refusal is None:
            return self._enter(AgentLink(self, host))
        kind, message = refusal
        if kind == "pending_handshakes" and self.settings.max_waiting_handshakes:
            if len(self.waiting) < self.maxWaiting:
                link = AgentLink(self, host, waiting=True)
                self.links.add(link)
                self.waiting[link] = self.clock.seconds()
                self._armWaitExpiry()
                return link
            lowered = self.maxWaiting < self.settings.max_waiting_handshakes
            kind = "waiting_handshakes"
            message += (
                f", and {len(self.waiting)} connections already wait for a place "
                "(proxy.internal.maxWaitingHandshakes"
                + (", lowered to fit the open-file limit" if lowered else "")
                + ")"
            )
        return self._refuse(host, kind, message)

    def _enter(self, link: AgentLink) -> AgentLink:
        """
        C{link} takes a handshake place.
        """
        self.links.add(link)
        self.pending.add(link)
        self._handshakes.enter(link.host)
        return link

    def _refuse(self, host: str, kind: str, message: str) -> Refusal:
        """
        Count and log (at a bounded rate) a connection from C{host} refused
        for C{kind}, and what to tell it.
        """
        self.refused(host, kind, message)
        return Refusal(message)

    def refused(self, host: str, kind: str, message: str) -> None:
        """
        Count and log (at a bounded rate) an agent-port connection from
        C{host} refused for C{kind} because C{message}, whatever it speaks.
        """
        self.metrics.rejected(kind)
        self.warnings.warn(
            "refused connection",
            "refusing a connection from {peer}: {why}",
            peer=host or "?",
            why=message,
        )

    def _admit(self) -> None:
        """
        A handshake place was freed, or the oldest waiting connection's
        time is up: refuse those that waited past the handshake timeout,
        then give free places to the others, in order. A connection's
        handshake timeout runs from when it was accepted, waiting or not.
        """
        now = self.clock.seconds()
        limit = self.settings.handshake_timeout_secs
        while self.waiting:
            link, since = next(iter(self.waiting.items()))
            if since + limit <= now:
                del self.waiting[link]
                link.refused(
                    self._refuse(
                        link.host,
                        "handshake_wait_timeout",
                        f"waited {now - since:.1f}s for a handshake place, in vain: the proxy "
                        f"is at its handshake limit of {self.settings.max_pending_handshakes} "
                        "(proxy.internal.maxPendingHandshakes), and a connection must "
                        f"complete its handshake within {limit:g}s of being accepted "
                        "(proxy.internal.handshakeTimeoutSecs)",
                    )
                )
                continue
            if len(self._handshakes) >= self.settings.max_pending_handshakes:
                break
            del self.waiting[link]
            refusal = self._handshakes.refusal(link.host)
            if refusal is not None:
                link.refused(self._refuse(link.host, *refusal))
            else:
                self._enter(link).startHandshake(since + limit - now)
        self._armWaitExpiry()

    def _armWaitExpiry(self) -> None:
        """
        Keep the one timer of the waiting queue while anything waits: it
        fires when the oldest waiting connection's handshake timeout ends.
        The queue is in the order connections came and they all have the
        same timeout, so the oldest is always first: a timer that fires
        for a connection that already left finds the next one at the head
        and is set again for it.
        """
        if not self.waiting:
            if self._waitExpiry is not None and self._waitExpiry.active():
                self._waitExpiry.cancel()
            self._waitExpiry = None
        elif self._waitExpiry is None or not self._waitExpiry.active():
            since = next(iter(self.waiting.values()))
            delay = since + self.settings.handshake_timeout_secs - self.clock.seconds()
            self._waitExpiry = self.clock.callLater(max(0.0, delay), self._waitExpired)

    def _waitExpired(self) -> None:
        self._waitExpiry = None
        self._admit()

    def connected(self) -> list[AgentLink]:
        """
        The links past their handshake and still open (draining ones too).
        """
        return [link for link in self.links if link.established]

    def agentCount(self) -> int:
        """
        Links past their handshake and not yet closed, draining ones too:
        what C{proxy.internal.maxAgents} bounds.
        """
        return len(self.links) - len(self.pending) - len(self.waiting)

    def handshakeFinished(self, link: AgentLink) -> None:
        self._leavePending(link)

    def linkClosed(self, link: AgentLink) -> None:
        self.links.discard(link)
        self._claimChanges.pop(link.agentId, None)
        if self.waiting.pop(link, None) is not None:
            self._armWaitExpiry()
        self._leavePending(link)

    def _leavePending(self, link: AgentLink) -> None:
        if link in self.pending:
            self.pending.discard(link)
            self._handshakes.leave(link.host)
            self._admit()

    def credentialsForwarded(self, link: AgentLink) -> None:
        """
        Warn, once, that Prometheus' credentials cross an agent link in
        clear text.
        """
        if not self._warnedCleartextCredentials and not usesTLS(link.transport):
            self._warnedCleartextCredentials = True
            self._log.warn(
                "forwarding Prometheus' Authorization header to agent {name!r} over a link "
                "without TLS; configure TLS on the agent link, or set "
                "proxy.http.forwardAuthorization = false",
                name=link.name,
            )

    def closeAll(self, reason: str) -> Deferred[list[None]]:
        """
        Tell every connected agent the proxy is going away, close the links,
        and fire once they are all gone.
        """
        # Nobody is promoted while everyone leaves.
        self.registry.clear()
        closing = []
        for link in list(self.links):
            if link.established:
                link.sendGoodbye(reason)
            closing.append(link.whenLost())
            link.close(reason)
        return gatherResults(closing)
