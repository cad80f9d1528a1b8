# -*- test-case-name: promtwist.test.test_agent_connection -*-
"""
The agent's end of the link: say Hello, register every configured path, then
serve the proxy's scrape requests concurrently up to
C{agent.http.maxConcurrentClients}.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist import __version__
from promtwist.addresses import peerName
from promtwist.agent.paths import PathChanges, PathTable
from promtwist.agent.scraper import Scrape, Scraper
from promtwist.agent.slots import Slots
from promtwist.agent.targets import NotServed, targetFetch
from promtwist.config.settings import AgentSettings, PathConfig
from promtwist.grpc.client import CallFailed
from promtwist.grpc.tunnel import CallEnded
from promtwist.hostkeys import spelled
from promtwist.httputil import redacted
from promtwist.logs import clip, observer, utcTime
from promtwist.protocol.framing import ProtocolError
from promtwist.protocol.liveness import DeadlineSweep
from promtwist.protocol.promtwist_pb2 import (
    HOLDER,
    RELEASED,
    STANDBY,
    CancelScrape,
    Frame,
    Hello,
    Holder,
    Outcome,
    PathReply,
    PathStatus,
    RegisterPath,
    Reject,
    ScrapeCredit,
    ScrapeRequest,
    ScrapeResponse,
    UnregisterPath,
    Welcome,
)
from promtwist.protocol.session import (
    HANDSHAKE_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    LinkState,
    Session,
    SessionLost,
)
from promtwist.tls import CertificateRejected, describeTLSFailure, linkUsesTLS

# Proxies assign 16 hex digits; anything much longer is not an id.
MAX_AGENT_ID_LENGTH = 64

# Refusals that other claims leaving may lift (the proxy's byte budget, a
# per-agent path cap): the agent asks again after RETRY_FIRST_SECS, doubling
# up to RETRY_MAX_SECS, while the link lasts.
RETRIED_REFUSALS = frozenset({"budget", "limit"})
RETRY_FIRST_SECS = 1.0
RETRY_MAX_SECS = 60.0

_SERVING = frozenset(
    {
        "path_reply",
        "path_status",
        "scrape_request",
        "scrape_credit",
        "cancel_scrape",
        "ping",
        "pong",
        "goodbye",
    }
)


@dataclass(frozen=True)
class Standing:
    """
    This agent's place on one path it registered, as the proxy last said.

    @ivar holder: who serves the path: this agent when it holds it; the
        proxy's words, clipped, for another agent.
    @ivar since: when C{holder} took the path, in seconds since the epoch
        (0 when the proxy did not say).
    @ivar position: 0 when this agent holds the path, else its place in
        the standby queue (1 for the first; the proxy updates it whenever
        the holder or the queue changes; 0 when the proxy did not say).
    """

    holds: bool
    holder: str = ""
    since: float = 0.0
    position: int = 0

    def describe(self) -> str:
        """
        One line for logs and the debug page.
        """
        if self.holds:
            return "held by this agent" + (f" since {utcTime(self.since)}" if self.since else "")
        place = f" #{self.position}" if self.position else ""
        return f"standby{place} behind {self.holder}" + (
            f" (holder since {utcTime(self.since)})" if self.since else ""
        )


def _holderText(holder: Holder) -> str:
    """
    The proxy's description of a holder, clipped: it names another agent,
    whose name and host name that agent chose.
    """
    host = clip(holder.host_name) or "?"
    return f"agent {clip(holder.agent_name)!r} on {host} ({clip(holder.agent_id)})"


def _standby(holder: Holder, position: int) -> Standing:
    """
    This agent waiting behind C{holder} at C{position}, as the proxy said.
    """
    return Standing(False, _holderText(holder), holder.since_ms / 1000, position)


# Why a proxy may close a new link without a word, by whether this agent
# dials with TLS: the two ends disagree about TLS.
_SILENT_CLOSE = {
    False: " (the proxy closed it without a word: if its agent port uses TLS, set"
    " agent.tls.enabled = true)",
    True: " (the proxy closed it without a word: if its agent port is plain TCP, turn TLS"
    " off in the agent, or give the proxy proxy.tls.certChainFilePath and"
    " proxy.tls.privateKeyFilePath)",
}


class Rejected(Exception):
    """
    The proxy refused this agent; the message is the proxy's reason.
    """


class ProxyConnection(Session):
    """
    One connection to a proxy. A new one is made for every (re)connect, so
    all per-connection state lives here and dies with it.
    """

    _log = Logger(observer=observer)
    # The agent keeps reading its proxy whatever its own writes: the proxy
    # stops reading an agent that does not read, and two ends doing so
    # would deadlock a busy link (see Session).
    stopsReadingUnreadPeer = False
    # DRAINING: this agent said Goodbye; scrape requests that still arrive
    # (sent before the proxy read it) are served, the rest as usual.
    allowedFrames: ClassVar[Mapping[LinkState, frozenset[str]]] = {
        LinkState.HANDSHAKE: frozenset({"welcome", "reject"}),
        LinkState.ESTABLISHED: _SERVING,
        LinkState.DRAINING: _SERVING,
    }

    misdirected: ClassVar[Mapping[str, str]] = {
        "HTTP": "it is probably the proxy's scrape port, not its agent port"
        " (proxy.agent.port, default 50051); fix --proxy or agent.proxy.port",
        "TLS": "the proxy's agent port uses TLS: set agent.tls.enabled = true"
        " (with agent.tls.trustCertCollectionFilePath for a private CA)",
    }

    agentId = ""

    def __init__(self, factory: ProxyConnectionFactory) -> None:
        # A close the proxy does not let finish gets the grace period.
        super().__init__(factory.clock, factory.settings.shutdown_grace_secs, factory.sweep)
        self.factory = factory
        self.settings = factory.settings
        # Settled once by the handshake; L{whenReady} hands out copies.
        self._ready: Deferred[ProxyConnection] = Deferred()
        self._ready.addBoth(self._settleReady)
        self._readiness: ProxyConnection | Failure | None = None
        self._readyWaiters: list[Deferred[ProxyConnection]] = []
        self._scrapes: dict[int, Scrape] = {}
        self._slots = Slots(self.settings.max_concurrent_clients)
        self._chunkBytes = 0
        # What the proxy has been told, by path, and whether it accepted.
        # Path changes are applied one batch at a time, each against this.
        self._registered: dict[str, tuple[PathConfig, bool]] = {}
        # Of the accepted paths: held or waited for, as the proxy last said.
        self.standings: dict[str, Standing] = {}
        # Paths refused for a limit: the delay before the next attempt.
        self._retryDelays: dict[str, float] = {}
        self._pathLock = DeferredLock()
        self._idle: list[Deferred[None]] = []

    def whenReady(self) -> Deferred[ProxyConnection]:
        """
        A new Deferred that fires once the proxy welcomed us and answered
        every path registration, and fails if it rejected us or the link went
        away first: each caller has its own, so what one caller's callbacks
        do cannot change what another receives.
        """
        d: Deferred[ProxyConnection] = Deferred(self._forgetWaiter)
        if self._readiness is None:
            self._readyWaiters.append(d)
        else:
            _settle(d, self._readiness)
        return d

    def _forgetWaiter(self, d: Deferred[ProxyConnection]) -> None:
        # A cancelled waiter leaves the list still to be settled, if it is in it.
        if d in self._readyWaiters:
            self._readyWaiters.remove(d)

    def _settleReady(self, result: ProxyConnection | Failure) -> None:
        # Ends the internal Deferred's chain: each waiter has its own copy.
        self._readiness = result
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            _settle(d, result)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.current = self
        settings = self.settings
        self.sendFrame(
            Frame(
                hello=Hello(
                    protocol_version=PROTOCOL_VERSION,
                    agent_name=settings.name,
                    host_name=self.factory.hostName,
                    launch_id=self.factory.launchId,
                    token=settings.agent_token,
                    consolidated=settings.consolidated,
                    software_version=__version__.public(),
                    max_frame_bytes=settings.max_frame_bytes,
                )
            )
        )
        # A proxy that never answers must not hold this attempt forever.
        self._handshakeTimer = self.callLater(
            self.factory.handshakeTimeout, self._handshakeTimedOut
        )

    def _handshakeTimedOut(self) -> None:
        self.close(f"no Welcome from the proxy within {self.factory.handshakeTimeout}s", abort=True)

    # Handshake.

    def frame_welcome(self, welcome: Welcome) -> None:
        self._handshakeTimer.cancel()
        if welcome.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the proxy speaks protocol version {welcome.protocol_version}; "
                f"this agent speaks version {PROTOCOL_VERSION}"
            )
        if welcome.max_frame_bytes and welcome.max_frame_bytes < HANDSHAKE_MAX_FRAME_BYTES:
            raise ProtocolError(
                f"the proxy accepts frames of at most {welcome.max_frame_bytes} bytes, less "
                f"than the minimum of {HANDSHAKE_MAX_FRAME_BYTES}"
            )
        if not welcome.agent_id or len(welcome.agent_id) > MAX_AGENT_ID_LENGTH:
            raise ProtocolError(f"an agent id of {len(welcome.agent_id)} characters")
        self.agentId = welcome.agent_id
        # The proxy drives liveness: it pings this link whenever it was idle
        # for two of its periods, so the agent only answers, and
        # aborts a proxy silent for three of those periods. An agent that wants to notice
        # a dead proxy sooner than that (heartbeatMaxInactivitySecs below
        # the proxy's period) pings at its own period as well.
        period = 0.0
        drives = False
        if self.settings.heartbeat_enabled:
            period = self.settings.heartbeat_max_inactivity_secs
            proxyPeriod = welcome.heartbeat_period_ms / 1000
            drives = not proxyPeriod or period < proxyPeriod
            if proxyPeriod:
                period = min(period, proxyPeriod)
        peerMax = welcome.max_frame_bytes or self.settings.max_frame_bytes
        self.handshakeDone(period, self.settings.max_frame_bytes, peerMax, drives=drives)
        self._chunkBytes = self.factory.scraper.chunkBytes(peerMax)
        self._log.info(
            "connected to proxy {peer} as {id}", peer=peerName(self.transport), id=self.agentId
        )
        self.syncPaths().addCallbacks(lambda _: self._ready.callback(self), self._readyFailed)

    def misdirectedPeer(self, why: str) -> None:
        # The link is not ready, so the failure carries C{why} to the
        # agent's dial report, which logs it once, not at every retry.
        pass

    def frame_reject(self, reject: Reject) -> None:
        # Logged by the dial report (L{promtwist.agent.dialling}) once, not
        # at every retry.
        self._handshakeTimer.cancel()
        reason = f"{Reject.Reason.Name(reject.reason).lower()}: {clip(reject.message)}"
        self._readyFailed(Failure(Rejected(reason)))
        self.close(f"rejected: {reason}")

    def _readyFailed(self, failure: Failure) -> None:
        if not self._ready.called:
            self._ready.errback(failure)

    # Paths.

    @property
    def welcomed(self) -> bool:
        return bool(self.agentId) and self._lost is None

    def registeredPaths(self) -> Mapping[str, PathConfig]:
        """
        The paths the proxy accepted from this connection.
        """
        return {path: config for path, (config, ok) in self._registered.items() if ok}

    def syncPaths(self) -> Deferred[None]:
        """
        Bring the proxy's view of this agent's paths in line with the
        factory's desired set, over this link: register new paths,
        unregister removed ones, re-register those whose name or labels
        changed. A changed URL needs no message: the URL lives here only.

        Batches run one after another, each diffing the desired set of its
        own time against what the proxy was told, so overlapping changes
        (a reload during a discovery tick) end in the latest state.

        @return: fires when done; fails only if the link was lost.
        """
        return self._pathLock.run(self._syncOnce)

    def _syncOnce(self) -> Deferred[None]:
        desired = self.factory.paths
        work: list[Deferred[Any]] = []
        for path, (old, ok) in list(self._registered.items()):
            if path not in desired:
                if ok:
                    work.append(self.unregisterPath(old))
                else:
                    del self._registered[path]
        for path, config in desired.items():
            known = self._registered.get(path)
            if known is None:
                work.append(self.registerPath(config))
                continue
            old, ok = known
            if old == config:
                continue
            if (old.name, dict(old.labels)) == (config.name, dict(config.labels)):
                self._registered[path] = (config, ok)
                self._log.info(
                    "{path} now scrapes {url}", path=spelled(path), url=redacted(config.url)
                )
            elif ok and self.settings.consolidated:
                # A consolidated group keeps the name and labels of its first
                # member: leave it and join again.
                work.append(self.unregisterPath(old).addCallback(self._reregister, config))
            else:
                # The proxy replaces an exclusive path's name and labels in
                # place, with no moment where the path is unknown.
                work.append(self.registerPath(config))
        return gatherResults(work, consumeErrors=True).addCallback(lambda _: None)

    def _reregister(self, _: object, config: PathConfig) -> Deferred[bool]:
        return self.registerPath(config)

    def unregisterPath(self, config: PathConfig) -> Deferred[bool]:
        """
        Ask the proxy to stop routing C{/path} here.
        """
        requestId, reply = self.expectReply()
        self.sendFrame(
            Frame(unregister_path=UnregisterPath(request_id=requestId, path=config.path))
        )

        def unregistered(answer: PathReply) -> bool:
            if self._registered.get(config.path, (None, False))[0] == config:
                del self._registered[config.path]
                self.standings.pop(config.path, None)
            if answer.ok:
                self._log.info("no longer serving {path}", path=spelled(config.path))
            else:
                self._log.warn(
                    "the proxy did not unregister {path}: {reason}",
                    path=spelled(config.path),
                    reason=answer.reason,
                )
            return bool(answer.ok)

        return reply.addCallback(unregistered)

    def registerPath(self, config: PathConfig) -> Deferred[bool]:
        """
        Ask the proxy to route C{/path} here. A refusal is logged, not
        fatal: the agent keeps serving its other paths. It asks again,
        with backoff, after a refusal other claims leaving may lift (see
        L{RETRIED_REFUSALS}); after any other, not until the path's config
        changes.
        """
        requestId, reply = self.expectReply()
        self.sendFrame(
            Frame(
                register_path=RegisterPath(
                    request_id=requestId,
                    path=config.path,
                    name=config.name,
                    labels=config.labels,
                    target_url=redacted(config.url),
                )
            )
        )

        def registered(answer: PathReply) -> bool:
            self._registered[config.path] = (config, bool(answer.ok))
            self.standings.pop(config.path, None)
            if answer.ok and answer.role == STANDBY:
                standing = _standby(answer.holder, answer.position)
                self.standings[config.path] = standing
                self._log.info(
                    "waiting for {path} ({url}): {standing}; the proxy promotes this agent "
                    "when the holder leaves",
                    path=spelled(config.path),
                    url=redacted(config.url),
                    standing=standing.describe(),
                )
            elif answer.ok:
                self.standings[config.path] = Standing(True, since=answer.holder.since_ms / 1000)
                self._log.info(
                    "serving {path} for {url}", path=spelled(config.path), url=redacted(config.url)
                )
            else:
                self._refused(config, answer)
            if answer.ok:
                self._retryDelays.pop(config.path, None)
            return bool(answer.ok)

        return reply.addCallback(registered)

    def _refused(self, config: PathConfig, answer: PathReply) -> None:
        """
        Log a refusal (at error the first time, at debug for a retry) and,
        if it is of a kind that may pass, ask again later on this link.
        """
        retried = config.path in self._retryDelays
        again = ""
        if answer.refusal in RETRIED_REFUSALS:
            delay = min(
                self._retryDelays.get(config.path, RETRY_FIRST_SECS / 2) * 2, RETRY_MAX_SECS
            )
            self._retryDelays[config.path] = delay
            self.callLater(delay, self._retry, config)
            again = f"; asking again in {delay:g}s"
        (self._log.debug if retried else self._log.error)(
            "the proxy refused path {path}: {reason}{again}",
            path=spelled(config.path),
            reason=clip(answer.reason),
            again=again,
        )

    def _retry(self, config: PathConfig) -> None:
        """
        Claim C{config} again if it is still wanted as it was and still
        refused; in turn with the other path changes.
        """

        def attempt() -> Deferred[bool] | None:
            wanted = self.factory.paths.get(config.path) == config
            # A draining link (this agent said Goodbye) may not claim paths.
            if self.state is not LinkState.ESTABLISHED:
                wanted = False
            if wanted and self._registered.get(config.path) == (config, False):
                return self.registerPath(config)
            self._retryDelays.pop(config.path, None)
            return None

        # A lost link fails the request; its timers are cancelled already.
        self._pathLock.run(attempt).addErrback(lambda _: None)

    def frame_path_reply(self, reply: PathReply) -> None:
        self.replyReceived(reply.request_id, reply)

    def frame_path_status(self, status: PathStatus) -> None:
        """
        The proxy moved this agent on a path it registered: promoted to
        holder (the holder left); displaced to standby (its per-agent
        identity claimed it from another process, or the path's owner came
        back); as a standby, behind a new holder or at a new place (logged
        at debug: one holder leaving moves every standby of its paths); or
        released (this launch claimed it again on another link).
        """
        known = self._registered.get(status.path)
        if known is None or not known[1]:
            self.warnings.warn(
                "path status",
                "the proxy sent a status for {path}, which this agent did not register",
                path=spelled(clip(status.path)),
            )
            return
        if status.role not in (HOLDER, STANDBY, RELEASED):
            self.warnings.warn(
                "path status",
                "the proxy sent a status for {path} with no known role ({role}); ignored",
                path=spelled(clip(status.path)),
                role=int(status.role),
            )
            return
        reason = clip(status.reason)
        if status.role == RELEASED:
            self._registered[status.path] = (known[0], False)
            self.standings.pop(status.path, None)
            self._log.warn(
                "no longer claiming {path} on this link: {holder} holds it ({reason})",
                path=spelled(status.path),
                holder=_holderText(status.holder),
                reason=reason,
            )
        elif status.role == STANDBY:
            held = self.standings.get(status.path, Standing(False)).holds
            standing = _standby(status.holder, status.position)
            self.standings[status.path] = standing
            if held:
                self._log.warn(
                    "no longer serving {path}: displaced by {holder} ({reason}); "
                    "waiting as standby",
                    path=spelled(status.path),
                    holder=standing.holder,
                    reason=reason,
                )
            else:
                self._log.debug(
                    "{path}: {standing} ({reason})",
                    path=spelled(status.path),
                    standing=standing.describe(),
                    reason=reason,
                )
        else:
            self.standings[status.path] = Standing(True, since=status.holder.since_ms / 1000)
            self._log.info(
                "now serving {path}: promoted from standby ({reason})",
                path=spelled(status.path),
                reason=reason,
            )

    # Scrapes.

    def frame_scrape_request(self, request: ScrapeRequest) -> None:
        # After this agent's Goodbye too: the proxy sent it before it read
        # the Goodbye, and it is the last scrape of this path on this link
        # (the next goes to a standby), so it is served, not refused.
        if request.target:
            try:
                config: PathConfig | None = targetFetch(
                    self.settings.name,
                    request.target,
                    request.scheme,
                    request.path,
                    self._served,
                )
            except NotServed as e:
                status = 404 if e.outcome == Outcome.PATH_NOT_FOUND else 503
                return self._refuse(request, e.outcome, status, str(e))
        else:
            config = self._served(request.path)
        if config is None:
            self.factory.scraper.observer.invalidPath()
            self._refuse(
                request,
                Outcome.PATH_NOT_FOUND,
                404,
                f"agent {self.settings.name!r} does not serve /{clip(request.path)}",
            )
            return
        scrape = Scrape(self.factory.scraper, request, config, self._send, self._chunkBytes)
        self._scrapes[request.scrape_id] = scrape
        scrape.done.addBoth(lambda _: self._scrapeDone(request.scrape_id))
        # The scrape owns its wait for a slot, its fetch and its deadline;
        # done tells when it has sent its last frame.
        scrape.start(self._slots)

    def _served(self, path: str) -> PathConfig | None:
        """
        The configuration this link serves C{path} (or host key) by: a path
        being unregistered is still routed here until the proxy answers, so
        it is served as it was configured until then.
        """
        config: PathConfig | None = self.factory.paths.get(path)
        if config is not None:
            return config
        known = self._registered.get(path)
        return known[0] if known is not None and known[1] else None

    def _refuse(self, request: ScrapeRequest, outcome: int, status: int, reason: str) -> None:
        # A result, as prometheus-proxy's agent counts one.
        self.factory.scraper.observer.resultSent("non-gzipped")
        self.sendFrame(
            Frame(
                scrape_response=ScrapeResponse(
                    scrape_id=request.scrape_id,
                    outcome=outcome,  # type: ignore[arg-type]
                    status=status,
                    reason=reason,
                    last=True,
                )
            )
        )

    def _scrapeDone(self, scrapeId: int) -> None:
        self._scrapes.pop(scrapeId, None)
        if not self._scrapes:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    @property
    def scrapesInFlight(self) -> int:
        return len(self._scrapes)

    @property
    def backlog(self) -> int:
        """
        Scrapes waiting for one of the C{maxConcurrentClients} slots.
        """
        return len(self._slots.waiting)

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once no scrape is in flight on this connection (at once if
        none is).
        """
        d: Deferred[None] = Deferred()
        if not self._scrapes:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    def frame_scrape_credit(self, credit: ScrapeCredit) -> None:
        scrape = self._scrapes.get(credit.scrape_id)
        if scrape is not None:
            scrape.credit(credit.bytes)

    def frame_cancel_scrape(self, cancel: CancelScrape) -> None:
        scrape = self._scrapes.get(cancel.scrape_id)
        if scrape is not None:
            scrape.cancel()

    def _send(self, frame: Frame) -> None:
        if self._lost is None:
            self.sendFrame(frame)

    def goodbyeReceived(self, reason: str) -> None:
        # The proxy is going away; reconnecting is ClientService's job.
        self.close(f"the proxy is going away: {reason}")

    def connectionLost(self, reason: Failure = Failure(SessionLost())) -> None:
        super().connectionLost(reason)
        if self.factory.current is self:
            self.factory.current = None
        if not self._ready.called:
            tls = describeTLSFailure(reason)
            why = tls or self.closeReason or reason.getErrorMessage()
            if reason.check(CallEnded) and not self.closeReason:
                # HTTP/2 was up, so the two ends agree about TLS: the
                # proxy's status came, and it said OK.
                why = "the proxy ended the link's gRPC call with OK before its Welcome"
            elif not (
                tls
                or self.closeReason
                or self.bytesReceived
                or reason.check(CertificateRejected, CallFailed)
            ):
                # Only a close with no cause at all suggests the two ends
                # disagree about TLS.
                why += _SILENT_CLOSE[linkUsesTLS(self.settings)]
            self._ready.errback(SessionLost(f"link lost before it was ready: {why}"))
        observer = self.factory.scraper.observer
        # Queued scrapes first: cancelling a running one frees its slot,
        # which would start a queued one against a link that is gone.
        for scrape in sorted(self._scrapes.values(), key=lambda s: not s.queued):
            # The result of a fetch under way can no longer reach the proxy.
            # One still queued for a slot never started, and is not counted
            # (prometheus-proxy's agent drops its queue the same way).
            if not scrape.queued:
                observer.resultSent("dropped")
            scrape.cancel()
        # Nothing more can finish on this link.
        self._scrapes.clear()
        self._scrapeDone(0)


