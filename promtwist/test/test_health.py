"""
Tests for L{promtwist.health}: C{/healthcheck} in prometheus-proxy's
(Dropwizard's) shape, exact field names, check names and status codes,
healthy and unhealthy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.health import (
    Checks,
    HealthCheck,
    agentHealth,
    proxyHealth,
    runChecks,
    timestamp,
)
from promtwist.listen import Listener
from promtwist.metrics import AgentSample, AgentState, ProxyState
from promtwist.test.test_web import get
from promtwist.web import adminRoot

# 2026-12-02T03:04:05.678Z
NOW = 1796180645.678


def ticks(*values: float) -> Callable[[], float]:
    """
    A timer that returns C{values} in turn, as a monotonic clock read
    before and after each check.
    """
    times: Iterator[float] = iter(values)
    return lambda: next(times)


def clockAt(seconds: float) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


class ShapeTests(SynchronousTestCase):
    """
    The document, field by field, as Dropwizard's servlet writes it.
    """

    def serve(self, checks: Checks) -> tuple[int, str, object]:
        # Checks take no time: durations are tested with ticks() below.
        admin = adminRoot(ProxySettings(), checks, None, clockAt(NOW), lambda: 0.0)
        response = get(admin, "/healthcheck")
        return response.code, response.contentType, response.json()

    def test_timestamp(self) -> None:
        self.assertEqual(timestamp(NOW), "2026-12-02T03:04:05.678Z")
        self.assertEqual(timestamp(0.5), "1970-01-01T00:00:00.500Z")

    def test_healthy(self) -> None:
        """
        200, and each check's C{healthy}, C{message}, C{duration} (whole
        milliseconds) and C{timestamp}, in Dropwizard's field order.
        """
        code, contentType, document = self.serve(
            {"b": lambda: HealthCheck(True, "fine"), "a": lambda: HealthCheck(True)}
        )
        self.assertEqual(code, 200)
        self.assertEqual(contentType, "application/json; charset=utf-8")
        stamp = "2026-12-02T03:04:05.678Z"
        self.assertEqual(
            document,
            {
                "a": {"healthy": True, "message": "", "duration": 0, "timestamp": stamp},
                "b": {"healthy": True, "message": "fine", "duration": 0, "timestamp": stamp},
            },
        )
        assert isinstance(document, dict)
        self.assertEqual(list(document), ["a", "b"])
        self.assertEqual(list(document["a"]), ["healthy", "message", "duration", "timestamp"])

    def test_unhealthy(self) -> None:
        """
        One failing check makes it 500, prometheus-proxy's code (not 503).
        """
        code, _, document = self.serve(
            {"one": lambda: HealthCheck(True), "two": lambda: HealthCheck(False, "too many")}
        )
        self.assertEqual(code, 500)
        assert isinstance(document, dict)
        self.assertEqual(
            document["two"],
            {
                "healthy": False,
                "message": "too many",
                "duration": 0,
                "timestamp": "2026-12-02T03:04:05.678Z",
            },
        )
        self.assertTrue(document["one"]["healthy"])

    def test_informational(self) -> None:
        """
        An informational result is shown, marked C{"informational": true},
        whether healthy or not, and does not change the status: 200 beside
        a healthy check, 500 only for the counted one that fails.
        """
        linkDown = HealthCheck(False, "not connected", informational=True)
        code, _, document = self.serve({"a": lambda: HealthCheck(True), "own": lambda: linkDown})
        self.assertEqual(code, 200)
        assert isinstance(document, dict)
        self.assertEqual(
            document["own"],
            {
                "healthy": False,
                "message": "not connected",
                "duration": 0,
                "timestamp": "2026-12-02T03:04:05.678Z",
                "informational": True,
            },
        )
        self.assertNotIn("informational", document["a"])
        code, _, _ = self.serve({"a": lambda: HealthCheck(False), "own": lambda: linkDown})
        self.assertEqual(code, 500)

    def test_none(self) -> None:
        """
        No checks at all: 501, as Dropwizard's servlet answers.
        """
        code, _, document = self.serve({})
        self.assertEqual((code, document), (501, {}))

    def test_duration(self) -> None:
        """
        Each check's own time, truncated to milliseconds.
        """
        document = runChecks(
            {"a": lambda: HealthCheck(True), "b": lambda: HealthCheck(True)},
            clockAt(NOW),
            ticks(10.0, 10.0125, 20.0, 20.0009),
        )
        self.assertEqual((document["a"]["duration"], document["b"]["duration"]), (12, 0))

    def test_checkRaises(self) -> None:
        """
        A check that raises is an unhealthy result with Dropwizard's
        C{error} object (type and message, no stack); the others still run.
        """

        def broken() -> HealthCheck:
            raise RuntimeError("no state")

        code, _, document = self.serve({"broken": broken, "fine": lambda: HealthCheck(True)})
        self.assertEqual(code, 500)
        assert isinstance(document, dict)
        self.assertEqual(
            document["broken"],
            {
                "healthy": False,
                "message": "health check failed: builtins.RuntimeError: no state",
                "error": {"type": "builtins.RuntimeError", "message": "no state"},
                "duration": 0,
                "timestamp": "2026-12-02T03:04:05.678Z",
            },
        )
        self.assertTrue(document["fine"]["healthy"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def proxyState(*inFlight: int) -> ProxyState:
    return ProxyState(
        agents=[
            AgentSample(f"agent{i}", "host", f"id{i}", None, count)
            for i, count in enumerate(inFlight)
        ],
        pathCount=2,
        pendingHandshakes=1,
    )


class Ports:
    """
    Listeners on a L{MemoryReactor}, started and stopped for real.
    """

    def __init__(self, *purposes: str) -> None:
        reactor = MemoryReactor()
        self.listeners = [
            Listener(reactor, 0, Factory(), "127.0.0.1", purpose=purpose) for purpose in purposes
        ]
        for listener in self.listeners:
            listener.privilegedStartService()
            listener.startService()

    def __call__(self) -> list[Listener]:
        return self.listeners

    def stop(self, purpose: str) -> None:
        for listener in self.listeners:
            if listener.purpose == purpose:
                listener.stopService()


UPSTREAM_PROXY = {
    "thread_deadlock",
    "all_services_healthy",
    "grpc_service",
    "chunking_map_check",
    "scrape_response_map_check",
    "agent_scrape_request_backlog",
}
UPSTREAM_AGENT = {"thread_deadlock", "all_services_healthy", "scrape_request_backlog_check"}


class ProxyHealthTests(SynchronousTestCase):
    """
    The proxy's checks: prometheus-proxy's names, and promtwist's
    C{agent_port} beside them.
    """

    settings = ProxySettings(
        scrape_request_map_unhealthy_size=5, scrape_request_backlog_unhealthy_size=3
    )

    def checks(
        self, state: ProxyState, ports: Ports | None = None, **settings: Any
    ) -> dict[str, HealthCheck]:
        health = proxyHealth(
            lambda: state,
            replace(self.settings, **settings),
            ports or Ports("scrape", "agent"),
        )
        return {name: check() for name, check in health.items()}

    def test_names(self) -> None:
        self.assertEqual(set(self.checks(proxyState())), UPSTREAM_PROXY | {"agent_port"})
        withMetrics = self.checks(proxyState(), Ports("metrics"), metrics_enabled=True)
        self.assertEqual(set(withMetrics), UPSTREAM_PROXY | {"agent_port", "metrics_service"})

    def test_idle(self) -> None:
        checks = self.checks(proxyState(0, 0))
        self.assertTrue(all(check.healthy for check in checks.values()), checks)
        self.assertIn("2 agents", checks["agent_port"].message)
        self.assertTrue(checks["agent_port"].informational)
        upstream = [checks[name] for name in UPSTREAM_PROXY]
        self.assertFalse(any(check.informational for check in upstream))

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

    def test_portDown(self) -> None:
        """
        A port that stopped listening fails C{all_services_healthy}, and the
        agent port's also C{grpc_service}, the metrics port's
        C{metrics_service}.
        """
        ports = Ports("scrape", "agent", "metrics")
        healthy = self.checks(proxyState(), ports, metrics_enabled=True)
        self.assertTrue(all(check.healthy for check in healthy.values()), healthy)
        ports.stop("agent")
        checks = self.checks(proxyState(), ports, metrics_enabled=True)
        self.assertEqual(
            checks["all_services_healthy"], HealthCheck(False, "not listening: agent port")
        )
        self.assertEqual(
            checks["grpc_service"], HealthCheck(False, "the agent port is not listening")
        )
        self.assertTrue(checks["metrics_service"].healthy)
        ports.stop("metrics")
        checks = self.checks(proxyState(), ports, metrics_enabled=True)
        self.assertFalse(checks["metrics_service"].healthy)
        self.assertEqual(
            checks["all_services_healthy"].message, "not listening: agent port, metrics port"
        )

    def test_served(self) -> None:
        """
        Over the admin endpoint: 200 below the thresholds, 500 at them.
        """
        state = proxyState(1)
        checks = proxyHealth(lambda: state, self.settings, Ports("scrape", "agent"))
        admin = adminRoot(self.settings, checks, None, clockAt(NOW))
        response = get(admin, "/healthcheck")
        self.assertEqual(response.code, 200)
        self.assertEqual(set(response.json()), UPSTREAM_PROXY | {"agent_port"})
        state = proxyState(4)
        response = get(admin, "/healthcheck")
        self.assertEqual(response.code, 500)
        self.assertFalse(response.json()["agent_scrape_request_backlog"]["healthy"])
        self.assertTrue(response.json()["scrape_response_map_check"]["healthy"])


class AgentHealthTests(SynchronousTestCase):
    """
    The agent's checks: prometheus-proxy's names, and promtwist's
    C{proxy_link} beside them.
    """

    settings = AgentSettings(scrape_request_backlog_unhealthy_size=3)

    def checks(
        self, linkUp: bool, backlog: int, ports: Ports | None = None
    ) -> dict[str, HealthCheck]:
        state = AgentState(
            linkUp=linkUp, backlog=backlog, inFlight=0, roundTripSeconds=None, pathCount=1
        )
        health = agentHealth(lambda: state, self.settings, ports or Ports())
        return {name: check() for name, check in health.items()}

    def test_healthy(self) -> None:
        checks = self.checks(True, 2)
        self.assertEqual(set(checks), UPSTREAM_AGENT | {"proxy_link"})
        self.assertTrue(all(check.healthy for check in checks.values()))

    def test_metricsService(self) -> None:
        state = AgentState(linkUp=True, backlog=0, inFlight=0, roundTripSeconds=None, pathCount=1)
        health = agentHealth(lambda: state, AgentSettings(metrics_enabled=True), Ports("metrics"))
        self.assertEqual(set(health), UPSTREAM_AGENT | {"proxy_link", "metrics_service"})
        self.assertTrue(health["metrics_service"]().healthy)

    def test_linkDown(self) -> None:
        check = self.checks(False, 0)["proxy_link"]
        self.assertEqual(check, HealthCheck(False, "not connected to a proxy", informational=True))

    def test_servedLinkDown(self) -> None:
        """
        Over the admin endpoint, an agent whose proxy is unreachable answers
        200, as prometheus-proxy's agent does, with C{proxy_link} unhealthy
        and informational; a backlog still makes it 500.
        """
        state = AgentState(linkUp=False, backlog=0, inFlight=0, roundTripSeconds=None, pathCount=1)
        checks = agentHealth(lambda: state, self.settings, Ports())
        admin = adminRoot(AgentSettings(), checks, None, clockAt(NOW))
        response = get(admin, "/healthcheck")
        self.assertEqual(response.code, 200)
        link = response.json()["proxy_link"]
        self.assertEqual((link["healthy"], link["informational"]), (False, True))
        state = replace(state, backlog=3)
        self.assertEqual(get(admin, "/healthcheck").code, 500)

    def test_backlog(self) -> None:
        check = self.checks(True, 3)["scrape_request_backlog_check"]
        self.assertFalse(check.healthy)
        self.assertIn("3 scrape requests waiting", check.message)
