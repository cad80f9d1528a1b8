# -*- test-case-name: promtwist.test.test_agent_connection -*-
"""
The agent's end of the link: say Hello, register every configured path, then
serve the proxy's scrape requests concurrently up to
C{agent.http.maxConcurrentClients}.
"""

from __future__ import annotations

import socket
import uuid

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist import __version__
from promtwist.agent.scraper import Scrape, Scraper
from promtwist.config import AgentSettings, PathConfig
from promtwist.httputil import redacted
from promtwist.logs import observer
from promtwist.protocol.framing import _peerName
from promtwist.protocol.promtwist_pb2 import (
    CancelScrape,
    Frame,
    Hello,
    Outcome,
    PathReply,
    RegisterPath,
    Reject,
    ScrapeCredit,
    ScrapeRequest,
    ScrapeResponse,
    Welcome,
)
from promtwist.protocol.session import PROTOCOL_VERSION, Session, SessionLost
from promtwist.tls import describeTLSFailure


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
    _beforeHandshake = frozenset({"welcome", "reject"})

    agentId = ""

    def __init__(self, factory: ProxyConnectionFactory) -> None:
        super().__init__(factory.clock)
        self.factory = factory
        self.settings = factory.settings
        self._ready: Deferred[ProxyConnection] = Deferred()
        self._scrapes: dict[int, Scrape] = {}
        self._slots = DeferredSemaphore(self.settings.max_concurrent_clients)
        self._chunkBytes = 0

    def whenReady(self) -> Deferred[ProxyConnection]:
        """
        Fires once the proxy welcomed us and answered every path
        registration; fails if it rejected us or the link went away first.
        """
        return self._ready

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
            self.factory.handshakeTimeout, self.transport.abortConnection
        )

    # Handshake.

    def frame_welcome(self, welcome: Welcome) -> None:
        self._handshakeTimer.cancel()
        self.agentId = welcome.agent_id
        period = 0.0
        if self.settings.heartbeat_enabled:
            period = self.settings.heartbeat_max_inactivity_secs
            if welcome.heartbeat_period_ms:
                period = min(period, welcome.heartbeat_period_ms / 1000)
        peerMax = welcome.max_frame_bytes or self.settings.max_frame_bytes
        self.handshakeDone(period, self.settings.max_frame_bytes, peerMax)
        self._chunkBytes = self.factory.scraper.chunkBytes(peerMax)
        self._log.info(
            "connected to proxy {peer} as {id}", peer=_peerName(self.transport), id=self.agentId
        )
        registrations = [self.registerPath(config) for config in self.settings.path_configs]
        gatherResults(registrations).addCallbacks(
            lambda _: self._ready.callback(self), self._readyFailed
        )

    def frame_reject(self, reject: Reject) -> None:
        self._handshakeTimer.cancel()
        reason = f"{Reject.Reason.Name(reject.reason).lower()}: {reject.message}"
        self._log.error("the proxy rejected this agent ({reason})", reason=reason)
        self._readyFailed(Failure(Rejected(reason)))

    def _readyFailed(self, failure: Failure) -> None:
        if not self._ready.called:
            self._ready.errback(failure)

    def registerPath(self, config: PathConfig) -> Deferred[bool]:
        """
        Ask the proxy to route C{/path} here. A refusal is logged, not
        fatal: the agent keeps serving its other paths.
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
            if answer.ok:
                self._log.info(
                    "serving /{path} for {url}", path=config.path, url=redacted(config.url)
                )
            else:
                self._log.error(
                    "the proxy refused path /{path}: {reason}",
                    path=config.path,
                    reason=answer.reason,
                )
            return bool(answer.ok)

        return reply.addCallback(registered)

    def frame_path_reply(self, reply: PathReply) -> None:
        self.replyReceived(reply.request_id, reply)

    # Scrapes.

    def frame_scrape_request(self, request: ScrapeRequest) -> None:
        config = self.factory.paths.get(request.path)
        if config is None:
            self.sendFrame(
                Frame(
                    scrape_response=ScrapeResponse(
                        scrape_id=request.scrape_id,
                        outcome=Outcome.PATH_NOT_FOUND,
                        status=404,
                        reason=f"agent {self.settings.name!r} does not serve /{request.path}",
                        last=True,
                    )
                )
            )
            return
        scrape = Scrape(self.factory.scraper, request, config, self._send, self._chunkBytes)
        self._scrapes[request.scrape_id] = scrape
        scrape.done.addCallback(lambda _: self._scrapes.pop(request.scrape_id, None))
        scrape.start()
        self._slots.run(scrape.run)

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
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(SessionLost())) -> None:
        super().connectionLost(reason)
        if self.factory.current is self:
            self.factory.current = None
        if not self._ready.called:
            self._ready.errback(
                SessionLost(
                    "link lost before it was ready: "
                    + (describeTLSFailure(reason) or reason.getErrorMessage())
                )
            )
        scrapes, self._scrapes = self._scrapes, {}
        for scrape in scrapes.values():
            scrape.cancel()


class ProxyConnectionFactory(Factory):
    """
    Builds a L{ProxyConnection} per connect; what outlives a connection (the
    scraper and its pool, the launch id) lives here.
    """

    noisy = False
    handshakeTimeout = 10.0
    current: ProxyConnection | None = None

    def __init__(self, settings: AgentSettings, scraper: Scraper, clock: IReactorTime) -> None:
        self.settings = settings
        self.scraper = scraper
        self.clock = clock
        self.paths = {config.path: config for config in settings.path_configs}
        self.launchId = uuid.uuid4().hex
        self.hostName = socket.gethostname()

    def buildProtocol(self, addr: IAddress | None) -> ProxyConnection:
        return ProxyConnection(self)