def _settle(d: Deferred[ProxyConnection], result: ProxyConnection | Failure) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


class ProxyConnectionFactory(Factory):
    """
    Builds a L{ProxyConnection} per connect; what outlives a connection (the
    scraper and its pool, the launch id) lives here.
    """

    noisy = False
    handshakeTimeout = 10.0
    current: ProxyConnection | None = None

    def __init__(
        self, settings: AgentSettings, scraper: Scraper, clock: IReactorTime, launchId: str = ""
    ) -> None:
        """
        @param launchId: this process's launch id, which its metrics carry
            too; a new one if empty.
        """
        self.settings = settings
        self.scraper = scraper
        self.clock = clock
        self.sweep = DeadlineSweep(clock)
        self.table = PathTable(static=settings.claims)
        # Replaced, never changed in place: see PathTable.desired.
        self.paths: Mapping[str, PathConfig] = self.table.desired()
        # Set when the agent is stopping: new scrapes are refused.
        self.draining = False
        self.launchId = launchId or uuid.uuid4().hex
        self.hostName = socket.gethostname()

    def replacePaths(
        self,
        *,
        static: Iterable[PathConfig] | None = None,
        discovered: Iterable[PathConfig] | None = None,
    ) -> tuple[PathChanges, Deferred[None]]:
        """
        Change the static or the discovered paths (L{None} keeps a part).
        New scrapes use the new table at once; the current connection, if
        the proxy welcomed it, tells the proxy over the same link. A
        connection still in its handshake registers the new set when
        welcomed, and every reconnect registers the whole set.

        @return: the change, and a Deferred that fires once the proxy
            answered every registration it needed (at once when there is
            no link; it never fails).
        """
        changes = self.table.replace(static=static, discovered=discovered)
        self.paths = self.table.desired()
        connection = self.current
        if not changes or connection is None or not connection.welcomed:
            return changes, succeed(None)
        return changes, connection.syncPaths().addErrback(lambda _: None)

    def buildProtocol(self, addr: IAddress | None) -> ProxyConnection:
        return ProxyConnection(self)
