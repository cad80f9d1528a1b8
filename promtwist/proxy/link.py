# -*- test-case-name: promtwist.test.test_proxy_link -*-
"""
The proxy's end of an agent link: it checks the agent's Hello, keeps the
agent's paths in the registry, and carries scrapes to the agent and their
streamed answers back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

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
    Frame,
    Hello,
    PathReply,
    Ping,
    RegisterPath,
    Reject,
    ScrapeChunk,
    ScrapeRequest,
    ScrapeResponse,
    UnregisterPath,
    Welcome,
)
from promtwist.protocol.session import PROTOCOL_VERSION, Session, SessionLost
from promtwist.proxy.auth import ANONYMOUS, AuthenticationFailed, Authenticator
from promtwist.proxy.registry import RegistrationRefused, Registry
from promtwist.proxy.stream import SCRAPE_WINDOW_BYTES, ScrapeStream
from promtwist.tls import peerCommonName, usesTLS

if TYPE_CHECKING:
    from promtwist.proxy.relay import ScrapeCall

# How many of one link's registered paths are logged at INFO.
PATHS_LOGGED = 20


class AgentLink(Session):
    """
    The proxy's end of one agent's connection.

    Attributes named as in L{promtwist.proxy.registry.AgentHandle} describe the
    agent once its Hello was accepted.
    """

    _log = Logger(observer=observer)
    _beforeHandshake = frozenset({"hello"})

    agentId = ""
    name = ""
    hostName = ""
    launchId = ""
    consolidated = False
    identity = ANONYMOUS
    # Set when this side closes the link, to tell scrapes in flight why.
    closingBecause = ""
    # Registration logging (frame_register_path), made on first use.
    _pathWarnings: RepeatedWarnings | None = None
    _pathsLogged = 0

    def __init__(self, factory: AgentLinkFactory) -> None:
        super().__init__(factory.clock)
        self.factory = factory
        self._scrapes: dict[int, ScrapeStream] = {}
        self._nextScrapeId = 1
        self._draining = False

    def connectionMade(self) -> None:
        super().connectionMade()
        settings = self.factory.settings
        self._handshakeTimer = self.callLater(
            settings.handshake_timeout_secs, self._handshakeTimedOut
        )

    def _handshakeTimedOut(self) -> None:
        self._log.warn(
            "no Hello from {peer} within {secs}s; closing",
            peer=_peerName(self.transport),
            secs=self.factory.settings.handshake_timeout_secs,
        )
        self.transport.abortConnection()

    # Handshake.

    def frame_hello(self, hello: Hello) -> None:
        self._handshakeTimer.cancel()
        settings = self.factory.settings
        if hello.protocol_version != PROTOCOL_VERSION:
            return self._reject(
                Reject.PROTOCOL_VERSION,
                f"protocol version {hello.protocol_version} is not supported; "
                f"this proxy speaks version {PROTOCOL_VERSION}",
            )
        try:
            self.identity = self.factory.authenticator.authenticate(
                hello.token, peerCommonName(self.transport)
            )
        except AuthenticationFailed as e:
            return self._reject(Reject.UNAUTHENTICATED, str(e))
        if len(self.factory.registry.agents()) >= settings.max_agents:
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
            "agent {name!r} ({host}, {peer}, identity {identity}) connected as {id}",
            name=self.name,
            host=self.hostName,
            peer=_peerName(self.transport),
            identity=self.identity.name,
            id=self.agentId,
        )

    def _reject(self, reason: Reject.Reason, message: str) -> None:
        self.factory.metrics.rejected("handshake_" + Reject.Reason.Name(reason).lower())
        self._log.warn(
            "refusing agent at {peer}: {message}", peer=_peerName(self.transport), message=message
        )
        self.sendFrame(Frame(reject=Reject(reason=reason, message=message)))
        self.transport.loseConnection()

    # Paths.

    def frame_ping(self, ping: Ping) -> None:
        self.factory.metrics.heartbeatReceived()
        super().frame_ping(ping)

    def frame_register_path(self, request: RegisterPath) -> None:
        try:
            displaced = self.factory.registry.registerPath(
                self, request.path, request.name, request.labels
            )
        except RegistrationRefused as e:
            self.factory.metrics.rejected("path_" + e.kind)
            self._pathWarning().warn(
                e.kind,
                "agent {name!r} may not register {path}: {why}",
                name=clip(self.name),
                path="/" + clip(request.path),
                why=str(e),
            )
            return self._reply(request.request_id, False, str(e))
        if displaced is not None:
            self.factory.metrics.agentDisplaced()
        self._logServes(request.path)
        self._reply(request.request_id, True, "")

    def _pathWarning(self) -> RepeatedWarnings:
        """
        The warnings of refused registrations from this link, at a bounded
        rate: an agent configured with thousands of bad paths, or replaying
        one, costs a few lines and a count.
        """
        if self._pathWarnings is None:
            self._pathWarnings = RepeatedWarnings(self._log, self.clock)
        return self._pathWarnings

    def _logServes(self, path: str) -> None:
        """
        Log the first L{PATHS_LOGGED} paths this link serves at INFO, then
        say once that the rest go to DEBUG: agents with thousands of paths,
        or one that registers the same path over and over, cost a bounded
        number of INFO lines.
        """
        self._pathsLogged += 1
        if self._pathsLogged <= PATHS_LOGGED:
            self._log.info("agent {name!r} serves /{path}", name=clip(self.name), path=clip(path))
            return
        if self._pathsLogged == PATHS_LOGGED + 1:
            self._log.info(
                "agent {name!r} registered more than {n} paths; the rest are logged at debug level",
                name=clip(self.name),
                n=PATHS_LOGGED,
            )
        self._log.debug("agent {name!r} serves /{path}", name=clip(self.name), path=clip(path))

    def frame_unregister_path(self, request: UnregisterPath) -> None:
        try:
            self.factory.registry.unregisterPath(self, request.path)
        except RegistrationRefused as e:
            return self._reply(request.request_id, False, str(e))
        self._reply(request.request_id, True, "")

    def _reply(self, requestId: int, ok: bool, reason: str) -> None:
        self.sendFrame(Frame(path_reply=PathReply(request_id=requestId, ok=ok, reason=reason)))

    # Scrapes.

    def scrape(self, call: ScrapeCall) -> ScrapeStream:
        """
        Ask the agent for C{call}'s path; the returned stream carries its
        answer (already failed if the link is closing).
        """
        scrapeId = self._nextScrapeId
        self._nextScrapeId += 1
        stream = ScrapeStream(self, scrapeId, SCRAPE_WINDOW_BYTES)
        if self._lost is not None or self._draining:
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
                )
            )
        )
        return stream

    @property
    def scrapesInFlight(self) -> int:
        return len(self._scrapes)

    def forget(self, scrapeId: int) -> None:
        self._scrapes.pop(scrapeId, None)

    def sendIfConnected(self, frame: Frame) -> None:
        if self._lost is None:
            self.sendFrame(frame)

    def violation(self, why: str) -> None:
        """
        The agent broke the scrape protocol: close its link, and tell every
        scrape on it why.
        """
        if self._lost is None and not self.closingBecause:
            self.closingBecause = f"protocol violation: {why}"
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
        A draining agent takes no new scrapes; those in flight may finish.
        """
        self._draining = True
        self.factory.registry.removeAgent(self)

    def connectionLost(self, reason: Failure = Failure(SessionLost())) -> None:
        super().connectionLost(reason)
        if self._pathWarnings is not None:
            self._pathWarnings.flush()
        self.factory.linkClosed(self)
        if not self.agentId:
            return
        self.factory.registry.removeAgent(self)
        scrapes, self._scrapes = self._scrapes, {}
        why = self.closingBecause or reason.getErrorMessage()
        for stream in scrapes.values():
            stream.linkLost(why)
        self._log.info(
            "agent {name!r} ({id}) disconnected: {why}; {n} scrape(s) failed",
            name=self.name,
            id=self.agentId,
            why=why,
            n=len(scrapes),
        )


