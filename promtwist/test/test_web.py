"""
Tests for L{promtwist.web}: the admin endpoints, the health checks, and the
operations listeners over real loopback sockets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
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
from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.health import Checks, HealthCheck
from promtwist.metrics import ProxyMetrics
from promtwist.web import adminRoot, operationsListeners
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


healthy: Checks = {"one": lambda: HealthCheck(True, "fine")}


class AdminTests(SynchronousTestCase):
    """
    Each admin endpoint at its configured path.
    """

    def admin(
        self,
        settings: ProxySettings | AgentSettings | None = None,
        debug: Callable[[], str] | None = None,
    ) -> Resource:
        return adminRoot(settings or ProxySettings(), healthy, debug, Clock())

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
            {
                "version": promtwist.__version__.public(),
                "release_date": "Unknown",
                "build_time": "Unknown",
                "name": "promtwist",
            },
        )
        # In prometheus-proxy's order, promtwist's field last.
        self.assertEqual(list(response.json()), ["version", "release_date", "build_time", "name"])

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
        """
        No admin answer may be cached; the header is prometheus-proxy's.
        """
        stub: Any = StubTreq(self.admin())
        for path in ("/ping", "/version", "/healthcheck", "/threaddump"):
            response: Any = self.successResultOf(stub.get("http://admin.example" + path))
            self.assertEqual(
                response.headers.getRawHeaders("cache-control"),
                ["must-revalidate,no-cache,no-store"],
                path,
            )


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
