# -*- test-case-name: promtwist.test.test_pushprox -*-
"""
PushProx's own metric series, for the PushProx clients promtwist serves,
under PushProx's names and labels so that its users' dashboards keep
working (its proxy's C{/metrics}; the inconsistent C{pushproxy_} prefix of
the proxied-requests counter is PushProx's own).

They are served with the proxy's other metrics: on its metrics port, and
at C{/metrics} on the scrape port (L{promtwist.proxy.selfscrape}).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from promtwist.metrics import Children, MetricsRegistry

# Go's prometheus.DefBuckets, which PushProx's histogram has (Python's
# default buckets add .075, .75 and 7.5).
GO_DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PushProxMetrics:
    """
    C{pushprox_http_requests_total{code,path}} and
    C{pushprox_http_duration_seconds{path}} for C{/poll}, C{/push},
    C{/clients} and the proxy's own C{/metrics} (a poll's duration is how
    long it was held);
    C{pushproxy_proxied_requests_total{code}} for the scrapes PushProx
    clients served, by the status Prometheus got; C{pushprox_proxy_clients},
    the clients known.
    """

    def __init__(self, registry: MetricsRegistry, clients: Callable[[], int]) -> None:
        requests = Counter(
            "pushprox_http_requests",
            "Requests for PushProx's paths on the scrape port, by path and status"
            " (PushProx's name).",
            ["code", "path"],
            registry=registry,
        )
        durations = Histogram(
            "pushprox_http_duration_seconds",
            "Time requests for PushProx's paths took, by path; a poll's is how long it was"
            " held (PushProx's name).",
            ["path"],
            buckets=GO_DEFAULT_BUCKETS,
            registry=registry,
        )
        proxied = Counter(
            "pushproxy_proxied_requests",
            "Scrapes served by PushProx clients, by the status Prometheus got (PushProx's name).",
            ["code"],
            registry=registry,
        )
        # Written as PushProx's Go client writes them: le="1", not "1.0",
        # and no _created series.
        for family in (
            "pushprox_http_requests",
            "pushprox_http_duration_seconds",
            "pushproxy_proxied_requests",
        ):
            registry.likeGo(family)
        clientCount = Gauge(
            "pushprox_proxy_clients",
            "PushProx clients known: polling, or polled within the grace (PushProx's name).",
            registry=registry,
        )
        clientCount.set_function(lambda: float(clients()))
        # Every poll and push counts in two of these: their children are
        # looked up once per label set.
        self._requestsOf = Children(requests)
        self._durationOf = Children(durations)
        self._proxiedOf = Children(proxied)
        for path in ("/poll", "/push", "/clients"):
            self.expect(path)
        self._requestsOf("408", "/poll")
        self._requestsOf("500", "/push")

    def expect(self, path: str) -> None:
        """
        Start C{path}'s C{code="200"} series at 0: PushProx's exist from
        the start for each of its paths, so its dashboards see them.
        """
        self._requestsOf("200", path)

    def answered(self, path: str, code: int, seconds: float) -> None:
        self._requestsOf(str(code), path).inc()
        self._durationOf(path).observe(seconds)

    def proxied(self, code: int) -> None:
        self._proxiedOf(str(code)).inc()
