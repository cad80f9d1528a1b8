# -*- test-case-name: promtwist.test.test_integration -*-
"""
The agent process as one service: it runs the parts L{promtwist.agent.build}
made (the target connection pool its scrapes share, the discovery file, the
operator's listeners) and its reconnecting link to the proxy, reloads its
paths, shows the debug page, and drains on shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    LogEvent,
    Logger,
    PredicateResult,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from promtwist.agent.client import TargetPool
from promtwist.agent.connection import ProxyConnection, ProxyConnectionFactory
from promtwist.agent.dialling import DialReport, describeDialFailure
from promtwist.agent.discoveryfile import FileDiscovery
from promtwist.config.keys import AGENT
from promtwist.config.load import warningsOnce
from promtwist.config.settings import AgentSettings, ConfigError, PathConfig
from promtwist.debugpage import head, table, uptime
from promtwist.hostkeys import spelled
from promtwist.httputil import redacted
from promtwist.listen import Listener, logStarted
from promtwist.logs import observer
from promtwist.metrics import AgentMetrics, AgentState
from promtwist.reloads import Load, Reloads, inThreads
from promtwist.signals import onHangup
from promtwist.tls import linkUsesTLS


class _Link(Protocol):
    """
    What the agent's ClientService holds for a ready connection: it closes
    the link through this transport, and is told here when the link is gone.
    """

    def __init__(self, connection: ProxyConnection) -> None:
        self.connection = connection


@implementer(ILogFilterPredicate)
class _NotRetryLines:
    """
    Drops ClientService's "Scheduling retry 3 to connect <..._ReadyLinks
    object at 0x...>": the dial report says why, and summarises the retries.
    """

    def __call__(self, event: LogEvent) -> object:
        if str(event.get("log_format", "")).startswith("Scheduling retry"):
            return PredicateResult.no
        return PredicateResult.maybe


class _LinkService(ClientService):
    """
    The agent's ClientService, without its own line per retry.
    """

    _log = Logger(observer=FilteringLogObserver(observer, [_NotRetryLines()]))


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

    With several proxy endpoints, each attempt dials one: a failed attempt
    moves on to the next (wrapping round), and a link that was ready and
    then dropped sends the next attempt back to the first (failback).

    @ivar endpoints: C{(name, endpoint)} pairs, in the configured order.
    @ivar notReady: told why an attempt on the named proxy failed, from
        the dial to the path registrations; returns the failure.
    """

    noisy = False

    def __init__(
        self,
        endpoints: Sequence[tuple[str, IStreamClientEndpoint]],
        connections: ProxyConnectionFactory,
        notReady: Callable[[Failure, str], Failure],
        onReady: Callable[[ProxyConnection, str], object] = lambda c, n: None,
    ) -> None:
        assert endpoints, "at least one proxy endpoint"
        self.endpoints = list(endpoints)
        self.connections = connections
        self.notReady = notReady
        self.onReady = onReady
        self.index = 0
        self._handing: ProxyConnection | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        name, endpoint = self.endpoints[self.index]

        def failed(failure: Failure) -> Failure:
            self.index = (self.index + 1) % len(self.endpoints)
            return self.notReady(failure, name)

        return Deferred.fromCoroutine(self._connect(protocolFactory, name, endpoint)).addErrback(
            failed
        )

    async def _connect(
        self, protocolFactory: IProtocolFactory, name: str, endpoint: IStreamClientEndpoint
    ) -> IProtocol:
        if self.connections.draining:
            raise CancelledError("the agent is stopping")
        connection = cast(ProxyConnection, await endpoint.connect(self.connections))
        # Stopping the service cancels the attempt: drop the connection too.
        ready: Deferred[ProxyConnection] = Deferred(
            lambda _: connection.transport.abortConnection()
        )

        def settle(result: ProxyConnection | Failure) -> None:
            # After a cancel, the connection's own failure comes second.
            if not ready.called:
                ready.callback(result)

        connection.whenReady().addBoth(settle)
        await ready
        self._handing = connection
        link = protocolFactory.buildProtocol(connection.transport.getPeer())
        self._handing = None
        assert link is not None
        link.makeConnection(connection.transport)

        def lost(_: object) -> None:
            # Failback: after a working link drops, start again at the first.
            self.index = 0
            link.connectionLost(Failure(ConnectionDone()))

        connection.whenLost().addCallback(lost)
        self.onReady(connection, name)
        return link

    def buildProtocol(self, addr: IAddress | None) -> _Link:
        assert self._handing is not None, "links are built for ready connections only"
        return _Link(self._handing)


