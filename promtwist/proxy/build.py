# -*- test-case-name: promtwist.test.test_proxy_service -*-
"""
The proxy's composition root: settings in, a proxy service out.

Every part of the proxy is made here, once, and handed to the parts that
use it: the authenticator, the registry and the metrics the agent port and
the scrape port share, the two ports' factories and listeners, the
operator's listeners and the timers. No part builds another or reaches
into one to find a third: the twistd plugin (L{promtwist.proxy.tap}), the
console scripts (through it) and the tests all start a proxy through
L{buildProxy}.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime

from promtwist.config.settings import MiB, ProxySettings
from promtwist.grpc.connection import GrpcServerFactory
from promtwist.grpc.limits import Limits
from promtwist.health import proxyHealth
from promtwist.listen import HTTP_1_1, settingListener
from promtwist.metrics import ProxyMetrics
from promtwist.proxy.access import guarded
from promtwist.proxy.admission import scrapeConnections, scrapePortConnections
from promtwist.proxy.agentport import AgentPortFactory
from promtwist.proxy.auth import Authenticator
from promtwist.proxy.bodybudget import BodyBudget
from promtwist.proxy.discovery import Discovery
from promtwist.proxy.eviction import evictStale
from promtwist.proxy.grpcagent import GrpcAgents
from promtwist.proxy.grpcbuffers import UnfinishedMessages
from promtwist.proxy.grpclink import linkMethod
from promtwist.proxy.httpserver import Guard, Handler, ScrapePortFactory
from promtwist.proxy.link import AgentLinkFactory
from promtwist.proxy.pushprox import RESERVED_PATHS, PushProxHub
from promtwist.proxy.pushwire import MAX_PUSH_HEAD_BYTES
from promtwist.proxy.registry import Registry
from promtwist.proxy.scrape import ScrapeHandler
from promtwist.proxy.selfscrape import SelfScrape
from promtwist.proxy.server import ProxyService
from promtwist.reloads import Load
from promtwist.tls import agentPortTLS, scrapePortTLS
from promtwist.web import operationsListeners

# How often counted warnings whose interval ended are reported.
WARNING_SUMMARY_SECONDS = 15.0
# How often the discovery document encodes what changed in the registry:
# a herd's groups are encoded as they register, not by the next request.
DISCOVERY_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class AgentSide:
    """
    The agent port's factory and the parts it shares with the rest of the
    proxy.

    @ivar authenticator: checks agents' credentials; a reload reconfigures
        it in place.
    @ivar registry: connected agents' paths, read by the scrape port.
    @ivar metrics: the proxy's own metrics.
    @ivar links: the agent port's native links' factory: owns every
        native agent link.
    @ivar grpc: upstream's agents and their calls (L{None} when
        C{proxy.agent.grpcEnabled} is false).
    @ivar port: the agent port's factory: hands each connection to
        C{links} or to the gRPC server.
    """

    authenticator: Authenticator
    registry: Registry
    metrics: ProxyMetrics
    links: AgentLinkFactory
    grpc: GrpcAgents | None
    port: AgentPortFactory


def buildAgentSide(
    settings: ProxySettings, clock: IReactorTime, reservedPaths: Iterable[str] = ()
) -> AgentSide:
    """
    The agent port's factory with its registry, both enforcing the
    settings' identities and limits.

    @param reservedPaths: paths the proxy answers itself.
    """
    authenticator = Authenticator(settings)
    registry = Registry(
        reservedPaths, authenticator.mayServe, settings, clock, authenticator.stillHolds
    )
    metrics = ProxyMetrics(uuid.uuid4().hex, clock)
    # A claim's series end when the registry forgets it.
    registry.forgottenObservers.append(metrics.forgetPath)
    links = AgentLinkFactory(settings, registry, clock, authenticator, metrics)
    grpc: GrpcAgents | None = None
    server: GrpcServerFactory | None = None
    if settings.agent_grpc_enabled:
        # A connection must make an authenticated call as soon as a native
        # link must say Hello.
        limits = Limits(authenticateSeconds=settings.handshake_timeout_secs)
        grpc = GrpcAgents(
            settings, registry, authenticator, links.authThrottle, metrics, clock, limits
        )
        server = GrpcServerFactory(
            [*grpc.methods(), linkMethod(links, clock)],
            limits,
            reactor=clock,
            contexts=grpc.context,
            budget=UnfinishedMessages(settings),
        )
    return AgentSide(authenticator, registry, metrics, links, grpc, AgentPortFactory(links, server))


def buildProxy(
    settings: ProxySettings,
    reactor: Any = None,
    *,
    interface: str = "",
    reloadSettings: Load[ProxySettings] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ProxyService:
    """
    The proxy C{settings} describe, ready to start.

    @param reactor: what everything listens, times and schedules with; the
        global reactor if L{None}.
    @param interface: the address every listener binds on its port;
        by default all of both families. A C{*.listen} setting replaces
        both.
    @param reloadSettings: reads the settings again from the same sources,
        for SIGHUP, in a thread; without it the proxy does not reload.
    @param warn: where the reloads' warnings go, in the reactor thread.
    @raise promtwist.config.settings.ConfigError: when a TLS file is unusable.
    @raise promtwist.startup.StartupError: when a C{*.listen} setting
        names no usable endpoint.
    """
    if reactor is None:
        from twisted.internet import reactor
    reserved = [settings.sd_path] if settings.sd_enabled else []
    if settings.pushprox_enabled:
        reserved += RESERVED_PATHS
    side = buildAgentSide(settings, reactor, reserved)
    discovery = (
        Discovery(side.registry, settings.sd_target_prefix, settings.sd_per_path_instance)
        if settings.sd_enabled
        else None
    )
    pushprox: PushProxHub | None = None
    selfScrape: SelfScrape | None = None
    if settings.pushprox_enabled:
        pushprox = PushProxHub(
            side.registry,
            side.authenticator,
            reactor,
            pollHold=settings.pushprox_poll_hold_secs,
            clientGrace=settings.pushprox_client_grace_secs,
            maxContentBytes=settings.max_unzipped_content_size_mbytes * MiB,
            allowedNetworks=settings.pushprox_allowed_networks,
            metricsRegistry=side.metrics.registry,
            transfers=side.metrics,
        )
        if settings.pushprox_self_scrape_enabled:
            selfScrape = SelfScrape(side.metrics.registry, pushprox.metrics, reactor)
    scrapes = ScrapeHandler(settings, side.registry, reactor, discovery, selfScrape)
    # Credentials, when configured, guard discovery as well as scrapes,
    # the proxy's own /metrics and PushProx's /clients; PushProx clients'
    # polls and pushes carry credentials of their own.
    handler: Handler = scrapes
    guard: Guard | None = guarded(settings)
    if pushprox is not None:
        handler = pushprox.front(handler)
        guard = pushprox.guard(guard)
    site = ScrapePortFactory(
        handler,
        maxHeaderBytes=settings.http_max_header_bytes,
        headerTimeout=settings.http_header_timeout_secs,
        idleTimeout=settings.http_idle_timeout_secs,
        allowedNetworks=settings.http_allowed_networks,
        guard=guard,
        bodies=pushprox.bodyLimit if pushprox is not None else None,
        budget=BodyBudget(
            settings.pushprox_push_budget_mbytes * MiB, "proxy.pushprox.pushBudgetMBytes"
        ),
        sourceOf=pushprox.bodySource if pushprox is not None else None,
        bodyDeadline=pushprox.pushDeadline if pushprox is not None else None,
        refused=pushprox.refused if pushprox is not None else None,
        peekBytes=MAX_PUSH_HEAD_BYTES,
        # In the open-file limit beside the agent port's connections.
        connections=scrapePortConnections(
            settings, scrapeConnections(settings, side.links.openFileBudget())
        ),
        clock=reactor,
    )
    httpListener = settingListener(
        reactor,
        "proxy.http",
        "scrape",
        settings.http_port,
        settings.http_listen,
        site,
        interface,
        scrapePortTLS(settings),
        protocols=HTTP_1_1,
    )
    agentListener = settingListener(
        reactor,
        "proxy.agent",
        "agent",
        settings.agent_port,
        settings.agent_listen,
        side.port,
        interface,
        agentPortTLS(settings),
        # Answered only to a client that offers it: gRPC requires h2, the
        # native link offers nothing.
        protocols=(b"h2",) if side.grpc is not None else (),
        # The kernel holds a herd's connections until the reactor's next
        # accept: as many as the proxy lets wait for a handshake place.
        backlog=max(50, settings.max_waiting_handshakes),
    )
    service = ProxyService(
        settings,
        reactor,
        side,
        scrapes,
        httpListener,
        agentListener,
        pushprox=pushprox,
        reloadSettings=reloadSettings,
        warn=warn,
    )
    side.metrics.track(service.state)
    for operations in operationsListeners(
        settings,
        side.metrics.registry,
        proxyHealth(service.state, settings, lambda: service.listeners),
        service.debugText,
        reactor,
        interface,
    ):
        service.addListener(operations)

    def summariseWarnings() -> None:
        # What the agent port, the scrape port and the scrape relay counted
        # without logging, reported when its interval ends, even if no warning
        # of its kind follows.
        side.links.warnings.summariseExpired()
        site.warnings.summariseExpired()
        scrapes.tracker.invalidAnswers.summariseExpired()
        if pushprox is not None:
            pushprox.news.summariseExpired()

    every(service, reactor, WARNING_SUMMARY_SECONDS, summariseWarnings)
    if discovery is not None:
        every(service, reactor, DISCOVERY_REFRESH_SECONDS, discovery.refresh)
    grpc = side.grpc
    if settings.stale_agent_check_enabled or grpc is not None:

        def evict() -> None:
            limit = settings.max_agent_inactivity_secs
            if settings.stale_agent_check_enabled:
                evictStale(side.links.connected(), limit)
            if grpc is not None:
                # Agents bound to no connection are evicted whatever the
                # setting, as upstream evicts them in its nginx mode.
                evictStale(
                    grpc.agents() if settings.stale_agent_check_enabled else grpc.unbound(),
                    limit,
                )

        every(service, reactor, settings.stale_agent_check_pause_secs, evict)
    return service


def every(
    parent: MultiService, clock: IReactorTime, seconds: float, call: Callable[[], object]
) -> None:
    """
    Call C{call} every C{seconds} on C{clock} while C{parent} runs.
    """
    timer = TimerService(seconds, call)
    timer.clock = clock
    timer.setServiceParent(parent)
