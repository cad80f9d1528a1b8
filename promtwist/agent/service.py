# -*- test-case-name: promtwist.test.test_integration -*-
"""
The agent process as one service: a reconnecting link to the proxy and the
HTTP connection pool its scrapes share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from zope.interface import implementer

from promtwist.agent.connection import ProxyConnection, ProxyConnectionFactory, Rejected
from promtwist.agent.scraper import Scraper
from promtwist.config import AgentSettings
from promtwist.logs import observer
from promtwist.tls import linkTLS, linkUsesTLS, targetPolicy


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    """
    A pool whose connections do not log "Starting factory" for every new
    target connection.
    """

    _factory = _QuietClientFactory


class _Link(Protocol):
    """
    What the agent's ClientService holds for a ready connection: it closes
    the link through this transport, and is told here when the link is gone.
    """

    def __init__(self, connection: ProxyConnection) -> None:
        self.connection = connection


@implementer(IStreamClientEndpoint)
class _ReadyLinks(Factory):
    """
    The endpoint and the factory of the agent's ClientService: it dials the
    proxy, and reports a connection made only once the proxy has welcomed
    the agent and answered its path registrations.

    So the ClientService holds ready links only, and a link lost before it
    was ready (a certificate or a token refused, say) is a failed attempt,
    retried with backoff. ClientService's own C{prepareConnection} would do
    the same, but its state machine raises C{NoTransition} when a
    connection is lost while being prepared.

    @ivar notReady: told why a link did not become ready; returns the failure.
    """

    noisy = False

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        connections: ProxyConnectionFactory,
        notReady: Callable[[Failure], Failure],
    ) -> None:
        self.endpoint = endpoint
        self.connections = connections
        self.notReady = notReady
        self._handing: ProxyConnection | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        connection = cast(ProxyConnection, await self.endpoint.connect(self.connections))
        # Stopping the service cancels the attempt: drop the connection too.
        ready: Deferred[ProxyConnection] = Deferred(
            lambda _: connection.transport.abortConnection()
        )

        def settle(result: ProxyConnection | Failure) -> None:
            # After a cancel, the connection's own failure comes second.
            if not ready.called:
                ready.callback(result)

        connection.whenReady().addBoth(settle)
        await ready.addErrback(self.notReady)
        self._handing = connection
        link = protocolFactory.buildProtocol(connection.transport.getPeer())
        self._handing = None
        assert link is not None
        link.makeConnection(connection.transport)
        connection.whenLost().addCallback(lambda _: link.connectionLost(Failure(ConnectionDone())))
        return link

    def buildProtocol(self, addr: IAddress | None) -> _Link:
        assert self._handing is not None, "links are built for ready connections only"
        return _Link(self._handing)


class AgentService(MultiService):
    """
    Start it and the agent dials the proxy, registers its paths, and keeps
    doing so after every disconnect; stop it and it says goodbye, closes the
    link and the pool.

    @ivar factory: builds the connection for each (re)connect.
    """

    _log = Logger(observer=observer)

    def __init__(self, settings: AgentSettings, reactor: Any = None) -> None:
        """
        @raise promtwist.config.ConfigError: when a TLS file is unusable.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.settings = settings
        self.clock = reactor
        self.pool = QuietPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = settings.max_concurrent_clients
        agent = Agent(
            reactor,
            contextFactory=targetPolicy(settings),
            pool=self.pool,
            connectTimeout=settings.client_timeout_secs,
        )
        self.factory = ProxyConnectionFactory(settings, Scraper(settings, agent, reactor), reactor)
        proxy = settings.proxy_endpoints[0]
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, proxy.host, proxy.port, timeout=10
        )
        tls = linkTLS(settings, proxy)
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint)
        links = _ReadyLinks(endpoint, self.factory, self._notReady)
        self.link = ClientService(
            links,
            links,
            # Jittered exponential backoff, capped so that a returning proxy
            # gets its agents back within a few seconds.
            retryPolicy=backoffPolicy(
                initialDelay=0.25, factor=2.0, maxDelay=settings.reconnect_pause_secs
            ),
            clock=reactor,
        )
        self.link.setServiceParent(self)

    def _notReady(self, failure: Failure) -> Failure:
        """
        Log why a link did not become ready (a certificate the agent or the
        proxy refused, say): nothing else says it before the retry. A
        rejection is already logged with the proxy's reason, and stopping
        cancels the attempt on purpose.
        """
        if self.running and not failure.check(Rejected, CancelledError):
            self._log.warn(
                "no link to proxy {proxy}: {reason}",
                proxy=str(self.settings.proxy_endpoints[0]),
                reason=failure.getErrorMessage(),
            )
        return failure

    def startService(self) -> None:
        settings = self.settings
        self._log.info(
            "agent {name!r} dialling {proxy}{tls} for {n} path(s)",
            name=settings.name,
            proxy=str(settings.proxy_endpoints[0]),
            tls=" over TLS" if linkUsesTLS(settings) else "",
            n=len(settings.path_configs),
        )
        if settings.trust_all_x509_certificates:
            self._log.warn(
                "agent.http.enableTrustAllX509Certificates is on: HTTPS targets' certificates"
                " are NOT verified, so anyone on the path to a target can impersonate it"
                " and read what the agent sends it{ignored}",
                ignored=f" ({settings.https_trust_store_path} is not used)"
                if settings.https_trust_store_path
                else "",
            )
        super().startService()

    def whenConnected(self) -> Deferred[ProxyConnection]:
        """
        The ready connection, now or once there is one.

        It is delivered on a later reactor turn: ClientService fires its own
        C{whenConnected} in the middle of a state transition, and a caller
        that stopped the service from that callback would leave the service
        unable ever to finish stopping.
        """
        return self.link.whenConnected().addCallback(
            lambda link: deferLater(self.clock, 0, lambda: cast(_Link, link).connection)
        )

    def stopService(self) -> Deferred[None]:
        connection = self.factory.current
        if connection is not None and connection.established:
            connection.sendGoodbye("agent shutting down")
        d: Deferred[None] = super().stopService()
        d.addCallback(lambda _: self.pool.closeCachedConnections())
        return d
