# -*- test-case-name: promtwist.test.test_agent_service -*-
"""
The agent's composition root: settings in, an agent service out.

Every part of the agent is made here, once, and handed to the parts that
use it: the launch id its metrics and its connections share, the target
connection pool and the scraper, the connection factory, the proxy
endpoints, the discovery file and the operator's listeners. The twistd
plugin (L{promtwist.agent.tap}), the console script (through it) and the
tests all start an agent through L{buildAgent}; an embedding program can
too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from promtwist.agent.client import Origin, TargetPool
from promtwist.agent.connection import ProxyConnectionFactory
from promtwist.agent.discoveryfile import FileDiscovery
from promtwist.agent.filters import FilterStream
from promtwist.agent.grpclink import GrpcLinkEndpoint
from promtwist.agent.scraper import ScrapeObserver, Scraper
from promtwist.agent.service import AgentService
from promtwist.config.settings import AgentSettings
from promtwist.health import agentHealth
from promtwist.metrics import AgentMetrics
from promtwist.reloads import Load
from promtwist.tls import linkTLS, targetPolicy
from promtwist.web import operationsListeners


def buildAgent(
    settings: AgentSettings,
    reactor: Any = None,
    *,
    loadSettings: Load[AgentSettings] | None = None,
    warn: Callable[[str], None] | None = None,
    environ: Mapping[str, str] | None = None,
    endpoints: Sequence[tuple[str, IStreamClientEndpoint]] | None = None,
) -> AgentService:
    """
    The agent C{settings} describe, ready to start.

    @param reactor: what everything dials, times and schedules with; the
        global reactor if L{None}.
    @param loadSettings: reads the configuration again, with the startup's
        command-line options and environment, in a thread; with it,
        C{SIGHUP} reloads.
    @param warn: where the reloads' warnings go, in the reactor thread.
    @param environ: for substitutions in the discovery file.
    @param endpoints: overrides the proxy endpoints the settings name
        (for tests).
    @raise promtwist.config.settings.ConfigError: when a TLS file is unusable.
    """
    if reactor is None:
        from twisted.internet import reactor
    launchId = uuid.uuid4().hex
    metrics = AgentMetrics(launchId, settings.name, reactor)
    pool = TargetPool(reactor, targetEndpoints(settings, reactor), settings.max_concurrent_clients)
    scraper = Scraper(settings, pool, reactor, ScrapeMetrics(metrics))
    factory = ProxyConnectionFactory(settings, scraper, reactor, launchId=launchId)
    service = AgentService(
        settings,
        reactor,
        factory,
        pool,
        metrics,
        proxyEndpoints(settings, reactor) if endpoints is None else endpoints,
        loadSettings=loadSettings,
        warn=warn,
    )
    metrics.track(service.state)
    if settings.discovery_enabled:
        service.watch(
            FileDiscovery(
                settings.discovery_file_path,
                settings.discovery_reconcile_interval_secs,
                service.discovered,
                reactor,
                environ,
            )
        )
    for listener in operationsListeners(
        settings,
        metrics.registry,
        agentHealth(service.state, settings, lambda: service.listeners),
        service.debugText,
        reactor,
    ):
        service.addListener(listener)
    return service


def targetEndpoints(
    settings: AgentSettings, reactor: Any
) -> Callable[[Origin], IStreamClientEndpoint]:
    """
    How the target pool reaches an origin: with
    C{agent.http.clientTimeoutSecs} to connect, and for https the TLS
    options of L{targetPolicy} (trust, client certificate, host name check),
    as twisted.web's Agent used them.

    @raise promtwist.config.settings.ConfigError: when a TLS file is unusable.
    """
    policy = targetPolicy(settings)

    def endpointFor(origin: Origin) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, origin.host, origin.port, timeout=settings.client_timeout_secs
        )
        if origin.scheme == "https":
            creator = policy.creatorForNetloc(origin.host.encode("ascii"), origin.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint

    return endpointFor


def proxyEndpoints(
    settings: AgentSettings, reactor: Any
) -> list[tuple[str, IStreamClientEndpoint]]:
    """
    An endpoint per configured proxy, each with TLS options of its own (the
    certificate's expected host name differs); with C{agent.transport =
    grpc}, each carries the link inside a gRPC call.

    @raise promtwist.config.settings.ConfigError: when a TLS file is unusable.
    """
    endpoints: list[tuple[str, IStreamClientEndpoint]] = []
    for proxy in settings.proxy_endpoints:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, proxy.host, proxy.port, timeout=10
        )
        tls = linkTLS(settings, proxy)
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint)
        if settings.transport == "grpc":
            endpoint = GrpcLinkEndpoint(endpoint, str(proxy), reactor)
        endpoints.append((str(proxy), endpoint))
    return endpoints


class ScrapeMetrics(ScrapeObserver):
    """
    The agent's metrics as its scrapes' observer.
    """

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def scrapeEnded(self, kind: str, seconds: float) -> None:
        # A scrape the proxy cancelled has no result to count.
        if kind != "cancelled":
            self.metrics.scrapeFinished(kind, seconds)

    def invalidPath(self) -> None:
        self.metrics.invalidPath()

    def resultSent(self, kind: str) -> None:
        self.metrics.resultSent(kind)

    def filtered(self, path: str, stream: FilterStream) -> None:
        self.metrics.filtered(path, stream.linesDropped, stream.bytesSaved)

    def retried(self, kind: str) -> None:
        self.metrics.retried(kind)
