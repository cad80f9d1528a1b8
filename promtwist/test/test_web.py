"""
Tests for L{promtwist.web}: the admin endpoints, the health checks, and the
operations listeners over real loopback sockets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource

import promtwist
from promtwist.config import AgentSettings, ProxySettings
from promtwist.metrics import AgentSample, AgentState, ProxyMetrics, ProxyState
from promtwist.web import (
    HealthCheck,
    adminRoot,
    agentHealth,
    operationsListeners,
    proxyHealth,
)
from promtwist.webguard import HardenedSite


@dataclass
class Response:
    code: int
    contentType: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(resource: Resource, path: str, method: str = "GET") -> Response:
    """
    Request C{path} from C{resource} as a site's root, synchronously.
    """
    stub: Any = StubTreq(resource)
    case = SynchronousTestCase()
    response: Any = case.successResultOf(stub.request(method, "http://admin.example" + path))
    body: bytes = case.successResultOf(stub.content(response))
    types = response.headers.getRawHeaders("content-type") or [""]
    return Response(response.code, types[0], body)


def healthy() -> dict[str, HealthCheck]:
    return {"one": HealthCheck(True, "fine"), "two": HealthCheck(True)}


class AdminTests(SynchronousTestCase):
    """
    Each admin endpoint at its configured path.
    """

    def admin(
        self,
        settings: ProxySettings | AgentSettings | None = None,
        health: Callable[[], Mapping[str, HealthCheck]] = healthy,
        debug: Callable[[], str] | None = None,
    ) -> Resource:
        return adminRoot(settings or ProxySettings(), health, debug)

    def test_ping(self) -> None:
        response = get(self.admin(), "/ping")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.contentType, "text/plain; charset=utf-8")
        self.assertEqual(response.body, b"pong\n")

    def test_version(self) -> None:
        response = get(self.admin(AgentSettings()), "/version")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.contentType, "application/json; charset=utf-8")
        self.assertEqual(
            response.json(),
            {"version": promtwist.__version__.public(), "name": "promtwist"},
        )

    def test_healthy(self) -> None:
        response = get(self.admin(), "/healthcheck")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.contentType, "application/json; charset=utf-8")
        self.assertEqual(
            response.json(),
            {"one": {"healthy": True, "message": "fine"}, "two": {"healthy": True, "message": ""}},
        )

    def test_unhealthy(self) -> None:
        def health() -> dict[str, HealthCheck]:
            return {"one": HealthCheck(True), "two": HealthCheck(False, "too many")}

        response = get(self.admin(health=health), "/healthcheck")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json()["two"], {"healthy": False, "message": "too many"})

    def test_healthChecksFail(self) -> None:
        """
        A health check that raises makes the process unhealthy, not the
        endpoint broken.
        """

        def health() -> dict[str, HealthCheck]:
            raise RuntimeError("no state")

        response = get(self.admin(health=health), "/healthcheck")
        self.assertEqual(response.code, 503)
        self.assertFalse(response.json()["health_checks"]["healthy"])
        self.assertIn("no state", response.json()["health_checks"]["message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_threadDump(self) -> None:
        """
        The thread dump has every thread's stack, this one's included, down
        to this test.
        """
        waiting = threading.Event()
        done = threading.Event()

        def other() -> None:
            waiting.set()
            done.wait()

        thread = threading.Thread(target=other, name="dump-me")
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(done.set)
        waiting.wait()

        response = get(self.admin(), "/threaddump")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.contentType, "text/plain; charset=utf-8")
        text = response.body.decode("utf-8")
        self.assertIn(f'"{threading.current_thread().name}"', text)
        self.assertIn("in test_threadDump", text)
        self.assertIn('"dump-me"', text)
        self.assertIn("in other", text)

    def test_debugOffByDefault(self) -> None:
        self.assertEqual(get(self.admin(debug=lambda: "state"), "/debug").code, 404)

    def test_debug(self) -> None:
        settings = ProxySettings(admin_debug_enabled=True)
        response = get(self.admin(settings, debug=lambda: "paths: 3\n"), "/debug")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.contentType, "text/plain; charset=utf-8")
        self.assertEqual(response.body, b"paths: 3\n")

    def test_debugWithoutText(self) -> None:
        settings = ProxySettings(admin_debug_enabled=True)
        self.assertEqual(get(self.admin(settings), "/debug").code, 404)

    def test_emptyPathDisables(self) -> None:
        settings = AgentSettings(
            admin_ping_path="",
            admin_version_path="",
            admin_health_check_path="",
            admin_thread_dump_path="",
        )
        admin = self.admin(settings)
        for path in ("/ping", "/version", "/healthcheck", "/threaddump", "/", "/ "):
            self.assertEqual(get(admin, path).code, 404, path)

    def test_emptyPathLeavesOthers(self) -> None:
        admin = self.admin(ProxySettings(admin_ping_path=""))
        self.assertEqual(get(admin, "/ping").code, 404)
        self.assertEqual(get(admin, "/version").code, 200)

    def test_configuredPaths(self) -> None:
        """
        Paths come from the settings and may have several segments.
        """
        settings = ProxySettings(admin_ping_path="ops/alive", admin_health_check_path="hc")
        admin = self.admin(settings)
        self.assertEqual(get(admin, "/ops/alive").body, b"pong\n")
        self.assertEqual(get(admin, "/hc").code, 200)
        self.assertEqual(get(admin, "/ping").code, 404)
        self.assertEqual(get(admin, "/healthcheck").code, 404)
        self.assertEqual(get(admin, "/ops").code, 404)

    def test_unknownPath(self) -> None:
        response = get(self.admin(), "/nope")
        self.assertEqual(response.code, 404)
        self.assertEqual(response.contentType, "text/plain; charset=utf-8")
        self.assertIn(b"/ping", response.body)

    def test_getOnly(self) -> None:
        self.assertEqual(get(self.admin(), "/ping", "POST").code, 405)

    def test_noStore(self) -> None:
        stub: Any = StubTreq(self.admin())
        response: Any = self.successResultOf(stub.get("http://admin.example/healthcheck"))
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])


def proxyState(*inFlight: int) -> ProxyState:
    return ProxyState(
        agents=[
            AgentSample(f"agent{i}", "host", f"id{i}", None, count)
            for i, count in enumerate(inFlight)
        ],
        pathCount=2,
        pendingHandshakes=1,
    )


class ProxyHealthTests(SynchronousTestCase):
    """
    The proxy's checks compare scrapes in flight with their thresholds.
    """

    settings = ProxySettings(
        scrape_request_map_unhealthy_size=5, scrape_request_backlog_unhealthy_size=3
    )

    def checks(self, state: ProxyState) -> Mapping[str, HealthCheck]:
        return proxyHealth(lambda: state, self.settings)()

    def test_names(self) -> None:
        self.assertEqual(
            set(self.checks(proxyState())),
            {"agent_port", "scrape_response_map_check", "agent_scrape_request_backlog"},
        )

    def test_idle(self) -> None:
        checks = self.checks(proxyState(0, 0))
        self.assertTrue(all(check.healthy for check in checks.values()))
        self.assertIn("2 agents", checks["agent_port"].message)

    def test_scrapeMap(self) -> None:
        self.assertTrue(self.checks(proxyState(2, 2))["scrape_response_map_check"].healthy)
        check = self.checks(proxyState(2, 2, 1))["scrape_response_map_check"]
        self.assertFalse(check.healthy)
        self.assertIn("5 scrapes in flight", check.message)

    def test_agentBacklog(self) -> None:
        self.assertTrue(self.checks(proxyState(2, 2))["agent_scrape_request_backlog"].healthy)
        check = self.checks(proxyState(0, 3))["agent_scrape_request_backlog"]
        self.assertFalse(check.healthy)
        self.assertIn("agent1 (id1): 3", check.message)

    def test_served(self) -> None:
        """
        Over the admin endpoint: 200 below the thresholds, 503 at them.
        """
        state = proxyState(1)
        admin = adminRoot(self.settings, proxyHealth(lambda: state, self.settings), None)
        self.assertEqual(get(admin, "/healthcheck").code, 200)
        state = proxyState(4)
        response = get(admin, "/healthcheck")
        self.assertEqual(response.code, 503)
        self.assertFalse(response.json()["agent_scrape_request_backlog"]["healthy"])
        self.assertTrue(response.json()["scrape_response_map_check"]["healthy"])


class AgentHealthTests(SynchronousTestCase):
    """
    The agent is healthy while linked to a proxy with a short backlog.
    """

    settings = AgentSettings(scrape_request_backlog_unhealthy_size=3)

    def checks(self, linkUp: bool, backlog: int) -> Mapping[str, HealthCheck]:
        state = AgentState(
            linkUp=linkUp, backlog=backlog, inFlight=0, roundTripSeconds=None, pathCount=1
        )
        return agentHealth(lambda: state, self.settings)()

    def test_healthy(self) -> None:
        checks = self.checks(True, 2)
        self.assertEqual(set(checks), {"proxy_link", "scrape_request_backlog_check"})
        self.assertTrue(all(check.healthy for check in checks.values()))

    def test_linkDown(self) -> None:
        check = self.checks(False, 0)["proxy_link"]
        self.assertFalse(check.healthy)
        self.assertEqual(check.message, "not connected to a proxy")

    def test_backlog(self) -> None:
        check = self.checks(True, 3)["scrape_request_backlog_check"]
        self.assertFalse(check.healthy)
        self.assertIn("3 scrape requests waiting", check.message)


class OperationsListenersTests(SynchronousTestCase):
    """
    Which listeners the settings ask for, and how their sites are set up.
    """

    def listeners(self, **settings: Any) -> list[Any]:
        return operationsListeners(
            ProxySettings(**settings), ProxyMetrics("l", Clock()).registry, healthy, None, Clock()
        )

    def test_none(self) -> None:
        self.assertEqual(self.listeners(), [])

    def test_metricsPathEmpty(self) -> None:
        self.assertEqual(self.listeners(metrics_enabled=True, metrics_path=""), [])

    def test_sites(self) -> None:
        admin, metrics = self.listeners(
            admin_enabled=True,
            metrics_enabled=True,
            admin_allowed_networks=("10.0.0.0/8",),
        )
        self.assertIsInstance(admin.factory, HardenedSite)
        self.assertIsInstance(metrics.factory, HardenedSite)
        # The allow-list is the admin port's only.
        self.assertIsNone(admin.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertIsNotNone(admin.factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertIsNotNone(metrics.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertEqual(admin.factory.maxHeaderBytes, 16384)
        self.assertEqual(admin.factory.headerTimeout, 10)
        self.assertEqual(admin.factory.timeOut, 45)


class LoopbackTests(TestCase):
    """
    The operations ports serve over real sockets.
    """

    def test_serves(self) -> Any:
        metrics = ProxyMetrics("launch1", reactor)
        metrics.agentConnected()
        settings = ProxySettings(
            admin_enabled=True,
            admin_port=0,
            metrics_enabled=True,
            metrics_port=0,
            metrics_path="proxy/metrics",
        )
        admin, metricsPort = operationsListeners(
            settings, metrics.registry, healthy, None, reactor, "127.0.0.1"
        )
        for listener in (admin, metricsPort):
            listener.startService()
            self.addCleanup(listener.stopService)
        pool = HTTPConnectionPool(reactor, persistent=False)

        async def fetch(port: int, path: str) -> tuple[int, bytes]:
            response = await treq.get(f"http://127.0.0.1:{port}{path}", pool=pool)
            return response.code, await treq.content(response)

        async def check() -> None:
            self.assertEqual(await fetch(admin.portNumber, "/ping"), (200, b"pong\n"))
            code, body = await fetch(metricsPort.portNumber, "/proxy/metrics")
            self.assertEqual(code, 200)
            values = {
                sample.name: sample.value
                for family in text_string_to_metric_families(body.decode("utf-8"))
                for sample in family.samples
            }
            self.assertEqual(values["proxy_connect_count_total"], 1)
            self.assertEqual((await fetch(metricsPort.portNumber, "/metrics"))[0], 404)

        return ensureDeferred(check())
