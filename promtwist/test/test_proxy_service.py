"""
The proxy service's operations side over loopback: stale-agent eviction,
draining shutdown, reload of identities, metrics and the debug page.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from promtwist import __version__
from promtwist.agent.build import buildAgent
from promtwist.agent.service import AgentService
from promtwist.config.settings import (
    AgentSettings,
    ConfigError,
    Identity,
    PathConfig,
    ProxyEndpoint,
    ProxySettings,
)
from promtwist.logs import applyLogLevel
from promtwist.protocol.promtwist_pb2 import Frame, Hello, RegisterPath
from promtwist.proxy.answers import ScrapeRecord
from promtwist.proxy.build import buildProxy
from promtwist.proxy.server import ProxyService
from promtwist.test.test_framing import logText


class _Target(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.slow: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        if request.path == b"/slow":
            self.slow.append(request)
            return NOT_DONE_YET
        return b"up 1\n"


class _Silent(Protocol):
    """
    An agent that says Hello, registers a path, then never speaks again.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        for frame in (
            Frame(hello=Hello(protocol_version=1, agent_name="silent")),
            Frame(register_path=RegisterPath(request_id=1, path="quiet")),
        ):
            data = frame.SerializeToString()
            self.transport.write(struct.pack("!I", len(data)) + data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.callback(None)


class ProxyServiceTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.target = _Target()
        port: IListeningPort = reactor.listenTCP(0, Site(self.target), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.base = f"http://127.0.0.1:{address.port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = Agent(reactor, pool=self.pool)

    def proxy(self, **settings: object) -> ProxyService:
        return self.proxyWith(ProxySettings(http_port=0, agent_port=0, **settings))  # type: ignore[arg-type]

    def proxyWith(self, settings: ProxySettings, **kwargs: object) -> ProxyService:
        proxy = buildProxy(settings, reactor, interface="127.0.0.1", **kwargs)  # type: ignore[arg-type]
        proxy.startService()
        self.addCleanup(lambda: proxy.stopService() if proxy.running else None)
        return proxy

    async def agent(self, proxy: ProxyService, **settings: object) -> AgentService:
        settings.setdefault("name", "a1")
        agent = buildAgent(
            AgentSettings(
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", proxy.agentListener.portNumber),),
                path_configs=(
                    PathConfig("m", "m", f"{self.base}/metrics"),
                    PathConfig("slow", "slow", f"{self.base}/slow"),
                ),
                **settings,  # type: ignore[arg-type]
            ),
            reactor,
        )
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        await agent.whenConnected()
        return agent

    async def get(self, port: int, path: str) -> tuple[int, bytes]:
        response = await self.http.request(b"GET", f"http://127.0.0.1:{port}/{path}".encode())
        return response.code, await readBody(response)

    def test_startupLine(self) -> None:
        """
        The proxy says its version and every address it listens on, as text
        and as a structured field.
        """
        with capturedLogs() as events:
            proxy = self.proxy(metrics_enabled=True, metrics_port=0)
        (event,) = [e for e in events if "promtwist_version" in e]
        scrape = f"127.0.0.1:{proxy.httpListener.portNumber}"
        agent = f"127.0.0.1:{proxy.agentListener.portNumber}"
        self.assertEqual(event["promtwist_version"], __version__.public())
        # Flat fields, one per listener, for log shippers.
        self.assertEqual((event["listening_scrape"], event["listening_agent"]), (scrape, agent))
        self.assertIn("listening_metrics", event)
        self.assertIn(
            f"promtwist {__version__.public()} proxy listening: scrape {scrape}", formatEvent(event)
        )

    async def test_staleAgentEvicted(self) -> None:
        """
        An agent silent for longer than C{maxAgentInactivitySecs} is evicted,
        and its scrape in flight fails at once with 502.
        """
        proxy = self.proxy(max_agent_inactivity_secs=0.5, stale_agent_check_pause_secs=0.1)
        silent = _Silent()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.agentListener.portNumber)
        await connectProtocol(endpoint, silent)
        while not proxy.registry.lookup("quiet"):
            await deferLater(reactor, 0.02)
        with capturedLogs() as events:
            status, body = await self.get(proxy.httpListener.portNumber, "quiet")
            await silent.lost
        self.assertEqual(status, 502)
        self.assertIn(b"agent disconnected", body)
        self.assertIn("evicting agent 'silent'", logText(events))
        self.assertEqual(proxy.registry.lookup("quiet"), ())

    async def test_drain(self) -> None:
        """
        On stop, a scrape in flight may finish within the grace period, and
        the agent is told goodbye afterwards.
        """
        proxy = self.proxy(shutdown_grace_secs=5)
        await self.agent(proxy)
        scraping = Deferred.fromCoroutine(self.get(proxy.httpListener.portNumber, "slow"))
        while not self.target.slow:
            await deferLater(reactor, 0.01)
        stopping = proxy.stopService()
        await deferLater(reactor, 0.2)
        self.assertNoResult(stopping)
        (request,) = self.target.slow
        request.write(b"late 1\n")
        request.finish()
        self.assertEqual(await scraping, (200, b"late 1\n"))
        await stopping

    async def test_drainBounded(self) -> None:
        """
        Scrapes still in flight after the grace period fail, and the proxy
        stops anyway.
        """
        proxy = self.proxy(shutdown_grace_secs=0.3)
        await self.agent(proxy)
        scraping = Deferred.fromCoroutine(self.get(proxy.httpListener.portNumber, "slow"))
        while not self.target.slow:
            await deferLater(reactor, 0.01)
        await proxy.stopService()
        status, body = await scraping
        self.assertEqual(status, 502)
        self.assertIn(b"proxy shutting down", body)

    async def test_reloadIdentities(self) -> None:
        """
        A reload that removes an agent's identity disconnects it; a broken
        configuration changes nothing.
        """
        team = Identity("team_a", "ta")
        sources: list[ProxySettings | ConfigError] = []

        def reloadSettings(warn: Callable[[str], None]) -> ProxySettings:
            source = sources.pop(0)
            if isinstance(source, ConfigError):
                raise source
            return source

        proxy = self.proxyWith(
            ProxySettings(http_port=0, agent_port=0, identities=(team,)),
            reloadSettings=reloadSettings,
        )
        agent = await self.agent(proxy, agent_token="ta")
        connection = agent.factory.current
        assert connection is not None
        sources.append(ConfigError("proxy.conf: proxy.auth[0].token is required"))
        with capturedLogs() as events:
            await proxy.reload()
        self.assertIn("reload refused, running configuration kept", logText(events))
        self.assertEqual(len(proxy.registry.agents()), 1)
        sources.append(
            ProxySettings(
                http_port=0,
                agent_port=0,
                identities=(Identity("b", "tb"),),
                departed_path_retention_secs=10,
            )
        )
        with capturedLogs() as events:
            await proxy.reload()
        # What a reload does not apply is named as the operator writes it.
        self.assertIn("need a restart: proxy.internal.departedPathRetentionSecs", logText(events))
        await connection.whenLost()
        self.assertEqual(proxy.registry.lookup("m"), ())

    async def test_metricsAndDebug(self) -> None:
        proxy = self.proxy(
            metrics_enabled=True,
            metrics_port=0,
            admin_enabled=True,
            admin_port=0,
            admin_debug_enabled=True,
        )
        await self.agent(proxy)
        self.assertEqual(await self.get(proxy.httpListener.portNumber, "m"), (200, b"up 1\n"))
        await self.get(proxy.httpListener.portNumber, "nowhere")
        adminPort, metricsPort = [
            child.portNumber
            for child in proxy
            if child not in (proxy.agentListener, proxy.httpListener)
            and hasattr(child, "portNumber")
        ]
        _, text = await self.get(metricsPort, "metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
        }
        self.assertEqual(samples[("proxy_scrape_requests_total", (("type", "success"),))], 1)
        self.assertEqual(samples[("proxy_scrape_requests_total", (("type", "invalid_path"),))], 1)
        self.assertEqual(samples[("proxy_connect_count_total", ())], 1)
        self.assertEqual(samples[("proxy_agent_map_size", ())], 1)
        (age,) = [
            value for (name, _), value in samples.items() if name == "proxy_agent_connected_seconds"
        ]
        self.assertTrue(0 < age < self.timeout, age)
        _, debug = await self.get(adminPort, "debug")
        self.assertIn(b"/m [exclusive] 'a1' (vm, ", debug)
        self.assertIn(b"/m - success - 200", debug)
        # prometheus-proxy's layout first, promtwist's sections after.
        page = debug.decode()
        self.assertTrue(page.startswith("Prometheus Proxy Info [Version: "), page)
        order = [
            page.index(part)
            for part in (
                "\nUptime:     ",
                "\nAdmin Service:\nServletService{port=",
                "\nMetrics Service:\n",
                "\nProxy Path Map:\nPath",
                "\n/m",
                " most recent requests:\n",
                ": /m - success - 200 OK time: ",
                "\npromtwist:\n",
                "\n  /m [exclusive] ",
                "\nlast ",
            )
        ]
        self.assertEqual(order, sorted(order), page)
        self.assertEqual(await self.get(adminPort, "ping"), (200, b"pong\n"))

    async def test_ownershipOnDebugPages(self) -> None:
        """
        The proxy's /debug page names each exclusive path's holder and its
        standbys in line; each agent's says which paths it holds and which
        it waits for, behind whom.
        """
        proxy = self.proxy(admin_enabled=True, admin_port=0, admin_debug_enabled=True)
        first = await self.agent(proxy)
        second = await self.agent(proxy, name="a2")
        (adminPort,) = [
            child.portNumber
            for child in proxy
            if child not in (proxy.agentListener, proxy.httpListener)
            and hasattr(child, "portNumber")
        ]
        _, debug = await self.get(adminPort, "debug")
        lines = debug.decode().splitlines()
        (held,) = [line for line in lines if line.startswith("  /m ")]
        self.assertIn("[exclusive] 'a1' (", held)
        standby = lines[lines.index(held) + 1]
        self.assertIn("standby #1: 'a2' (", standby)
        self.assertIn("identity anonymous), waiting since ", standby)
        self.assertIn("[held by this agent since ", first.debugText())
        self.assertIn("/m -> ", second.debugText())
        self.assertIn("[standby #1 behind agent 'a1' on ", second.debugText())
        # The agent's page: prometheus-proxy's layout first, promtwist's after.
        text = first.debugText()
        self.assertTrue(text.startswith("Prometheus Agent Info [Version: "), text)
        order = [
            text.index(part)
            for part in (
                "\nUptime:    ",
                "\nAgentId:   ",
                "\nAgentName: a1\n",
                "\nProxyHost: ",
                "\nAdmin Service:\nDisabled\n",
                "\nMetrics Service:\nDisabled\n",
                "\nAgent Path Configs:\nName",
                '\n"',
                "\npromtwist:\n",
                "\n  /m -> ",
            )
        ]
        self.assertEqual(order, sorted(order), text)

    async def test_agentMetricsAndHealth(self) -> None:
        proxy = self.proxy()
        agent = await self.agent(
            proxy, metrics_enabled=True, metrics_port=0, admin_enabled=True, admin_port=0
        )
        self.assertEqual(await self.get(proxy.httpListener.portNumber, "m"), (200, b"up 1\n"))
        adminPort, metricsPort = [
            child.portNumber for child in agent if hasattr(child, "portNumber")
        ]
        _, text = await self.get(metricsPort, "metrics")
        samples = {
            (s.name, s.labels.get("type", "")): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
        }
        self.assertEqual(samples[("agent_connect_count_total", "success")], 1)
        self.assertEqual(samples[("agent_scrape_request_count_total", "success")], 1)
        self.assertEqual(samples[("agent_scrape_result_count_total", "non-gzipped")], 1)
        self.assertEqual(samples[("agent_link_up", "")], 1)
        status, health = await self.get(adminPort, "healthcheck")
        self.assertEqual(status, 200)
        checks = json.loads(health)
        self.assertEqual(
            set(checks),
            {
                "thread_deadlock",
                "all_services_healthy",
                "metrics_service",
                "scrape_request_backlog_check",
                "proxy_link",
            },
        )
        fields = {"healthy", "message", "duration", "timestamp"}
        for name, check in checks.items():
            own = {"informational"} if name == "proxy_link" else set()
            self.assertEqual(set(check), fields | own, name)
            self.assertIs(check["healthy"], True, name)

    def test_debugLineClipped(self) -> None:
        """
        The wire values in a scrape's debug line are clipped and escaped: a
        path with a newline in it cannot forge a second log line.
        """
        applyLogLevel("debug")
        self.addCleanup(applyLogLevel, "")
        proxy = self.proxy(request_logging_enabled=True)
        record = ScrapeRecord(
            "x\nforged", "a\nb", 404, "path_not_found", "no\nagent", 0.001, 0, "plain"
        )
        with capturedLogs() as events:
            proxy._scrapeEnded(record)
        lines = [line for line in logText(events).splitlines() if "scrape /" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("scrape /x\\nforged via a\\nb: 404 path_not_found no\\nagent", lines[0])
        self.assertNotIn("\n", logText(events).strip())

    async def test_oneDebugLinePerScrape(self) -> None:
        """
        Each scrape is logged once at debug level, unless request logging is
        off.
        """
        applyLogLevel("debug")
        self.addCleanup(applyLogLevel, "")
        for enabled, expected in [(True, 1), (False, 0)]:
            proxy = self.proxy(request_logging_enabled=enabled)
            await self.agent(proxy)
            with capturedLogs() as events:
                await self.get(proxy.httpListener.portNumber, "m")
            lines = [line for line in logText(events).splitlines() if "scrape /m via a1" in line]
            self.assertEqual(len(lines), expected, enabled)
            if lines:
                self.assertIn(": 200 success", lines[0])
            await proxy.stopService()
