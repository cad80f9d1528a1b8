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

from promtwist.config import ProxySettings
from promtwist.listen import Listener
from promtwist.logs import observer
from promtwist.proxy.access import guarded
from promtwist.proxy.discovery import DiscoveryResource
from promtwist.proxy.link import agentLinkFactory
from promtwist.proxy.scrape import ScrapeResource
from promtwist.tls import agentPortTLS, scrapePortTLS
from promtwist.webguard import HardenedSite


class ProxyService(MultiService):
    """
    @ivar registry: connected agents and their paths.
    @ivar agentListener: the listener agents dial.
    @ivar httpListener: the listener Prometheus scrapes.
    """

    _log = Logger(observer=observer)

    def __init__(self, settings: ProxySettings, reactor: Any = None, interface: str = "") -> None:
        """
        @raise promtwist.config.ConfigError: when a TLS file is unusable.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.settings = settings
        self.linkFactory = agentLinkFactory(
            settings, reactor, [settings.sd_path] if settings.sd_enabled else []
        )
        self.registry = self.linkFactory.registry
        discovery = (
            DiscoveryResource(self.registry, settings.sd_target_prefix)
            if settings.sd_enabled
            else None
        )
        # Credentials, when configured, guard discovery as well as scrapes.
        self.site = HardenedSite(
            guarded(ScrapeResource(settings, self.registry, reactor, discovery), settings),
            maxHeaderBytes=settings.http_max_header_bytes,
            headerTimeout=settings.http_header_timeout_secs,
            idleTimeout=settings.http_idle_timeout_secs,
            allowedNetworks=settings.http_allowed_networks,
            reactor=reactor,
        )
        self.agentListener = Listener(
            reactor, settings.agent_port, self.linkFactory, interface, agentPortTLS(settings)
        )
        self.agentListener.setServiceParent(self)
        self.httpListener = Listener(
            reactor, settings.http_port, self.site, interface, scrapePortTLS(settings)
        )
        self.httpListener.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        settings = self.settings
        self._logTLS(
            "agent", settings.tls_cert_chain_file_path, settings.tls_trust_cert_collection_file_path
        )
        self._logTLS(
            "scrape",
            settings.http_tls_cert_chain_file_path,
            settings.http_tls_trust_cert_collection_file_path,
        )
        if settings.sd_enabled:
            self._log.info("service discovery at /{path}", path=settings.sd_path)

    def _logTLS(self, port: str, cert: str, trust: str) -> None:
        """
        Say at startup which ports are TLS and which require client
        certificates.
        """
        if cert:
            self._log.info(
                "{port} port: TLS with {cert}{clients}",
                port=port,
                cert=cert,
                clients=f", client certificates from a CA in {trust} required" if trust else "",
            )

    def stopService(self) -> Deferred[list[object]]:
        # Stop accepting first, then let the agents know and wait for their
        # links to close, so nothing is left half-open behind us.
        stopping = super().stopService()
        return gatherResults([stopping, self.linkFactory.closeAll("proxy shutting down")])