class AgentService(MultiService):
    """
    Start it and the agent dials the proxy, registers its paths, and keeps
    doing so after every disconnect; stop it and it says goodbye, lets the
    scrapes in flight finish (up to C{shutdown_grace_secs}), then closes the
    link and the pool. L{promtwist.agent.build.buildAgent} makes one from
    settings.

    @ivar factory: builds the connection for each (re)connect, and holds the
        path table.
    @ivar loadSettings: reads the configuration again, with the startup's
        command-line options and environment (see L{reload}); L{None} if the
        agent cannot reload.
    @ivar discovery: the discovery file reader, when discovery is enabled.
    @ivar listeners: the metrics and admin listeners the settings enable.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        settings: AgentSettings,
        reactor: Any,
        factory: ProxyConnectionFactory,
        pool: TargetPool,
        metrics: AgentMetrics,
        endpoints: Sequence[tuple[str, IStreamClientEndpoint]],
        *,
        loadSettings: Load[AgentSettings] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """
        @param factory: builds the connection for each (re)connect.
        @param pool: the target connections the scrapes share, closed when
            the agent stops.
        @param metrics: the agent's own metrics, told how dialling goes.
        @param endpoints: the proxies to dial, named, in order.
        @param loadSettings: reads the configuration again, in a thread;
            with it, C{SIGHUP} reloads.
        @param warn: where its warnings go (in the reactor thread): the
            startup load's, so that a reload repeats none of them.
        """
        super().__init__()
        self.settings = settings
        self.clock = reactor
        self.startedAt = reactor.seconds()
        self._reloads = (
            None
            if loadSettings is None
            else Reloads(
                loadSettings,
                self._applyReload,
                self._refuseReload,
                warn or warningsOnce(),
                inThreads(reactor),
            )
        )
        self.pool = pool
        self.factory = factory
        self.metrics = metrics
        links = _ReadyLinks(endpoints, factory, self._notReady, self._ready)
        self.links = links
        # The proxy last dialled, for the debug page, as prometheus-proxy's.
        self.proxyHost = links.endpoints[0][0]
        self.dialReport = DialReport(self._log, reactor)
        # Jittered exponential backoff, capped so that a returning proxy
        # gets its agents back within a few seconds.
        backoff = backoffPolicy(
            initialDelay=0.25, factor=2.0, maxDelay=settings.reconnect_pause_secs
        )

        def retryPolicy(attempt: int) -> float:
            delay = backoff(attempt)
            self.dialReport.retrying(delay)
            return delay

        self.link = _LinkService(links, links, retryPolicy=retryPolicy, clock=reactor)
        self.link.setServiceParent(self)
        self.discovery: FileDiscovery | None = None
        self.listeners: list[Listener] = []
        self._restoreHangup: Callable[[], None] = lambda: None

    def watch(self, discovery: FileDiscovery) -> None:
        """
        Run C{discovery} with the agent; it reports to L{discovered}.
        """
        self.discovery = discovery
        discovery.setServiceParent(self)

    def addListener(self, listener: Listener) -> None:
        """
        Run C{listener} with the agent, and show it where listeners are
        shown.
        """
        self.listeners.append(listener)
        listener.setServiceParent(self)

    # What the operator sees.

    def state(self) -> AgentState:
        connection = self.factory.current
        ready = connection is not None and connection.welcomed
        return AgentState(
            linkUp=ready,
            backlog=connection.backlog if connection is not None else 0,
            inFlight=connection.scrapesInFlight if connection is not None else 0,
            roundTripSeconds=connection.roundTripSeconds if connection is not None else None,
            pathCount=len(self.factory.paths),
        )

    def debugText(self) -> str:
        """
        The C{/debug} page: prometheus-proxy's layout first (its head and
        its path configs), then promtwist's own section: the link and where
        each path stands at the proxy.
        """
        connection = self.factory.current
        settings = self.settings
        paths = sorted(self.factory.paths.items())
        upstream = head(
            "Agent",
            settings,
            [
                ("Uptime", uptime(self.clock.seconds() - self.startedAt)),
                ("AgentId", connection.agentId if connection is not None else ""),
                ("AgentName", settings.name),
                ("ProxyHost", self.proxyHost),
            ],
            self.listeners,
        )
        configs = table(
            "Agent Path Configs",
            ["Name", "Path", "URL"],
            [[f'"{config.name}"', spelled(path), redacted(config.url)] for path, config in paths],
            "\n",
        )
        lines = [
            "",
            "promtwist:",
            f"promtwist agent {settings.name!r}, launch {self.factory.launchId}",
            f"proxy link: {'up as ' + connection.agentId if connection else 'down'}",
            "",
            "paths:",
        ]
        standings = connection.standings if connection is not None else {}
        for path, config in paths:
            standing = standings.get(path)
            where = standing.describe() if standing is not None else "not registered"
            lines.append(f"  {spelled(path)} -> {redacted(config.url)} [{where}]")
        return "\n".join([upstream, configs, *lines]) + "\n"

    def _notReady(self, failure: Failure, proxy: str) -> Failure:
        """
        Count a failed attempt and tell the dial report why (refused, a name
        that does not resolve, a certificate refused, the proxy's
        rejection...); it logs before the retry. Stopping cancels the
        attempt on purpose: that is no failure.
        """
        if self.running and not failure.check(CancelledError):
            self.metrics.connected(False)
            self.dialReport.failed(proxy, describeDialFailure(failure, proxy))
        return failure

    def _ready(self, connection: ProxyConnection, proxy: str) -> None:
        self.proxyHost = proxy
        self.metrics.connected(True)
        self.dialReport.connected(proxy)
        if len(self.links.endpoints) > 1:
            self._log.info(
                "link to proxy {proxy} is up ({n} path(s) registered)",
                proxy=proxy,
                n=len(connection.registeredPaths()),
            )

    # Path changes.

    def discovered(self, paths: tuple[PathConfig, ...]) -> Deferred[None]:
        """
        The discovery file now lists C{paths}: serve them.
        """
        changes, done = self.factory.replacePaths(discovered=paths)
        if changes:
            self._log.info(
                "discovery file {path}: {summary}",
                path=self.settings.discovery_file_path,
                summary=changes.summary(),
            )
        return done

    def reload(self) -> Deferred[None]:
        """
        Read the configuration again (what C{SIGHUP} does), in a thread
        (L{Reloads}), and apply its C{agent.pathConfigs} and
        C{agent.targets} over the current link. A configuration that
        does not load is rejected with one error line and changes nothing,
        and so is one that would leave the agent no path at all without
        saying so (no C{agent.pathConfigs} key: a file cut short, an
        include gone; C{agent.pathConfigs = []} is applied);
        other settings that changed are named in a warning and not applied,
        since they need a restart.

        @return: fires once the proxy answered the changes' registrations.
        """
        if self._reloads is None:
            self._log.warn("this agent cannot reload its configuration")
            return succeed(None)
        return self._reloads()

    def _refuseReload(self, e: ConfigError) -> None:
        # One line: a parser's message may span several.
        error = str(e).splitlines()[0] if str(e) else repr(e)
        self._log.error(
            "configuration reload rejected, the running configuration stays: {error}",
            error=error[:500],
        )

    def _applyReload(self, new: AgentSettings) -> Deferred[None]:
        if (
            not new.path_configs
            and not new.path_configs_listed
            and not new.targets
            and self.factory.paths
            and not self.factory.table.discovered
        ):
            self._log.error(
                "configuration reload rejected, the running configuration stays: {source} has"
                " no agent.pathConfigs, which would remove all {n} path(s); to serve none,"
                " write agent.pathConfigs = []",
                source=new.config_source,
                n=len(self.factory.paths),
            )
            return succeed(None)
        old = self.settings
        differing = AGENT.changedKeys(old, new)
        if differing:
            self._log.warn(
                "configuration reload: {keys} changed and need(s) a restart (not applied)",
                keys=", ".join(differing),
            )
        # What changedKeys left out is what a reload applies.
        self.settings = replace(old, **{name: getattr(new, name) for name in AGENT.live})
        changes, done = self.factory.replacePaths(static=new.claims)
        self._log.info(
            "configuration reloaded from {source}: paths {summary}",
            source=new.config_source,
            summary=changes.summary(),
        )
        return done

    # Starting and stopping.

    def startService(self) -> None:
        settings = self.settings
        self.factory.draining = False
        if self._reloads is not None:
            self._restoreHangup = onHangup(self.clock, self.reload)
        super().startService()
        logStarted(self._log, "agent", self.listeners)
        self._log.info(
            "agent {name!r} dialling {proxy}{tls} for {n} path(s){targets}",
            name=settings.name,
            proxy=", ".join(name for name, _ in self.links.endpoints),
            tls=" over TLS" if linkUsesTLS(settings) else "",
            n=len(settings.path_configs),
            targets=f" and {len(settings.targets)} target(s)" if settings.targets else "",
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
        """
        Say goodbye, so the proxy routes no new scrape here (its standbys
        take the paths over), and wait up to C{shutdown_grace_secs} for the
        proxy to close the link: it does once every scrape it sent here was
        answered, including any it sent before it read the Goodbye. Then
        close the link and the pool.
        """
        self._restoreHangup()
        self._restoreHangup = lambda: None
        if self._reloads is not None:
            self._reloads.stop()
        if self.discovery is not None and self.discovery.running:
            self.discovery.stopService()
        self.factory.draining = True
        connection = self.factory.current
        drained: Deferred[None] = succeed(None)
        if connection is not None and connection.established:
            connection.sendGoodbye("agent shutting down")
            if connection.scrapesInFlight:
                self._log.info(
                    "waiting up to {grace}s for {n} scrape(s) in flight",
                    grace=self.settings.shutdown_grace_secs,
                    n=connection.scrapesInFlight,
                )
            drained = connection.whenLost()
            drained.addTimeout(self.settings.shutdown_grace_secs, self.clock)
            drained.addErrback(lambda _: None)
        return Deferred.fromCoroutine(self._stop(drained))

    async def _stop(self, drained: Deferred[None]) -> None:
        await drained
        await super().stopService()
        await self.pool.closeCachedConnections()
