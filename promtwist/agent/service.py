# -*- test-case-name: promtwist.test.test_integration -*-
"""
The agent process as one service: a reconnecting link to the proxy and the
HTTP connection pool its scrapes share.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from promtwist.agent.connection import ProxyConnection, ProxyConnectionFactory
from promtwist.agent.scraper import Scraper
from promtwist.config import AgentSettings
from promtwist.logs import observer


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    """
    A pool whose connections do not log "Starting factory" for every new
    target connection.
    """

    _factory = _QuietClientFactory


def _whenReady(connection: IProtocol) -> Deferred[ProxyConnection]:
    """
    A connection counts as made once the handshake and registrations are done.
    """
    return cast(ProxyConnection, connection).whenReady()


class AgentService(MultiService):
    """
    Start it and the agent dials the proxy, registers its paths, and keeps
    doing so after every disconnect; stop it and it says goodbye, closes the
    link and the pool.

    @ivar factory: builds the connection for each (re)connect.
    """

    _log = Logger(observer=observer)

    def __init__(self, settings: AgentSettings, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.settings = settings
        self.pool = QuietPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = settings.max_concurrent_clients
        agent = Agent(reactor, pool=self.pool, connectTimeout=settings.client_timeout_secs)
        self.factory = ProxyConnectionFactory(settings, Scraper(settings, agent, reactor), reactor)
        endpoint = settings.proxy_endpoints[0]
        self.link = ClientService(
            HostnameEndpoint(reactor, endpoint.host, endpoint.port, timeout=10),
            self.factory,
            # Jittered exponential backoff, capped so that a returning proxy
            # gets its agents back within a few seconds.
            retryPolicy=backoffPolicy(
                initialDelay=0.25, factor=2.0, maxDelay=settings.reconnect_pause_secs
            ),
            clock=reactor,
            prepareConnection=_whenReady,
        )
        self.link.setServiceParent(self)

    def startService(self) -> None:
        self._log.info(
            "agent {name!r} dialling {proxy} for {n} path(s)",
            name=self.settings.name,
            proxy=str(self.settings.proxy_endpoints[0]),
            n=len(self.settings.path_configs),
        )
        super().startService()

    def whenConnected(self) -> Deferred[ProxyConnection]:
        """
        The ready connection, now or once there is one.
        """
        return self.link.whenConnected().addCallback(lambda c: cast(ProxyConnection, c))

    def stopService(self) -> Deferred[None]:
        connection = self.factory.current
        if connection is not None and connection.established:
            connection.sendGoodbye("agent shutting down")
        d: Deferred[None] = super().stopService()
        d.addCallback(lambda _: self.pool.closeCachedConnections())
        return d
