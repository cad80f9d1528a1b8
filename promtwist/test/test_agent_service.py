"""
Tests for L{promtwist.agent.service}: reloading, discovery, proxy failover
and a draining shutdown, first with a fake clock, then over loopback with a
real proxy.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.server import Site

from promtwist import __version__
from promtwist.agent.build import buildAgent
from promtwist.agent.service import AgentService, _ReadyLinks
from promtwist.config.load import loadAgentSettings
from promtwist.config.settings import (
    AgentSettings,
    ConfigError,
    PathConfig,
    ProxyEndpoint,
    ProxySettings,
)
from promtwist.proxy.build import buildProxy
from promtwist.proxy.relay import ScrapeCall
from promtwist.proxy.server import ProxyService
from promtwist.reloads import Load
from promtwist.test.processes import freePort
from promtwist.test.test_integration import Target
from promtwist.test.test_link import PATHS, Pair


class _Down:
    """
    An endpoint nobody listens on; records that it was dialled.
    """

    def __init__(self, name: str, dialled: list[str]) -> None:
        self.name = name
        self.dialled = dialled

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.dialled.append(self.name)
        return fail(ConnectionRefusedError(self.name))


def downEndpoints(dialled: list[str], *names: str) -> list[tuple[str, Any]]:
    return [(name, _Down(name, dialled)) for name in names]


SETTINGS = AgentSettings(name="a1", path_configs=PATHS, shutdown_grace_secs=5)


class FailoverUnitTests(SynchronousTestCase):
    def test_rotation(self) -> None:
        """
        Each failed attempt moves to the next endpoint, wrapping round.
        """
        dialled: list[str] = []
        service = buildAgent(SETTINGS, Clock(), endpoints=downEndpoints(dialled, "p1", "p2"))
        links = service.links
        for _ in range(3):
            self.failureResultOf(links.connect(Factory()), ConnectionRefusedError)
        self.assertEqual(dialled, ["p1", "p2", "p1"])

    def test_oneEndpoint(self) -> None:
        dialled: list[str] = []
        links = _ReadyLinks(downEndpoints(dialled, "p1"), Pair().agent.factory, lambda f, n: f)
        self.failureResultOf(links.connect(Factory()))
        self.failureResultOf(links.connect(Factory()))
        self.assertEqual(dialled, ["p1", "p1"])


class BuildTests(SynchronousTestCase):
    def test_oneLaunchId(self) -> None:
        """
        The agent's metrics carry the launch id its connections send the
        proxy: both are given the one L{buildAgent} made.
        """
        service = buildAgent(SETTINGS, Clock(), endpoints=downEndpoints([], "p1"))
        launchId = service.factory.launchId
        self.assertEqual(len(launchId), 32)
        started = service.metrics.registry.get_sample_value(
            "agent_start_time_seconds", {"launch_id": launchId}
        )
        self.assertIsNotNone(started)

    def test_scrapesObservedByTheMetrics(self) -> None:
        """
        The scraper reports to the service's metrics, made before it.
        """
        service = buildAgent(SETTINGS, Clock(), endpoints=downEndpoints([], "p1"))
        service.factory.scraper.observer.resultSent("gzipped")
        sent = service.metrics.registry.get_sample_value(
            "agent_scrape_result_count_total",
            {"launch_id": service.factory.launchId, "type": "gzipped"},
        )
        self.assertEqual(sent, 1)


class ReloadUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.loaded: list[AgentSettings | Exception | Load[AgentSettings]] = []
        self.service = buildAgent(
            SETTINGS,
            Clock(),
            loadSettings=self.load,
            endpoints=downEndpoints([], "p1"),
        )

    def load(self, warn: Callable[[str], None]) -> AgentSettings:
        result = self.loaded.pop(0)
        if isinstance(result, Exception):
            raise result
        if callable(result):
            return result(warn)
        return result

    def test_broken(self) -> None:
        """
        A configuration that does not load is one error line, and nothing
        changes.
        """
        self.loaded.append(ConfigError("myapps.conf: line 3, column 1: oops"))
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        errors = [e for e in events if e["log_level"].name in ("error", "critical", "warn")]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["error"], "myapps.conf: line 3, column 1: oops")
        self.assertEqual(dict(self.service.factory.paths), {p.path: p for p in PATHS})
        self.assertIs(self.service.settings, SETTINGS)

    def test_pathsApplied(self) -> None:
        new = PathConfig("n", "n", "http://t.test/n")
        self.loaded.append(AgentSettings(name="a1", path_configs=(new,), shutdown_grace_secs=5))
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        self.assertEqual(dict(self.service.factory.paths), {"n": new})
        self.assertEqual(self.service.settings.path_configs, (new,))
        self.assertFalse([e for e in events if "restart" in e["log_format"]])

    def test_noPathsKeyRefused(self) -> None:
        """
        A file without C{agent.pathConfigs} would remove every path: it is
        refused with one error line, and the paths stay.
        """
        self.loaded.append(AgentSettings(name="a1", config_source="a.conf"))
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        (error,) = [e for e in events if e["log_level"].name == "error"]
        self.assertIn("agent.pathConfigs = []", error["log_format"])
        self.assertEqual(error["source"], "a.conf")
        self.assertEqual(dict(self.service.factory.paths), {p.path: p for p in PATHS})
        self.assertIs(self.service.settings, SETTINGS)

    def test_typoRefused(self) -> None:
        """
        The issue's case, through the real loader: C{pathConfig} for
        C{pathConfigs} is refused on reload, naming the key it meant.
        """
        config = FilePath(self.mktemp())
        config.setContent(b'agent.pathConfig = [{path = x, url = "http://t.test/x"}]\n')
        self.loaded.append(lambda warn: loadAgentSettings({"config": config.path}, {}, warn=warn))
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        (error,) = [e for e in events if e["log_level"].name == "error"]
        self.assertIn("did you mean agent.pathConfigs?", error["error"])
        self.assertEqual(dict(self.service.factory.paths), {p.path: p for p in PATHS})

    def test_explicitlyNoPaths(self) -> None:
        """
        A file that lists no paths (C{agent.pathConfigs = []}) is applied.
        """
        self.loaded.append(
            AgentSettings(name="a1", path_configs_listed=True, shutdown_grace_secs=5)
        )
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        self.assertEqual(dict(self.service.factory.paths), {})
        self.assertFalse([e for e in events if e["log_level"].name in ("warn", "error")])

    def test_othersNeedRestart(self) -> None:
        self.loaded.append(
            AgentSettings(
                name="a1",
                path_configs=PATHS,
                shutdown_grace_secs=5,
                max_concurrent_clients=3,
                proxy_endpoints=(ProxyEndpoint("elsewhere"),),
            )
        )
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        (warning,) = [e for e in events if "restart" in e["log_format"]]
        self.assertIn("agent.http.maxConcurrentClients", warning["keys"])
        self.assertIn("agent.proxy.endpoints", warning["keys"])
        self.assertEqual(self.service.settings.max_concurrent_clients, 32)

    def test_startupLine(self) -> None:
        """
        The agent says its version at startup.
        """
        with capturedLogs() as events:
            self.service.startService()
        self.addCleanup(self.service.stopService)
        (event,) = [e for e in events if "promtwist_version" in e]
        self.assertEqual(event["promtwist_version"], __version__.public())
        self.assertTrue(formatEvent(event).startswith(f"promtwist {__version__.public()} agent"))
        # No listener: nothing listed, no listening_* field.
        self.assertIn("listening: nothing", formatEvent(event))
        self.assertFalse([key for key in event if key.startswith("listening")])

    def test_signalHandler(self) -> None:
        """
        Starting installs a SIGHUP handler; stopping puts the previous back.
        """
        before = signal.getsignal(signal.SIGHUP)
        self.service.startService()
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), before)
        self.service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class DrainUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pair = Pair()
        self.successResultOf(self.pair.ready)
        self.service = buildAgent(SETTINGS, self.clock, endpoints=downEndpoints([], "p1"))
        # The pair's connection stands for the service's link.
        self.service.factory = self.pair.agent.factory
        self.service.links.connections = self.pair.agent.factory
        self.service.startService()

    def test_drained(self) -> None:
        """
        Stopping says goodbye and waits for the scrape in flight, which
        completes.
        """
        stream = self.pair.scrape("slow")
        stopped = self.service.stopService()
        self.pair.flush()
        self.assertNoResult(stopped)
        self.assertTrue(self.service.factory.draining)
        self.assertEqual(self.pair.registry.agents(), [], "the proxy saw the goodbye")
        request = self.pair.target.pending.pop()
        request.write(b"late 1\n")
        request.finish()
        self.pair.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(stream.head).status, 200)

    def test_grace(self) -> None:
        self.pair.scrape("slow")
        stopped = self.service.stopService()
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)

    def test_idleStopsOnceTheProxyCloses(self) -> None:
        """
        With nothing in flight, the proxy closes the link as soon as it
        reads the Goodbye, and stopping is done then.
        """
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.pair.flush()
        self.successResultOf(stopped)

    def test_scrapeSentBeforeTheGoodbyeServed(self) -> None:
        """
        A scrape the proxy sent before it read the Goodbye is answered, and
        stopping waits for it: no scrape is refused on the way out.
        """
        stream = self.pair.proxy.scrape(ScrapeCall("fast", "", "text/plain", "", "", 5.5))
        stopped = self.service.stopService()
        self.pair.flush()
        self.assertEqual(self.successResultOf(stream.head).status, 200)
        self.successResultOf(stopped)


class _LoopbackBase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.target = Target()
        port: IListeningPort = reactor.listenTCP(
            0,
            Site(self.target),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.base = f"http://127.0.0.1:{address.port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = Agent(reactor, pool=self.pool)
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()

    def startProxy(self, agentPort: int = 0) -> ProxyService:
        proxy = buildProxy(
            ProxySettings(http_port=0, agent_port=agentPort, sd_enabled=True),
            reactor,
            interface="127.0.0.1",
        )
        proxy.startService()
        self.addCleanup(lambda: proxy.stopService() if proxy.running else None)
        return proxy

    def startAgent(self, agent: AgentService) -> None:
        self.agent = agent
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)

    async def get(self, proxy: ProxyService, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{proxy.httpListener.portNumber}/{path}"
        response = await self.client.request(b"GET", url.encode("ascii"))
        return response.code, await readBody(response)

    async def until(self, condition: Any) -> None:
        for _ in range(200):
            if condition():
                return
            await deferLater(reactor, 0.01)
        self.fail("condition not met within two seconds")


class ReloadLoopbackTests(_LoopbackBase):
    def writeConfig(self, paths: list[dict[str, str]], extra: str = "") -> None:
        self.config.setContent(
            (
                f"agent {{ name = it-agent\n proxy.hostname = 127.0.0.1\n"
                f" proxy.port = {self.proxy.agentListener.portNumber}\n"
                f" pathConfigs = {json.dumps(paths)}\n{extra} }}\n"
            ).encode()
        )

    async def start(self) -> None:
        self.proxy = self.startProxy()
        self.config = self.dir.child("agent.conf")
        self.writeConfig([{"path": "app", "url": f"{self.base}/metrics"}])

        def load(warn: Callable[[str], None]) -> AgentSettings:
            return loadAgentSettings({"config": self.config.path}, {}, warn=warn)

        self.startAgent(buildAgent(load(self.fail), reactor, loadSettings=load))
        self.connection = await self.agent.whenConnected()
        self.agentId = self.connection.agentId

    def assertSameLink(self) -> None:
        self.assertIs(self.agent.factory.current, self.connection)
        self.assertEqual(self.connection.agentId, self.agentId)
        self.assertTrue(self.connection.welcomed)

    async def test_addRemoveChange(self) -> None:
        await self.start()
        self.writeConfig(
            [
                {"path": "app", "url": f"{self.base}/metrics"},
                {"path": "extra", "url": f"{self.base}/metrics?x=1", "labels": '{"k": "v"}'},
            ]
        )
        await self.agent.reload()
        code, body = await self.get(self.proxy, "extra")
        self.assertEqual(code, 200)
        self.assertIn(b'query="x=1"', body)
        code, body = await self.get(self.proxy, "discovery")
        groups = {g["labels"]["__metrics_path__"]: g["labels"] for g in json.loads(body)}
        self.assertEqual(groups["/extra"]["k"], "v")
        self.assertSameLink()

        self.writeConfig([{"path": "extra", "url": f"{self.base}/metrics?x=2"}])
        await self.agent.reload()
        self.assertEqual((await self.get(self.proxy, "app"))[0], 404)
        code, body = await self.get(self.proxy, "extra")
        self.assertIn(b'query="x=2"', body)
        self.assertSameLink()

    async def test_broken(self) -> None:
        await self.start()
        self.config.setContent(b"agent { pathConfigs = [ ")
        with capturedLogs() as events:
            await self.agent.reload()
        self.assertEqual(
            len([e for e in events if e["log_level"].name in ("error", "critical")]), 1
        )
        self.assertEqual((await self.get(self.proxy, "app"))[0], 200)
        self.assertSameLink()

    async def test_otherSettingNeedsRestart(self) -> None:
        await self.start()
        self.writeConfig(
            [{"path": "app", "url": f"{self.base}/metrics"}], "internal.maxFrameBytes = 2000000"
        )
        with capturedLogs() as events:
            await self.agent.reload()
        (warning,) = [e for e in events if "restart" in e["log_format"]]
        self.assertIn("maxFrameBytes", warning["keys"])
        self.assertSameLink()


class DiscoveryLoopbackTests(_LoopbackBase):
    async def test_discovery(self) -> None:
        proxy = self.startProxy()
        targets = self.dir.child("targets.conf")
        targets.setContent(f'paths = [ {{ path: found, url: "{self.base}/metrics" }} ]'.encode())
        settings = AgentSettings(
            name="it-agent",
            proxy_endpoints=(ProxyEndpoint("127.0.0.1", proxy.agentListener.portNumber),),
            path_configs=(PathConfig("app", "app", f"{self.base}/metrics"),),
            discovery_enabled=True,
            discovery_file_path=targets.path,
            discovery_reconcile_interval_secs=0.05,
        )
        self.startAgent(buildAgent(settings, reactor))
        connection = await self.agent.whenConnected()
        self.assertEqual((await self.get(proxy, "found"))[0], 200)
        # Broken: the last good paths stay.
        targets.setContent(b"paths = [ { path: ")
        await deferLater(reactor, 0.2)
        self.assertEqual((await self.get(proxy, "found"))[0], 200)
        # A static path wins; another is added.
        targets.setContent(
            f'paths = [ {{ path: app, url: "{self.base}/other" }},'
            f' {{ path: more, url: "{self.base}/metrics" }} ]'.encode()
        )
        await self.until(lambda: proxy.registry.lookup("more"))
        self.assertEqual(proxy.registry.lookup("found"), ())
        self.assertEqual(self.agent.factory.paths["app"].url, f"{self.base}/metrics")
        # Empty: every discovered path goes.
        targets.setContent(b"paths = []")
        await self.until(lambda: not proxy.registry.lookup("more"))
        self.assertEqual((await self.get(proxy, "app"))[0], 200)
        self.assertIs(self.agent.factory.current, connection)


class FailoverLoopbackTests(_LoopbackBase):
    async def test_failoverAndFailback(self) -> None:
        """
        With the first proxy down the agent serves through the second; when
        that link drops, it goes back to the first.
        """
        firstPort = freePort()
        second = self.startProxy()
        settings = AgentSettings(
            name="it-agent",
            proxy_endpoints=(
                ProxyEndpoint("127.0.0.1", firstPort),
                ProxyEndpoint("127.0.0.1", second.agentListener.portNumber),
            ),
            path_configs=(PathConfig("app", "app", f"{self.base}/metrics"),),
        )
        with capturedLogs() as events:
            self.startAgent(buildAgent(settings, reactor))
            await self.agent.whenConnected()
        self.assertTrue(
            any(e.get("proxy") == f"127.0.0.1:{second.agentListener.portNumber}" for e in events)
        )
        self.assertEqual((await self.get(second, "app"))[0], 200)

        first = self.startProxy(firstPort)
        connection = self.agent.factory.current
        assert connection is not None
        connection.transport.abortConnection()
        await self.until(lambda: first.registry.lookup("app"))
        self.assertEqual((await self.get(first, "app"))[0], 200)


class DrainLoopbackTests(_LoopbackBase):
    async def test_slowScrapeFinishes(self) -> None:
        proxy = self.startProxy()
        settings = AgentSettings(
            name="it-agent",
            proxy_endpoints=(ProxyEndpoint("127.0.0.1", proxy.agentListener.portNumber),),
            path_configs=(
                PathConfig("slow", "slow", f"{self.base}/slow"),
                PathConfig("app", "app", f"{self.base}/metrics"),
            ),
            shutdown_grace_secs=5,
        )
        self.startAgent(buildAgent(settings, reactor))
        connection = await self.agent.whenConnected()
        scraping = Deferred.fromCoroutine(self.get(proxy, "slow"))
        await self.until(lambda: self.target.slow)
        stopped = self.agent.stopService()
        self.assertFalse(stopped.called)
        # A new scrape is not taken: the proxy no longer routes here, and
        # says whose departure left the path without an agent.
        code, reason = await self.get(proxy, "app")
        self.assertEqual(code, 503)
        self.assertIn(b"agent 'it-agent' disconnected", reason)
        request = self.target.slow.pop()
        request.write(b"slow 1\n")
        request.finish()
        code, body = await scraping
        self.assertEqual((code, body), (200, b"slow 1\n"))
        await stopped
        self.assertIsNotNone(connection._lost)
