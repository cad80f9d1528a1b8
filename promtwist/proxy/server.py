# -*- test-case-name: promtwist.test.test_integration -*-
"""
The proxy process as one service: the agent listener, the scrape site and
the registry they share.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.web.server import Site

from promtwist.config import ProxySettings
from promtwist.listen import Listener
from promtwist.logs import observer
from promtwist.proxy.discovery import DiscoveryResource
from promtwist.proxy.link import AgentLinkFactory
from promtwist.proxy.registry import Registry
from promtwist.proxy.scrape import ScrapeResource


class ScrapeSite(Site):
    """
    The Prometheus-facing site. Twisted's access log is off: at one line per
    scrape per target it would drown everything else; the scrape resource
    logs each scrape at debug level instead.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


class ProxyService(MultiService):
    """
    @ivar registry: connected agents and their paths.
    @ivar agentListener: the listener agents dial.
    @ivar httpListener: the listener Prometheus scrapes.
    """

    _log = Logger(observer=observer)

    def __init__(self, settings: ProxySettings, reactor: Any = None, interface: str = "") -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.settings = settings
        self.registry = Registry(reservedPaths=[settings.sd_path] if settings.sd_enabled else [])
        self.linkFactory = AgentLinkFactory(settings, self.registry, reactor)
        discovery = (
            DiscoveryResource(self.registry, settings.sd_target_prefix)
            if settings.sd_enabled
            else None
        )
        self.site = ScrapeSite(
            ScrapeResource(settings, self.registry, reactor, discovery),
            timeout=settings.http_idle_timeout_secs,
        )
        self.agentListener = Listener(reactor, settings.agent_port, self.linkFactory, interface)
        self.agentListener.setServiceParent(self)
        self.httpListener = Listener(reactor, settings.http_port, self.site, interface)
        self.httpListener.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        if self.settings.sd_enabled:
            self._log.info("service discovery at /{path}", path=self.settings.sd_path)

    def stopService(self) -> Deferred[list[object]]:
        # Stop accepting first, then let the agents know and wait for their
        # links to close, so nothing is left half-open behind us.
        stopping = super().stopService()
        return gatherResults([stopping, self.linkFactory.closeAll("proxy shutting down")])
