# -*- test-case-name: promtwist.test.test_health -*-
"""
The admin port's health checks, in the shape of prometheus-proxy's
(Dropwizard's C{HealthCheckServlet}): one JSON object per check, by check
name, each C{{"healthy": bool, "message": str, "duration": ms,
"timestamp": "..."}}, HTTP 200 when every check passes and 500 when any
fails.

The check names are prometheus-proxy's, so that a probe, a blackbox module
or an alert written against its C{/healthcheck} keeps working; promtwist's
own checks (C{agent_port} on the proxy, C{proxy_link} on the agent) are
served beside them under their own names, marked C{"informational": true}:
they say how things are but do not decide the status, so the status is the
one prometheus-proxy would answer in the same state. (Its agent answers 200
while its proxy is unreachable; so does promtwist's, with C{proxy_link}
unhealthy in the document.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from promtwist.config.settings import AgentSettings, ProxySettings
from promtwist.listen import Listener
from promtwist.logs import observer
from promtwist.metrics import AgentState, ProxyState

_log = Logger(observer=observer)


@dataclass(frozen=True)
class HealthCheck:
    """
    The result of one health check, as Dropwizard's C{HealthCheck.Result}.

    @ivar message: for people: what was measured, against what. promtwist
        gives one for healthy results too, where Dropwizard usually has none.
    @ivar informational: the result of one of promtwist's own checks, which
        prometheus-proxy does not have: shown, but not counted for the
        status code, which a monitor of prometheus-proxy reads.
    """

    healthy: bool
    message: str = ""
    informational: bool = False


Checks = Mapping[str, Callable[[], HealthCheck]]
"""
The health checks, by name; each runs when C{/healthcheck} is asked for.
"""


def timestamp(seconds: float) -> str:
    """
    A result's C{timestamp}: ISO 8601 with milliseconds, as Dropwizard's
    health checks write it, in UTC: C{2026-12-02T03:04:05.678Z}.
    """
    whole, millis = divmod(round(seconds * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def runChecks(
    checks: Checks, clock: IReactorTime, timer: Callable[[], float]
) -> dict[str, dict[str, object]]:
    """
    Run every check and describe each result as Dropwizard's servlet does,
    in its field order, the checks sorted by name.

    A check that raises is an unhealthy result carrying the error's type and
    message, as Dropwizard's C{HealthCheck.execute} makes it, not a broken
    endpoint: its traceback goes to the log, never to the client. It counts,
    whichever check it was: a check that cannot run is a broken process.

    @param clock: gives the results' C{timestamp}.
    @param timer: a monotonic clock in seconds, for each check's C{duration}
        in whole milliseconds.
    """
    document: dict[str, dict[str, object]] = {}
    for name in sorted(checks):
        started = timer()
        error: dict[str, str] | None = None
        try:
            result = checks[name]()
        except Exception as e:  # noqa: BLE001 - a broken check is an unhealthy process
            _log.failure("health check {name} failed", name=name)
            kind = f"{type(e).__module__}.{type(e).__qualname__}"
            error = {"type": kind, "message": str(e)}
            result = HealthCheck(False, f"health check failed: {kind}: {e}")
        described: dict[str, object] = {"healthy": result.healthy, "message": result.message}
        if error is not None:
            described["error"] = error
        if result.informational:
            described["informational"] = True
        described["duration"] = int((timer() - started) * 1000)
        described["timestamp"] = timestamp(clock.seconds())
        document[name] = described
    return document


class HealthResource(Resource):
    """
    Runs the health checks: 200 when all pass, 500 when any fails (as
    prometheus-proxy; Kubernetes probes and load balancers treat both 500
    and 503 as failing), 501 when there are none (as Dropwizard's servlet).
    Informational results (L{HealthCheck.informational}) are not counted.
    """

    isLeaf = True

    def __init__(
        self,
        checks: Checks,
        clock: IReactorTime,
        respond: Callable[[Request, bytes, bytes, int], bytes],
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        @param respond: sets the status and the headers every admin response
            carries, and returns the body.
        """
        super().__init__()
        self.checks = checks
        self.clock = clock
        self.respond = respond
        self.timer = timer

    def render_GET(self, request: Request) -> bytes:
        document = runChecks(self.checks, self.clock, self.timer)
        if not document:
            code = 501
        elif all(r["healthy"] or r.get("informational") for r in document.values()):
            code = 200
        else:
            code = 500
        body = json.dumps(document, indent=2) + "\n"
        return self.respond(request, body.encode("utf-8"), b"application/json; charset=utf-8", code)


def _deadlocks() -> HealthCheck:
    # The JVM finds threads deadlocked on monitors; Python has no such
    # detector. That this runs at all shows the reactor thread is not stuck.
    return HealthCheck(True, "the reactor thread answered (Python cannot detect lock cycles)")


def _listening(listener: Listener) -> bool:
    return bool(listener.running) and listener.port is not None


def _allListening(listeners: Callable[[], Iterable[Listener]]) -> HealthCheck:
    down = [f"{listener.purpose} port" for listener in listeners() if not _listening(listener)]
    if down:
        return HealthCheck(False, f"not listening: {', '.join(down)}")
    return HealthCheck(True, "every port is listening")


def _oneListening(listeners: Callable[[], Iterable[Listener]], purpose: str) -> HealthCheck:
    for listener in listeners():
        if listener.purpose == purpose and _listening(listener):
            return HealthCheck(True, f"the {purpose} port is listening")
    return HealthCheck(False, f"the {purpose} port is not listening")


def _serviceChecks(
    settings: ProxySettings | AgentSettings, listeners: Callable[[], Iterable[Listener]]
) -> dict[str, Callable[[], HealthCheck]]:
    """
    The checks prometheus-proxy's proxy and agent both register:
    C{thread_deadlock}, C{all_services_healthy} (here: every port the
    process opened is listening) and, with metrics on, C{metrics_service}.
    """
    checks: dict[str, Callable[[], HealthCheck]] = {
        "thread_deadlock": _deadlocks,
        "all_services_healthy": lambda: _allListening(listeners),
    }
    if settings.metrics_enabled and settings.metrics_path:
        checks["metrics_service"] = lambda: _oneListening(listeners, "metrics")
    return checks


def proxyHealth(
    state: Callable[[], ProxyState],
    settings: ProxySettings,
    listeners: Callable[[], Iterable[Listener]],
) -> Checks:
    """
    The proxy's health checks, prometheus-proxy's names and thresholds:

      - those of L{_serviceChecks};
      - C{grpc_service}: the agent port is listening;
      - C{chunking_map_check}: always healthy: promtwist keeps no chunks
        aside (see C{proxy_chunk_context_map_size});
      - C{scrape_response_map_check}: fewer scrapes in flight than
        C{scrape_request_map_unhealthy_size};
      - C{agent_scrape_request_backlog}: every agent has fewer scrapes in
        flight than C{scrape_request_backlog_unhealthy_size};

    and promtwist's informational C{agent_port}: always healthy, with how
    many agents, paths and pending handshakes there are. prometheus-proxy's
    C{dashboard_service} is absent, as promtwist serves no dashboard.

    @param listeners: the process's listeners, once it made them.
    """

    def scrapeMap() -> HealthCheck:
        inFlight = state().inFlight
        limit = settings.scrape_request_map_unhealthy_size
        return HealthCheck(inFlight < limit, f"{inFlight} scrapes in flight (unhealthy at {limit})")

    def backlog() -> HealthCheck:
        limit = settings.scrape_request_backlog_unhealthy_size
        backlogged = sorted(
            {
                f"{agent.name} ({agent.agentId}): {agent.scrapesInFlight}"
                for agent in state().agents
                if agent.scrapesInFlight >= limit
            }
        )
        if backlogged:
            return HealthCheck(
                False, f"agents with {limit} or more scrapes in flight: {', '.join(backlogged)}"
            )
        return HealthCheck(True, f"no agent has {limit} or more scrapes in flight")

    def agentPort() -> HealthCheck:
        snapshot = state()
        return HealthCheck(
            True,
            f"{len(snapshot.agents)} agents connected, {snapshot.pathCount} paths,"
            f" {snapshot.pendingHandshakes} handshakes pending",
            informational=True,
        )

    return {
        **_serviceChecks(settings, listeners),
        "grpc_service": lambda: _oneListening(listeners, "agent"),
        "chunking_map_check": lambda: HealthCheck(True, "no chunked transfers kept aside"),
        "scrape_response_map_check": scrapeMap,
        "agent_scrape_request_backlog": backlog,
        "agent_port": agentPort,
    }


def agentHealth(
    state: Callable[[], AgentState],
    settings: AgentSettings,
    listeners: Callable[[], Iterable[Listener]],
) -> Checks:
    """
    The agent's health checks: those of L{_serviceChecks};
    prometheus-proxy's C{scrape_request_backlog_check} (fewer scrape
    requests waiting for a slot than
    C{scrape_request_backlog_unhealthy_size}); and promtwist's
    informational C{proxy_link} (connected to a proxy, with the handshake
    done): prometheus-proxy's agent stays healthy while its proxy is
    unreachable, and restarting or unreadying an agent brings no proxy back.

    @param listeners: the process's listeners, once it made them.
    """

    def link() -> HealthCheck:
        up = state().linkUp
        message = "connected to a proxy" if up else "not connected to a proxy"
        return HealthCheck(up, message, informational=True)

    def backlog() -> HealthCheck:
        waiting = state().backlog
        limit = settings.scrape_request_backlog_unhealthy_size
        return HealthCheck(
            waiting < limit, f"{waiting} scrape requests waiting (unhealthy at {limit})"
        )

    return {
        **_serviceChecks(settings, listeners),
        "scrape_request_backlog_check": backlog,
        "proxy_link": link,
    }