class AgentLinkFactory(ServerFactory):
    """
    Accepts agent connections on the agent port.

    @ivar pending: connections that have not completed the handshake; at
        C{proxy.internal.maxPendingHandshakes} further ones are closed at
        once, so a flood of idle or slow connections costs little and cannot
        crowd out the agents already here.
    @ivar refusedConnections: connections closed for that reason.
    """

    noisy = False
    _log = Logger(observer=observer)
    # Refused connections are reported at most this often, with a count.
    REFUSAL_REPORT_SECONDS = 60.0

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
        self._unreported = 0
        self._reportedAt: float | None = None
        self._warnedCleartextCredentials = False

    def startFactory(self) -> None:
        if self.authenticator.open:
            self._log.warn(
                "the agent port is open: any host that reaches it can register paths "
                "and receive scrapes; set proxy.agentToken, proxy.auth or client "
                "certificates (proxy.tls.trustCertCollectionFilePath)"
            )

    def buildProtocol(self, addr: IAddress | None) -> AgentLink | None:
        if len(self.pending) >= self.settings.max_pending_handshakes:
            self._refused(addr)
            return None
        link = AgentLink(self)
        self.links.add(link)
        self.pending.add(link)
        return link

    def _refused(self, addr: IAddress | None) -> None:
        self.refusedConnections += 1
        self.metrics.rejected("pending_handshakes")
        self._unreported += 1
        now = self.clock.seconds()
        if self._reportedAt is None or now - self._reportedAt >= self.REFUSAL_REPORT_SECONDS:
            self._log.warn(
                "closed {n} connection(s) (latest from {peer}): {limit} handshakes already "
                "pending (proxy.internal.maxPendingHandshakes)",
                n=self._unreported,
                peer=getattr(addr, "host", addr),
                limit=self.settings.max_pending_handshakes,
            )
            self._unreported = 0
            self._reportedAt = now

    def handshakeFinished(self, link: AgentLink) -> None:
        self.pending.discard(link)

    def linkClosed(self, link: AgentLink) -> None:
        self.links.discard(link)
        self.pending.discard(link)

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
            link.closingBecause = reason
            link.transport.loseConnection()
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
    registry = Registry(reservedPaths, authenticator.mayServe, settings)
    metrics = ProxyMetrics(uuid.uuid4().hex, clock)
    return AgentLinkFactory(settings, registry, clock, authenticator, metrics)
