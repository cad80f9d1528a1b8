# -*- test-case-name: promtwist.test.test_proxy_service -*-
"""
The proxy process as one service: it runs the parts
L{promtwist.proxy.build} made (the agent listener, the scrape port, the
registry they share, the operator's listeners and timers), reloads agent
identities, shows the debug page, and drains on shutdown.
"""

from __future__ import annotations

import collections
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.logger import Logger

from promtwist import __version__
from promtwist.config.keys import PROXY
from promtwist.config.load import warningsOnce
from promtwist.config.settings import ConfigError, ProxySettings
from promtwist.debugpage import head, recentLine, table, uptime, where
from promtwist.hostkeys import spelled
from promtwist.listen import Listener, logStarted
from promtwist.logs import clip, debugging, hostShown, observer, utcTime
from promtwist.metrics import AGENT_KINDS, AgentSample, ProxyState
from promtwist.proxy.answers import ScrapeRecord
from promtwist.proxy.grpcagent import GrpcAgent
from promtwist.proxy.link import AgentLink
from promtwist.proxy.pushprox import PushProxHub
from promtwist.proxy.registry import AgentHandle
from promtwist.proxy.scrape import ScrapeHandler
from promtwist.reloads import Load, Reloads, inThreads
from promtwist.signals import onHangup

if TYPE_CHECKING:
    from promtwist.proxy.build import AgentSide


