# -*- test-case-name: promtwist.test.test_proxy_link -*-
"""
The proxy's end of an agent link: it checks the agent's Hello, keeps the
agent's paths in the registry, and carries scrapes to the agent and their
streamed answers back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import ClassVar, Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.config import ProxySettings
from promtwist.logs import RepeatedWarnings, clip, observer
from promtwist.metrics import ProxyMetrics
from promtwist.protocol.framing import _peerName
from promtwist.protocol.promtwist_pb2 import (
    CancelScrape,
    Frame,
    Hello,
    Outcome,
    PathReply,
    Ping,
    RegisterPath,
    Reject,
    ScrapeChunk,
    ScrapeCredit,
    ScrapeRequest,
    ScrapeResponse,
    UnregisterPath,
    Welcome,
)
from promtwist.protocol.session import PROTOCOL_VERSION, LinkState, Session, SessionLost
from promtwist.proxy.admission import (
    AuthThrottle,
    PendingHandshakes,
    Refusal,
    helloProblem,
    hostOf,
)
from promtwist.proxy.auth import ANONYMOUS, AuthenticationFailed, Authenticator
from promtwist.proxy.registry import RegistrationRefused, Registry
from promtwist.tls import peerCommonName, usesTLS

# Body bytes an agent may have in flight for one scrape before the proxy has
# passed them on: bounds the proxy's memory per scrape whatever the body size.
SCRAPE_WINDOW_BYTES = 1024 * 1024


class BodyConsumer(Protocol):
    """
    Where a scrape's body goes, chunk by chunk.
    """

    def write(self, data: bytes) -> None: ...

    def bodyDone(self) -> None: ...

    def bodyFailed(self, outcome: Outcome, reason: str) -> None: ...


class ScrapeFailed(Exception):
    """
    The agent's link went away before the scrape produced a response head.
    """


class ScrapeStream:
    """
    One scrape in flight on an agent link.

    L{head} fires with the L{ScrapeResponse} once the agent has answered;
    the body (starting with the head's own bytes) then goes to the consumer
    given to L{deliverBody}. Credit for more body bytes is returned to the
    agent as the consumer takes them, unless L{pauseProducing} was called
    (the HTTP client reads slowly), which holds the agent back.
    """

    def __init__(self, link: AgentLink, scrapeId: int) -> None:
        self.link = link
        self.scrapeId = scrapeId
        self.head: Deferred[ScrapeResponse] = Deferred(lambda _: self.cancel())
        self._consumer: BodyConsumer | None = None
        self._pending: list[ScrapeChunk] = []
        self._paused = False
        self._owedCredit = 0
        self._finished = False

    # From the link.

    def responseReceived(self, response: ScrapeResponse) -> None:
        if self.head.called:
            raise _DuplicateHead()
        if response.last:
            self._finished = True
            self.link.forget(self.scrapeId)
        self.head.callback(response)
        if response.body or response.last:
            self._deliver(ScrapeChunk(data=response.body, last=response.last))

    def chunkReceived(self, chunk: ScrapeChunk) -> None:
        if chunk.last:
            self._finished = True
            self.link.forget(self.scrapeId)
        self._deliver(chunk)

    def linkLost(self, reason: str) -> None:
        self._finished = True
        error = f"agent disconnected: {reason}"
        if not self.head.called:
            self.head.errback(ScrapeFailed(error))
        else:
            self._deliver(ScrapeChunk(last=True, outcome=Outcome.DISCONNECTED, reason=error))

    # From the consumer side.

    def deliverBody(self, consumer: BodyConsumer) -> None:
        self._consumer = consumer
        pending, self._pending = self._pending, []
        for chunk in pending:
            self._deliver(chunk)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._grant(0)

    def stopProducing(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """
        Tell the agent to stop; nothing more is delivered.
        """
        if not self._finished:
            self._finished = True
            self.link.forget(self.scrapeId)
            self.link.sendIfConnected(Frame(cancel_scrape=CancelScrape(scrape_id=self.scrapeId)))
        self._consumer = None
        self._pending = []

    def _deliver(self, chunk: ScrapeChunk) -> None:
        if self._consumer is None:
            if (self.head.called and not self._finished) or chunk.last:
                self._pending.append(chunk)
            return
        consumer = self._consumer
        if chunk.data:
            consumer.write(chunk.data)
            if not chunk.last:
                self._grant(len(chunk.data))
        if chunk.last:
            self._consumer = None
            if chunk.outcome == Outcome.SUCCESS:
                consumer.bodyDone()
            else:
                consumer.bodyFailed(chunk.outcome, chunk.reason)

    def _grant(self, nbytes: int) -> None:
        self._owedCredit += nbytes
        if self._paused or self._finished or not self._owedCredit:
            return
        credit, self._owedCredit = self._owedCredit, 0
        self.link.sendIfConnected(
            Frame(scrape_credit=ScrapeCredit(scrape_id=self.scrapeId, bytes=credit))
        )


class _DuplicateHead(Exception):
    pass


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

    def __init__(self, factory: AgentLinkFactory, host: str = "") -> None:
        super().__init__(factory.clock)
        self.factory = factory
        self.host = host
        self._scrapes: dict[int, ScrapeStream] = {}
        self._nextScrapeId = 1

    @property
    def warnings(self) -> RepeatedWarnings:
        """
        Until its Hello is accepted the peer is anonymous and may open any
        number of links: its warnings count against the factory's budget.
        """
        if self.agentId:
            return self._linkWarnings
        shared: RepeatedWarnings = self.factory.warnings
        return shared

    @property
    def _draining(self) -> bool:
        # Read by scrape(): only an established link takes new scrapes.
        return self.state is not LinkState.ESTABLISHED

    def connectionMade(self) -> None:
        super().connectionMade()
        settings = self.factory.settings
        self._handshakeTimer = self.callLater(
            settings.handshake_timeout_secs, self._handshakeTimedOut
        )

    def _handshakeTimedOut(self) -> None:
        self.warnings.warn(
            "handshake timeout",
            "no Hello from {peer} within {secs}s; closing",
            peer=_peerName(self.transport),
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
        self.handshakeDone(
            settings.heartbeat_period_secs,
            maxFrame,
            min(hello.max_frame_bytes or maxFrame, maxFrame),
        )
        self.factory.handshakeFinished(self)
        self.factory.registry.addAgent(self)
        self.factory.metrics.agentConnected()
        self._log.info(
            "agent {name} ({host}, {peer}, identity {identity}) connected as {id}",
            name=clip(repr(self.name)),
            host=clip(self.hostName),
            peer=_peerName(self.transport),
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
        self.factory.metrics.rejected("handshake_" + kind)
        self.warnings.warn(
            "handshake " + kind,
            "refusing agent at {peer}: {why}",
            peer=_peerName(self.transport),
            why=clip(message),
        )
        self.sendFrame(Frame(reject=Reject(reason=reason, message=message)))
        self.close(f"rejected: {message}")

    # Paths.

    def frame_ping(self, ping: Ping) -> None:
        self.factory.metrics.heartbeatReceived()
        super().frame_ping(ping)

    def frame_register_path(self, request: RegisterPath) -> None:
        registry = self.factory.registry
        displaced = registry.displacements
        try:
            registry.registerPath(self, request.path, request.name, request.labels)
        except RegistrationRefused as e:
            self.factory.metrics.rejected("path_" + e.kind)
            self._log.warn(
                "agent {name!r} may not register /{path}: {why}",
                name=self.name,
                path=request.path,
                why=str(e),
            )
            return self._reply(request.request_id, False, str(e))
        if registry.displacements > displaced:
            self.factory.metrics.agentDisplaced()
        self._log.info("agent {name!r} serves /{path}", name=self.name, path=request.path)
        self._reply(request.request_id, True, "")

    def frame_unregister_path(self, request: UnregisterPath) -> None:
        try:
            self.factory.registry.unregisterPath(self, request.path)
        except RegistrationRefused as e:
            return self._reply(request.request_id, False, str(e))
        self._reply(request.request_id, True, "")

    def _reply(self, requestId: int, ok: bool, reason: str) -> None:
        self.sendFrame(Frame(path_reply=PathReply(request_id=requestId, ok=ok, reason=reason)))

    # Scrapes.

    def scrape(
        self,
        path: str,
        query: str,
        accept: str,
        acceptEncoding: str,
        authorization: str,
        timeout: float,
    ) -> ScrapeStream:
        """
        Ask the agent for C{path}; the returned stream carries its answer.
        """
        scrapeId = self._nextScrapeId
        self._nextScrapeId += 1
        stream = ScrapeStream(self, scrapeId)
        if self._lost is not None or self._draining:
            stream.linkLost("the link is closing")
            return stream
        if authorization:
            self.factory.credentialsForwarded(self)
        self._scrapes[scrapeId] = stream
        self.sendFrame(
            Frame(
                scrape_request=ScrapeRequest(
                    scrape_id=scrapeId,
                    path=path,
                    query=query,
                    accept=accept,
                    accept_encoding=acceptEncoding,
                    authorization=authorization,
                    timeout_ms=max(1, int(timeout * 1000)),
                    window_bytes=SCRAPE_WINDOW_BYTES,
                )
            )
        )
        return stream

    @property
    def scrapesInFlight(self) -> int:
        return len(self._scrapes)

    def forget(self, scrapeId: int) -> None:
        self._scrapes.pop(scrapeId, None)
        self._scrapeEnded()

    def sendIfConnected(self, frame: Frame) -> None:
        if self._lost is None:
            self.sendFrame(frame)

    def frame_scrape_response(self, response: ScrapeResponse) -> None:
        stream = self._scrapes.get(response.scrape_id)
        if stream is None:
            return self._late(response.scrape_id)
        try:
            stream.responseReceived(response)
        except _DuplicateHead:
            self._log.warn(
                "agent {name!r} answered scrape {id} twice", name=self.name, id=response.scrape_id
            )

    def frame_scrape_chunk(self, chunk: ScrapeChunk) -> None:
        stream = self._scrapes.get(chunk.scrape_id)
        if stream is None:
            return self._late(chunk.scrape_id)
        if not stream.head.called:
            # Chunks follow the head; a failure the agent could not report
            # in a head still ends the scrape here, not at its deadline.
            self.forget(chunk.scrape_id)
            stream.head.errback(
                ScrapeFailed(f"agent sent no answer head: {chunk.reason or 'protocol error'}")
            )
            return
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
        self.factory.registry.removeAgent(self)
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

    def connectionLost(self, reason: Failure = Failure(SessionLost())) -> None:
        super().connectionLost(reason)
        self.factory.linkClosed(self)
        if not self.agentId:
            return
        self.factory.registry.removeAgent(self)
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

    @ivar links: every open link, in its handshake or not.
    @ivar pending: links that have not completed the handshake.
    @ivar refusedConnections: connections refused at a handshake cap.
    @ivar warnings: the agent port's warnings that anonymous peers can
        repeat (refusals, failed authentications, handshake errors): a few
        per kind and minute, then a count.
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
        self.refusedConnections = 0
        self.warnings = RepeatedWarnings(self._log, clock)
        self.authThrottle = AuthThrottle(clock, settings.max_auth_failures_per_address)
        self._handshakes = PendingHandshakes(
            settings.max_pending_handshakes, settings.max_pending_handshakes_per_address
        )
        self._warnedCleartextCredentials = False

    def startFactory(self) -> None:
        if self.authenticator.open:
            self._log.warn(
                "the agent port is open: any host that reaches it can register paths "
                "and receive scrapes; set proxy.agentToken, proxy.auth or client "
                "certificates (proxy.tls.trustCertCollectionFilePath)"
            )

    def stopFactory(self) -> None:
        self.warnings.flush()

    def buildProtocol(self, addr: IAddress | None) -> AgentLink | Refusal:
        host = hostOf(addr)
        refusal = self._handshakes.refusal(host)
        if refusal is not None:
            kind, message = refusal
            self.refusedConnections += 1
            self.metrics.rejected(kind)
            self.warnings.warn(
                "refused connection",
                "refusing a connection from {peer}: {why}",
                peer=host or "?",
                why=message,
            )
            return Refusal(message)
        link = AgentLink(self, host)
        self.links.add(link)
        self.pending.add(link)
        self._handshakes.enter(host)
        return link

    def agentCount(self) -> int:
        """
        Links past their handshake and not yet closed, draining ones too:
        what C{proxy.internal.maxAgents} bounds.
        """
        return len(self.links) - len(self.pending)

    def handshakeFinished(self, link: AgentLink) -> None:
        self._leavePending(link)

    def linkClosed(self, link: AgentLink) -> None:
        self.links.discard(link)
        self._leavePending(link)

    def _leavePending(self, link: AgentLink) -> None:
        if link in self.pending:
            self.pending.discard(link)
            self._handshakes.leave(link.host)

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
        closing = []
        for link in list(self.links):
            if link.established:
                link.sendGoodbye(reason)
            closing.append(link.whenLost())
            link.close(reason)
        return gatherResults(closing)


def agentLinkFactory(
    settings: ProxySettings, clock: IReactorTime, reservedPaths: Iterable[str] = ()
) -> AgentLinkFactory:
    """
    The agent port's factory with its registry, both enforcing the
    settings' identities and limits.

    @param reservedPaths: paths the proxy answers itself.
    """
    authenticator = Authenticator(settings)
    registry = Registry(reservedPaths, authenticator.mayServe, settings.max_paths_per_agent)
    metrics = ProxyMetrics(uuid.uuid4().hex, clock)
    return AgentLinkFactory(settings, registry, clock, authenticator, metrics)