class ProxyService(MultiService):
    """
    The proxy's running parts, made by L{promtwist.proxy.build.buildProxy}:
    this starts and stops them, reloads what can be reloaded, and shows the
    operator the state they share.

    @ivar registry: connected agents and their paths.
    @ivar linkFactory: the agent port's factory, which owns the links.
    @ivar agentListener: the listener agents dial.
    @ivar httpListener: the listener Prometheus scrapes.
    @ivar listeners: every listener, those two first.
    @ivar metrics: the proxy's own metrics.
    @ivar recent: the latest scrapes and when each ended, newest last, for
        the debug page.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        settings: ProxySettings,
        reactor: Any,
        side: AgentSide,
        scrapes: ScrapeHandler,
        httpListener: Listener,
        agentListener: Listener,
        *,
        pushprox: PushProxHub | None = None,
        reloadSettings: Load[ProxySettings] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """
        @param side: the agent port's factory and the parts it shares.
        @param scrapes: what the scrape port serves.
        @param pushprox: the PushProx clients' hub, when they are served.
        @param reloadSettings: reads the settings again from the same sources,
            for SIGHUP, in a thread; without it the proxy does not reload.
        @param warn: where its warnings go (in the reactor thread): the
            startup load's, so that a reload repeats none of them.
        """
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self._reloads = (
            None
            if reloadSettings is None
            else Reloads(
                reloadSettings,
                self._applyReload,
                self._refuseReload,
                warn or warningsOnce(),
                inThreads(reactor),
            )
        )
        self.startedAt = reactor.seconds()
        self.authenticator = side.authenticator
        self.linkFactory = side.links
        self.grpcAgents = side.grpc
        self.agentPort = side.port
        self.registry = side.registry
        self.metrics = side.metrics
        self.scrapes = scrapes
        self.pushprox = pushprox
        self.recent: collections.deque[tuple[float, ScrapeRecord]] = collections.deque(
            maxlen=settings.admin_recent_requests_queue_size
        )
        self.scrapes.tracker.observers += [self._scrapeEnded, self._remember]
        self.httpListener = httpListener
        self.agentListener = agentListener
        self.listeners: list[Listener] = []
        for listener in (httpListener, agentListener):
            self.addListener(listener)
        self._restoreHangup: Callable[[], None] | None = None

    def addListener(self, listener: Listener) -> None:
        """
        Run C{listener} with the proxy, and show it where listeners are
        shown.
        """
        self.listeners.append(listener)
        listener.setServiceParent(self)

    # What the operator sees.

    def state(self) -> ProxyState:
        return ProxyState(
            agents=[
                AgentSample(
                    link.name,
                    link.hostName,
                    link.agentId,
                    link.roundTripSeconds,
                    link.scrapesInFlight,
                    self.reactor.seconds() - (link.establishedAt or self.reactor.seconds()),
                    link.transfersInProgress,
                )
                for link in self._connected()
            ],
            pathCount=len(self.registry.snapshot()),
            pendingHandshakes=len(self.linkFactory.pending),
            kinds=Counter(
                AGENT_KINDS.get(agent.kind, agent.kind) for agent in self.registry.agents()
            ),
        )

    def _connected(self) -> list[AgentLink | GrpcAgent]:
        """
        Every agent connection past its handshake: native links and
        registered gRPC agents.
        """
        grpc = self.grpcAgents.connected() if self.grpcAgents is not None else []
        return [*self.linkFactory.connected(), *grpc]

    def _scrapeEnded(self, record: ScrapeRecord) -> None:
        # A scrape that outlived its key's claim is not labelled by it: the
        # key's series went with the claim (Registry.forgottenObservers).
        key = record.path
        known = bool(self.registry.lookup(key)) or self.registry.departed(key) is not None
        self.metrics.scrapeFinished(key if known else None, record.legs, record.bytes)
        if self.settings.request_logging_enabled and debugging(self._log.namespace):
            self._log.debug(
                "scrape {path} via {agents}: {status} {type} {reason} ({bytes} bytes, {ms:.1f} ms)",
                path=spelled(clip(record.path)),
                agents=clip(record.agents) or "-",
                status=record.status,
                type=record.type,
                reason=clip(record.reason),
                bytes=record.bytes,
                ms=record.seconds * 1000,
            )

    def _remember(self, record: ScrapeRecord) -> None:
        self.recent.append((self.reactor.seconds(), record))

    def debugText(self) -> str:
        """
        The C{/debug} page: prometheus-proxy's layout first (its head, its
        path map, its most recent requests, newest first), then promtwist's
        own sections: each path's holder and standbys, and the last scrapes
        with their sizes and agents.
        """
        snapshot = self.registry.snapshot()
        settings = self.settings
        up = self.reactor.seconds() - self.startedAt
        parts = [
            head(
                "Proxy",
                settings,
                [
                    ("Uptime", uptime(up)),
                    ("Proxy port", where(self.httpListener, settings.http_port)),
                ],
                self.listeners,
            )
        ]
        if snapshot:
            rows = [
                [spelled(e.path), f"{len(e.agents)} {', '.join(map(_described, e.agents))}"]
                for e in sorted(snapshot, key=lambda e: e.path)
            ]
            parts.append(table("Proxy Path Map", ["Path", "Agent Context"], rows, "\n\n"))
        else:
            parts.append("No agents connected.")
        if self.recent:
            recent = [
                recentLine(at, r.path, r.type, r.status, r.reason, r.seconds)
                for at, r in reversed(self.recent)
            ]
            parts.append(f"\n{len(recent)} most recent requests:\n" + "\n".join(recent))
        lines = [
            "",
            "promtwist:",
            f"promtwist proxy {__version__.public()}, up {up:.0f}s",
            f"scrape port {where(self.httpListener, settings.http_port)},"
            f" agent port {where(self.agentListener, settings.agent_port)}",
            "",
            "paths:",
        ]
        for entry in snapshot:
            agents = ", ".join(_described(a) for a in entry.agents)
            if entry.consolidated:
                lines.append(f"  {spelled(entry.path)} [consolidated] {agents}")
                continue
            lines.append(
                f"  {spelled(entry.path)} [exclusive] {agents}, since {utcTime(entry.since)}"
            )
            for place, claim in enumerate(entry.standbys, 1):
                lines.append(
                    f"      standby #{place}: {_described(claim.agent)}, waiting since "
                    f"{utcTime(claim.since)}"
                )
        lines += ["", f"last {len(self.recent)} scrapes:"]
        for _, r in self.recent:
            lines.append(
                f"  {spelled(r.path)} - {r.type} - {r.status} {r.reason}"
                f" - {r.seconds * 1000:.1f} ms - {r.bytes} bytes - {r.agents}"
            )
        parts.append("\n".join(lines))
        return "\n".join(parts) + "\n"

    # Reloading.

    def reload(self) -> Deferred[None]:
        """
        Re-read the configuration, in a thread (L{Reloads}), and apply
        C{proxy.auth} and C{proxy.agentToken}: new agents are checked
        against the new identities, and connected agents whose identity is
        gone or changed are disconnected, to come back and prove themselves
        again. Anything else that changed needs a restart, and is named. A
        broken file changes nothing.

        @return: fires once the reload was applied or refused.
        """
        if self._reloads is None:
            return succeed(None)
        return self._reloads()

    def _refuseReload(self, error: ConfigError) -> None:
        self._log.error("reload refused, running configuration kept: {why}", why=str(error))

    def _applyReload(self, fresh: ProxySettings) -> None:
        self.authenticator.configure(fresh)
        for link in self.linkFactory.connected():
            if not self.authenticator.stillHolds(link.identity):
                self._log.warn(
                    "disconnecting agent {agent!r}: its identity {identity!r} changed",
                    agent=link.name,
                    identity=link.identity.name,
                )
                # Its paths go to standbys whose identity holds, at once.
                self.registry.removeAgent(link, "reload")
                link.close("its identity changed on reload")
        if self.pushprox is not None:
            self.pushprox.revoked(self.authenticator.stillHolds)
        if self.grpcAgents is not None:
            self.grpcAgents.revoked()
        others = PROXY.changedKeys(self.settings, fresh)
        if others:
            self._log.warn(
                "reloaded agent identities; these changes need a restart: {keys}",
                keys=", ".join(sorted(others)),
            )
        else:
            self._log.info("reloaded agent identities")

    # Starting and stopping.

    def startService(self) -> None:
        super().startService()
        logStarted(self._log, "proxy", self.listeners)
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
        if self.pushprox is not None:
            self._log.info(
                "PushProx clients served at /poll, /push and /clients{open}",
                open=(
                    ": without agent credentials configured, any client may register"
                    " any FQDN no other client holds (docs/pushprox.md)"
                    # Client certificates prove nothing for them: they poll
                    # the scrape port, not the agent port.
                    if not (settings.identities or settings.agent_token)
                    else ", with the agents' tokens"
                ),
            )
            if settings.pushprox_self_scrape_enabled:
                self._log.info(
                    "the proxy's own metrics served at /metrics while no agent serves that"
                    " path, as PushProx's proxy serves them (proxy.pushprox.selfScrapeEnabled)"
                )
        if self._reloads is not None:
            self._restoreHangup = onHangup(self.reactor, self.reload)

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

    async def _stop(self) -> None:
        """
        Stop taking new connections and scrapes, let the scrapes in flight
        finish for up to C{proxy.internal.shutdownGraceSecs}, then say
        goodbye to the agents and close their links.
        """
        self.scrapes.stopping = True
        if self._restoreHangup is not None:
            self._restoreHangup()
            self._restoreHangup = None
        if self._reloads is not None:
            self._reloads.stop()
        await super().stopService()
        if self.scrapes.tracker.inFlight:
            self._log.info(
                "waiting up to {secs}s for {n} scrape(s) in flight",
                secs=self.settings.shutdown_grace_secs,
                n=len(self.scrapes.tracker.inFlight),
            )
            try:
                await self.scrapes.tracker.whenIdle().addTimeout(
                    self.settings.shutdown_grace_secs, self.reactor
                )
            except TimeoutError:
                self._log.warn(
                    "{n} scrape(s) still in flight after the grace period; failing them",
                    n=len(self.scrapes.tracker.inFlight),
                )
        if self.pushprox is not None:
            self.pushprox.stop()
        if self.grpcAgents is not None:
            # Their request streams end first (OK, as upstream ends them),
            # then their connections go with GOAWAY.
            self.grpcAgents.stop()
        self.agentPort.abortUndecided()
        if self.agentPort.grpc is not None:
            await self.agentPort.grpc.closeAll("the proxy is shutting down")
        await self.linkFactory.closeAll("proxy shutting down")

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


def _described(agent: AgentHandle) -> str:
    """
    An agent as the debug page names it: name, host, id, and the identity
    it proved (never its launch id, which helps prove being that agent).
    """
    return (
        f"{clip(agent.name)!r} ({hostShown(agent.hostName)}, {agent.agentId}, "
        f"identity {agent.identity.name})"
    )
