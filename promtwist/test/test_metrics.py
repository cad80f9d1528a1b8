"""
Tests for L{promtwist.metrics} and L{promtwist.web.MetricsResource}: every
metric under prometheus-proxy's name, type and label names, what the event
methods count, sampled gauges read at scrape time, and one registry per
instance.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as openMetricsLatest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from promtwist.metrics import (
    LATENCY_BUCKETS,
    RESPONSE_BYTES_BUCKETS,
    AgentMetrics,
    AgentSample,
    AgentState,
    Children,
    MetricsRegistry,
    ProxyMetrics,
    ProxyState,
    ScrapeLeg,
    goFloat,
    javaDouble,
)
from promtwist.web import MetricsResource

# name → (type, label names), as parsed: counters under their name without
# "_total", which the exposition adds.
PROXY_METRICS: Mapping[str, tuple[str, frozenset[str]]] = {
    # prometheus-proxy's (reference §D.1).
    "proxy_scrape_requests": ("counter", frozenset({"type"})),
    "proxy_scrape_request_latency_seconds": ("histogram", frozenset({"path", "outcome"})),
    "proxy_scrape_response_bytes": ("histogram", frozenset({"path", "encoding"})),
    "proxy_connect_count": ("counter", frozenset()),
    "proxy_eviction_count": ("counter", frozenset()),
    "proxy_heartbeat_count": ("counter", frozenset()),
    "proxy_agent_displacement": ("counter", frozenset()),
    "proxy_chunk_validation_failures": ("counter", frozenset({"stage"})),
    "proxy_chunked_transfers_abandoned": ("counter", frozenset()),
    "proxy_start_time_seconds": ("gauge", frozenset({"launch_id"})),
    "proxy_agent_map_size": ("gauge", frozenset()),
    "proxy_chunk_context_map_size": ("gauge", frozenset()),
    "proxy_path_map_size": ("gauge", frozenset()),
    "proxy_scrape_map_size": ("gauge", frozenset()),
    "proxy_cumulative_agent_backlog_size": ("gauge", frozenset()),
    # promtwist's extras.
    "proxy_relayed_bytes": ("counter", frozenset()),
    "proxy_rejections": ("counter", frozenset({"reason"})),
    "proxy_connected_agents": ("gauge", frozenset({"agent_name", "host_name"})),
    "proxy_agent_connected_seconds": ("gauge", frozenset({"agent_name", "host_name"})),
    "proxy_agent_heartbeat_rtt_seconds": ("gauge", frozenset({"agent_name", "agent_id"})),
    "proxy_scrapes_in_flight": ("gauge", frozenset({"agent_name"})),
    "proxy_pending_handshakes": ("gauge", frozenset()),
    "proxy_path_holder_changes": ("counter", frozenset({"reason"})),
}

AGENT_METRICS: Mapping[str, tuple[str, frozenset[str]]] = {
    # prometheus-proxy's (reference §D.2).
    "agent_scrape_request_count": ("counter", frozenset({"launch_id", "type"})),
    "agent_scrape_result_count": ("counter", frozenset({"launch_id", "type"})),
    "agent_connect_count": ("counter", frozenset({"launch_id", "type"})),
    "agent_scrape_request_latency_seconds": (
        "histogram",
        frozenset({"launch_id", "agent_name"}),
    ),
    "agent_filter_lines_dropped": ("counter", frozenset({"launch_id", "path"})),
    "agent_filter_bytes_saved": ("counter", frozenset({"launch_id", "path"})),
    "agent_start_time_seconds": ("gauge", frozenset({"launch_id"})),
    "agent_scrape_backlog_size": ("gauge", frozenset({"launch_id"})),
    "agent_client_cache_size": ("gauge", frozenset({"launch_id"})),
    # promtwist's extras.
    "agent_link_up": ("gauge", frozenset({"launch_id"})),
    "agent_scrapes_in_flight": ("gauge", frozenset({"launch_id"})),
    "agent_heartbeat_rtt_seconds": ("gauge", frozenset({"launch_id"})),
    "agent_paths": ("gauge", frozenset({"launch_id"})),
    "agent_scrape_retry_count": ("counter", frozenset({"launch_id", "type"})),
}

# What the process collectors add, as prometheus-proxy's JVM collectors do.
PROCESS_METRICS = ("process_cpu_seconds", "process_resident_memory_bytes", "python_info")


def scrape(registry: CollectorRegistry, accept: str | None = None) -> tuple[str, str]:
    """
    GET a L{MetricsResource} over C{registry}; the content type and body.
    """
    stub: Any = StubTreq(MetricsResource(registry))
    headers = {} if accept is None else {"Accept": accept}
    response: Any = SynchronousTestCase().successResultOf(
        stub.get("http://metrics.example/metrics", headers=headers)
    )
    assert response.code == 200, response.code
    body: bytes = SynchronousTestCase().successResultOf(stub.content(response))
    contentType: str = response.headers.getRawHeaders("content-type")[0]
    return contentType, body.decode("utf-8")


def families(registry: CollectorRegistry) -> dict[str, Metric]:
    """
    Scrape C{registry} in the text format and parse it, by family name.
    """
    return {family.name: family for family in text_string_to_metric_families(scrape(registry)[1])}


def labelNames(family: Metric) -> frozenset[str]:
    """
    The label names a family's samples carry, apart from the C{le} of
    histogram buckets.
    """
    return frozenset(name for sample in family.samples for name in sample.labels if name != "le")


def sampleNames(family: Metric) -> set[str]:
    return {sample.name for sample in family.samples}


def success(seconds: float, nbytes: int = 100, encoding: str = "plain") -> ScrapeLeg:
    return ScrapeLeg("success", seconds, nbytes, encoding)


def proxyState(*agents: AgentSample, paths: int = 0, pending: int = 0) -> ProxyState:
    return ProxyState(agents=agents, pathCount=paths, pendingHandshakes=pending)


def agent(
    name: str = "agent1",
    hostName: str = "host1",
    agentId: str = "id1",
    rtt: float | None = 0.01,
    inFlight: int = 0,
    connected: float = 0.0,
    transfers: int = 0,
) -> AgentSample:
    return AgentSample(name, hostName, agentId, rtt, inFlight, connected, transfers)


class ProxyExpositionTests(SynchronousTestCase):
    """
    The proxy's metrics are exposed under prometheus-proxy's names, types and
    label names, plus the process metrics.
    """

    def setUp(self) -> None:
        clock = Clock()
        clock.advance(1700000000)
        self.metrics = ProxyMetrics("launch1", clock)

    def exercise(self) -> None:
        """
        Produce a sample in every labelled family.
        """
        self.metrics.scrapeFinished("app1_metrics", [success(0.2, 2048, "gzipped")], 700)
        self.metrics.rejected("bad_token")
        self.metrics.holderChanged("lost")
        self.metrics.chunkInvalid("chunk")
        self.metrics.transferAbandoned()
        self.metrics.track(lambda: proxyState(agent(rtt=0.01, inFlight=1), paths=1, pending=0))

    def test_namesTypesAndLabels(self) -> None:
        self.exercise()
        exposed = families(self.metrics.registry)
        for name, (kind, labels) in PROXY_METRICS.items():
            self.assertIn(name, exposed)
            self.assertEqual((name, exposed[name].type), (name, kind))
            self.assertEqual((name, labelNames(exposed[name])), (name, labels))

    def test_counterSampleNames(self) -> None:
        """
        Counters are exposed as C{<name>_total}; those named with C{_total}
        already, as prometheus-proxy names them, with one C{_total} only.
        """
        self.exercise()
        exposed = families(self.metrics.registry)
        for name, (kind, _) in PROXY_METRICS.items():
            if kind == "counter":
                self.assertIn(name + "_total", sampleNames(exposed[name]))
        self.assertNotIn("_total_total", scrape(self.metrics.registry)[1])

    def test_bucketBoundText(self) -> None:
        """
        C{le} is printed as prometheus-proxy's Java client prints it, in
        both exposition formats: the label value is part of the series.
        """
        self.exercise()
        for accept in (None, "application/openmetrics-text; version=1.0.0"):
            text = scrape(self.metrics.registry, accept)[1]
            bounds = re.findall(r'proxy_scrape_response_bytes_bucket\{[^}]*le="([^"]+)"', text)
            self.assertEqual(
                bounds,
                [
                    "1024.0",
                    "10240.0",
                    "102400.0",
                    "512000.0",
                    "1048576.0",
                    "5242880.0",
                    "1.048576E7",
                    "+Inf",
                ],
            )
            latency = re.findall(
                r'proxy_scrape_request_latency_seconds_bucket\{[^}]*le="([^"]+)"', text
            )
            self.assertEqual(
                latency,
                "0.005 0.01 0.025 0.05 0.1 0.25 0.5 1.0 2.5 5.0 10.0 +Inf".split(),
            )
        # OpenMetrics' strict parser reads the Java form as the same bounds.
        exposed = {family.name: family for family in openmetrics_families(text)}
        self.assertEqual(
            [
                float(sample.labels["le"])
                for sample in exposed["proxy_scrape_response_bytes"].samples
                if "le" in sample.labels
            ],
            [*RESPONSE_BYTES_BUCKETS, float("inf")],
        )

    def test_processMetrics(self) -> None:
        exposed = families(self.metrics.registry)
        for name in PROCESS_METRICS:
            self.assertIn(name, exposed)

    def test_buckets(self) -> None:
        self.exercise()
        exposed = families(self.metrics.registry)

        def bounds(name: str) -> list[float]:
            return [
                float(sample.labels["le"])
                for sample in exposed[name].samples
                if sample.name == name + "_bucket"
            ]

        self.assertEqual(
            bounds("proxy_scrape_request_latency_seconds"),
            [*LATENCY_BUCKETS, float("inf")],
        )
        self.assertEqual(LATENCY_BUCKETS[0], 0.005)
        self.assertEqual(LATENCY_BUCKETS[-1], 10.0)
        self.assertEqual(len(LATENCY_BUCKETS), 11)
        self.assertEqual(
            bounds("proxy_scrape_response_bytes"),
            [1024, 10240, 102400, 512000, 1048576, 5242880, 10485760, float("inf")],
        )
        self.assertEqual(len(RESPONSE_BYTES_BUCKETS), 7)

    def test_startTime(self) -> None:
        self.assertEqual(
            self.metrics.registry.get_sample_value(
                "proxy_start_time_seconds", {"launch_id": "launch1"}
            ),
            1700000000,
        )

    def test_untrackedSampledGaugesAbsent(self) -> None:
        """
        Until C{track} is called the sampled gauges are not exposed, rather
        than reporting an idle proxy that may not be.
        """
        exposed = families(self.metrics.registry)
        self.assertNotIn("proxy_agent_map_size", exposed)
        self.assertIn("proxy_connect_count", exposed)


class ProxyEventTests(SynchronousTestCase):
    """
    The event methods change the samples they are for.
    """

    def setUp(self) -> None:
        self.metrics = ProxyMetrics("launch1", Clock())

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, dict(labels or {}))

    def test_scrapeFinished(self) -> None:
        self.metrics.scrapeFinished("app1_metrics", [success(0.2, 2048, "gzipped")], 700)
        self.metrics.scrapeFinished("app1_metrics", [success(0.3, 100)], 100)
        self.assertEqual(self.value("proxy_scrape_requests_total", {"type": "success"}), 2)
        latency = {"path": "app1_metrics", "outcome": "success"}
        self.assertEqual(self.value("proxy_scrape_request_latency_seconds_count", latency), 2)
        self.assertAlmostEqual(
            self.value("proxy_scrape_request_latency_seconds_sum", latency) or 0, 0.5
        )
        self.assertEqual(
            self.value("proxy_scrape_request_latency_seconds_bucket", {**latency, "le": "0.25"}),
            1,
        )
        gzipped = {"path": "app1_metrics", "encoding": "gzipped"}
        # The body's own size, not what went to Prometheus.
        self.assertEqual(self.value("proxy_scrape_response_bytes_sum", gzipped), 2048)
        self.assertEqual(
            self.value("proxy_scrape_response_bytes_bucket", {**gzipped, "le": "1024.0"}), 0
        )
        plain = {"path": "app1_metrics", "encoding": "plain"}
        self.assertEqual(self.value("proxy_scrape_response_bytes_count", plain), 1)
        self.assertEqual(self.value("proxy_relayed_bytes_total"), 800)

    def test_everyLegCounted(self) -> None:
        """
        A consolidated path's agents each count, under their own outcome
        and time, as prometheus-proxy counts them.
        """
        self.metrics.scrapeFinished(
            "group",
            [success(0.1), ScrapeLeg("upstream_error", 0.2), success(0.4, 5000, "gzipped")],
            5100,
        )
        self.assertEqual(self.value("proxy_scrape_requests_total", {"type": "success"}), 2)
        self.assertEqual(self.value("proxy_scrape_requests_total", {"type": "upstream_error"}), 1)
        self.assertEqual(
            self.value(
                "proxy_scrape_request_latency_seconds_count",
                {"path": "group", "outcome": "upstream_error"},
            ),
            1,
        )
        self.assertEqual(
            self.value("proxy_scrape_response_bytes_sum", {"path": "group", "encoding": "gzipped"}),
            5000,
        )

    def test_failureSizesNotObserved(self) -> None:
        """
        A failed scrape is counted and timed by outcome, but its body (a
        one-line reason) is not a response size; it is relayed bytes.
        """
        self.metrics.scrapeFinished("app1_metrics", [ScrapeLeg("timed_out", 1.5)], 40)
        self.assertEqual(self.value("proxy_scrape_requests_total", {"type": "timed_out"}), 1)
        self.assertEqual(
            self.value(
                "proxy_scrape_request_latency_seconds_count",
                {"path": "app1_metrics", "outcome": "timed_out"},
            ),
            1,
        )
        self.assertIsNone(
            self.value(
                "proxy_scrape_response_bytes_count",
                {"path": "app1_metrics", "encoding": "plain"},
            )
        )
        self.assertEqual(self.value("proxy_relayed_bytes_total"), 40)

    def test_forgetPath(self) -> None:
        """
        A forgotten path's series end, others' stay; a scrape that ends
        after its path was forgotten is counted but labels nothing.
        """
        for path in ("app1_metrics", "//client1"):
            self.metrics.scrapeFinished(path, [success(0.2, 2048), ScrapeLeg("timed_out", 1)], 0)
        self.metrics.forgetPath("//client1")
        self.metrics.scrapeFinished(None, [success(0.2, 2048)], 0)
        text = scrape(self.metrics.registry)[1]
        self.assertNotIn("//client1", text)
        latency = {"path": "app1_metrics", "outcome": "success"}
        self.assertEqual(self.value("proxy_scrape_request_latency_seconds_count", latency), 1)
        self.assertEqual(self.value("proxy_scrape_requests_total", {"type": "success"}), 3)

    def test_untimedLegNotALabel(self) -> None:
        """
        A request no agent was asked for is counted but not timed, as
        prometheus-proxy does: its path is the requester's choice and makes
        no series.
        """
        for path in ("nope1", "nope2"):
            self.metrics.scrapeFinished(path, [ScrapeLeg("invalid_path", None)], 20)
        self.assertEqual(self.value("proxy_scrape_requests_total", {"type": "invalid_path"}), 2)
        text = scrape(self.metrics.registry)[1]
        self.assertNotIn("nope1", text)
        self.assertNotIn('outcome="invalid_path"', text)

    def test_hungUpNotCounted(self) -> None:
        """
        A scrape with no legs (Prometheus hung up first) counts nothing but
        the bytes relayed.
        """
        self.metrics.scrapeFinished("app1_metrics", [], 30)
        text = scrape(self.metrics.registry)[1]
        self.assertNotIn('path="app1_metrics"', text)
        self.assertEqual(self.value("proxy_relayed_bytes_total"), 30)

    def test_transfers(self) -> None:
        self.metrics.chunkInvalid("chunk")
        self.metrics.chunkInvalid("summary")
        self.metrics.chunkInvalid("summary")
        self.metrics.transferAbandoned()
        self.assertEqual(self.value("proxy_chunk_validation_failures_total", {"stage": "chunk"}), 1)
        self.assertEqual(
            self.value("proxy_chunk_validation_failures_total", {"stage": "summary"}), 2
        )
        self.assertEqual(self.value("proxy_chunked_transfers_abandoned_total"), 1)

    def test_successAtZero(self) -> None:
        """
        Before any scrape, successes are exposed as 0: a success ratio reads
        0 when nothing succeeds, not nothing.
        """
        self.assertEqual(self.value("proxy_scrape_requests_total", {"type": "success"}), 0)

    def test_counters(self) -> None:
        self.metrics.agentConnected()
        self.metrics.agentConnected()
        self.metrics.heartbeats(3)
        self.metrics.heartbeats(0)
        self.metrics.agentEvicted()
        self.metrics.agentDisplaced()
        self.metrics.rejected("bad_token")
        self.metrics.rejected("bad_token")
        self.metrics.rejected("too_many_agents")
        self.metrics.holderChanged("goodbye")
        self.metrics.holderChanged("takeover")
        self.metrics.holderChanged("goodbye")
        self.assertEqual(self.value("proxy_path_holder_changes_total", {"reason": "goodbye"}), 2)
        self.assertEqual(self.value("proxy_path_holder_changes_total", {"reason": "takeover"}), 1)
        self.assertEqual(self.value("proxy_connect_count_total"), 2)
        self.assertEqual(self.value("proxy_heartbeat_count_total"), 3)
        self.assertEqual(self.value("proxy_eviction_count_total"), 1)
        self.assertEqual(self.value("proxy_agent_displacement_total"), 1)
        self.assertEqual(self.value("proxy_rejections_total", {"reason": "bad_token"}), 2)
        self.assertEqual(self.value("proxy_rejections_total", {"reason": "too_many_agents"}), 1)


class ProxySampledTests(SynchronousTestCase):
    """
    The sampled gauges are whatever the state function says at the moment
    of the scrape.
    """

    def setUp(self) -> None:
        self.metrics = ProxyMetrics("launch1", Clock())
        self.state = proxyState()
        self.calls = 0

        def state() -> ProxyState:
            self.calls += 1
            return self.state

        self.metrics.track(state)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, dict(labels or {}))

    def test_readAtScrapeTime(self) -> None:
        self.assertEqual(self.calls, 0)
        self.assertEqual(self.value("proxy_agent_map_size"), 0)
        self.state = proxyState(
            agent("a", "h1", "id1", 0.02, 2, 600.0, transfers=1),
            agent("a", "h1", "id2", None, 3, 30.0, transfers=2),
            agent("b", "h2", "id3", 0.5, 1, 5.0),
            paths=4,
            pending=2,
        )
        exposed = families(self.metrics.registry)
        self.assertGreater(self.calls, 0)

        def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
            return {
                tuple(sorted(sample.labels.items())): sample.value
                for sample in exposed[name].samples
            }

        self.assertEqual(samples("proxy_agent_map_size"), {(): 3})
        self.assertEqual(samples("proxy_path_map_size"), {(): 4})
        self.assertEqual(samples("proxy_scrape_map_size"), {(): 6})
        self.assertEqual(samples("proxy_cumulative_agent_backlog_size"), {(): 6})
        # Answers in several frames under way, over all agents.
        self.assertEqual(samples("proxy_chunk_context_map_size"), {(): 3})
        self.assertEqual(samples("proxy_pending_handshakes"), {(): 2})
        self.assertEqual(
            samples("proxy_connected_agents"),
            {
                (("agent_name", "a"), ("host_name", "h1")): 2,
                (("agent_name", "b"), ("host_name", "h2")): 1,
            },
        )
        # The newest connection's age: it drops at a reconnect, for resets().
        self.assertEqual(
            samples("proxy_agent_connected_seconds"),
            {
                (("agent_name", "a"), ("host_name", "h1")): 30.0,
                (("agent_name", "b"), ("host_name", "h2")): 5.0,
            },
        )
        # An agent without a round trip yet has no sample, not a 0.
        self.assertEqual(
            samples("proxy_agent_heartbeat_rtt_seconds"),
            {
                (("agent_id", "id1"), ("agent_name", "a")): 0.02,
                (("agent_id", "id3"), ("agent_name", "b")): 0.5,
            },
        )
        self.assertEqual(
            samples("proxy_scrapes_in_flight"),
            {(("agent_name", "a"),): 5, (("agent_name", "b"),): 1},
        )

        self.state = proxyState(paths=1)
        self.assertEqual(self.value("proxy_agent_map_size"), 0)
        self.assertEqual(self.value("proxy_path_map_size"), 1)
        self.assertIsNone(
            self.value("proxy_connected_agents", {"agent_name": "a", "host_name": "h1"})
        )

    def test_trackReplaces(self) -> None:
        self.metrics.track(lambda: proxyState(paths=9))
        self.assertEqual(self.value("proxy_path_map_size"), 9)


class SeparateRegistryTests(SynchronousTestCase):
    """
    Each instance has a registry of its own, never the global one.
    """

    def test_twoProxies(self) -> None:
        one = ProxyMetrics("one", Clock())
        two = ProxyMetrics("two", Clock())
        one.agentConnected()
        one.track(lambda: proxyState(paths=1))
        two.track(lambda: proxyState(paths=2))
        self.assertEqual(one.registry.get_sample_value("proxy_connect_count_total"), 1)
        self.assertEqual(two.registry.get_sample_value("proxy_connect_count_total"), 0)
        self.assertEqual(one.registry.get_sample_value("proxy_path_map_size"), 1)
        self.assertEqual(two.registry.get_sample_value("proxy_path_map_size"), 2)
        self.assertIsNone(
            two.registry.get_sample_value("proxy_start_time_seconds", {"launch_id": "one"})
        )

    def test_notGlobal(self) -> None:
        ProxyMetrics("one", Clock()).agentConnected()
        AgentMetrics("one", "agent", Clock()).connected(True)
        self.assertIsNone(REGISTRY.get_sample_value("proxy_connect_count_total"))
        self.assertIsNone(
            REGISTRY.get_sample_value(
                "agent_connect_count_total", {"launch_id": "one", "type": "success"}
            )
        )

    def test_proxyAndAgent(self) -> None:
        """
        A proxy and an agent in one process, as in the integration tests.
        """
        proxy = ProxyMetrics("one", Clock())
        agentMetrics = AgentMetrics("two", "agent", Clock())
        self.assertFalse([name for name in families(proxy.registry) if name.startswith("agent_")])
        self.assertFalse(
            [name for name in families(agentMetrics.registry) if name.startswith("proxy_")]
        )


class AgentMetricsTests(SynchronousTestCase):
    """
    The agent's metrics: prometheus-proxy's names, types and labels, with
    C{launch_id} on every one; events and sampled gauges.
    """

    def setUp(self) -> None:
        clock = Clock()
        clock.advance(1700000100)
        self.metrics = AgentMetrics("launch2", "agent1", clock)
        self.state = AgentState(
            linkUp=True, backlog=2, inFlight=3, roundTripSeconds=0.04, pathCount=5
        )
        self.metrics.track(lambda: self.state)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"launch_id": "launch2", **labels})

    def test_namesTypesAndLabels(self) -> None:
        self.metrics.connected(True)
        self.metrics.scrapeFinished("success", 0.1)
        self.metrics.resultSent("gzipped")
        self.metrics.filtered("app1_metrics", 10, 500)
        exposed = families(self.metrics.registry)
        for name, (kind, labels) in AGENT_METRICS.items():
            self.assertIn(name, exposed)
            self.assertEqual((name, exposed[name].type), (name, kind))
            self.assertEqual((name, labelNames(exposed[name])), (name, labels))
            if kind == "counter":
                self.assertIn(name + "_total", sampleNames(exposed[name]))
        for name in PROCESS_METRICS:
            self.assertIn(name, exposed)

    def test_events(self) -> None:
        self.metrics.connected(True)
        self.metrics.connected(False)
        self.metrics.connected(False)
        self.metrics.scrapeFinished("success", 0.1)
        self.metrics.scrapeFinished("unsuccessful", 0.2)
        # No answer from the target: timed, not counted by type.
        self.metrics.scrapeFinished("failed", 3.0)
        # Counted, not timed.
        self.metrics.invalidPath()
        self.metrics.resultSent("non-gzipped")
        self.metrics.resultSent("dropped")
        self.metrics.filtered("app1_metrics", 10, 500)
        self.metrics.filtered("app1_metrics", 1, 20)
        self.metrics.retried("server_error")
        self.assertEqual(self.value("agent_scrape_retry_count_total", type="server_error"), 1)
        self.assertEqual(self.value("agent_connect_count_total", type="success"), 1)
        self.assertEqual(self.value("agent_connect_count_total", type="failure"), 2)
        self.assertEqual(self.value("agent_scrape_request_count_total", type="success"), 1)
        self.assertEqual(self.value("agent_scrape_request_count_total", type="invalid_path"), 1)
        self.assertEqual(self.value("agent_scrape_request_count_total", type="unsuccessful"), 1)
        self.assertIsNone(self.value("agent_scrape_request_count_total", type="failed"))
        self.assertEqual(
            self.value("agent_scrape_request_latency_seconds_count", agent_name="agent1"), 3
        )
        self.assertEqual(
            self.value(
                "agent_scrape_request_latency_seconds_bucket", agent_name="agent1", le="0.25"
            ),
            2,
        )
        self.assertEqual(self.value("agent_scrape_result_count_total", type="non-gzipped"), 1)
        self.assertEqual(self.value("agent_scrape_result_count_total", type="dropped"), 1)
        self.assertEqual(self.value("agent_filter_lines_dropped_total", path="app1_metrics"), 11)
        self.assertEqual(self.value("agent_filter_bytes_saved_total", path="app1_metrics"), 520)

    def test_typesAtZero(self) -> None:
        """
        Before any event every type of the agent's counters is exposed as 0,
        so that dashboards show 0 rather than nothing.
        """
        for name, types in (
            ("agent_scrape_request_count_total", ("success", "unsuccessful", "invalid_path")),
            ("agent_scrape_result_count_total", ("non-gzipped", "gzipped", "chunked", "dropped")),
            ("agent_connect_count_total", ("success", "failure")),
            ("agent_scrape_retry_count_total", ("unreachable", "server_error")),
        ):
            for kind in types:
                self.assertEqual((name, kind, self.value(name, type=kind)), (name, kind, 0))

    def test_startTime(self) -> None:
        self.assertEqual(self.value("agent_start_time_seconds"), 1700000100)

    def test_sampled(self) -> None:
        self.assertEqual(self.value("agent_scrape_backlog_size"), 2)
        self.assertEqual(self.value("agent_client_cache_size"), 1)
        self.assertEqual(self.value("agent_link_up"), 1)
        self.assertEqual(self.value("agent_scrapes_in_flight"), 3)
        self.assertEqual(self.value("agent_heartbeat_rtt_seconds"), 0.04)
        self.assertEqual(self.value("agent_paths"), 5)
        self.state = AgentState(
            linkUp=False,
            backlog=0,
            inFlight=0,
            roundTripSeconds=None,
            pathCount=5,
            clientCacheSize=0,
        )
        self.assertEqual(self.value("agent_link_up"), 0)
        self.assertEqual(self.value("agent_scrape_backlog_size"), 0)
        self.assertEqual(self.value("agent_client_cache_size"), 0)
        self.assertIsNone(self.value("agent_heartbeat_rtt_seconds"))


class NegotiationTests(SynchronousTestCase):
    """
    L{MetricsResource} serves OpenMetrics to clients that ask for it and
    the 0.0.4 text format to everyone else.
    """

    def setUp(self) -> None:
        self.metrics = ProxyMetrics("launch1", Clock())
        self.metrics.agentConnected()

    def test_textByDefault(self) -> None:
        for accept in (None, "*/*", "text/plain;version=0.0.4"):
            contentType, body = scrape(self.metrics.registry, accept)
            self.assertEqual(contentType, CONTENT_TYPE_PLAIN_0_0_4)
            self.assertIn("proxy_connect_count_total 1.0\n", body)
            self.assertFalse(body.endswith("# EOF\n"))

    def test_openMetrics(self) -> None:
        contentType, body = scrape(
            self.metrics.registry, "application/openmetrics-text; version=1.0.0"
        )
        self.assertTrue(contentType.startswith("application/openmetrics-text"), contentType)
        self.assertTrue(body.endswith("# EOF\n"))
        exposed = {family.name: family for family in openmetrics_families(body)}
        self.assertEqual(exposed["proxy_connect_count"].type, "counter")

    def test_prometheusAccept(self) -> None:
        """
        Prometheus' own Accept header, which prefers OpenMetrics.
        """
        contentType, body = scrape(
            self.metrics.registry,
            "application/openmetrics-text;version=1.0.0;q=0.5,"
            "application/openmetrics-text;version=0.0.1;q=0.4,"
            "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
        )
        self.assertTrue(contentType.startswith("application/openmetrics-text"), contentType)
        self.assertTrue(body.endswith("# EOF\n"))

    def test_openMetricsNoVersion(self) -> None:
        contentType, _ = scrape(self.metrics.registry, "application/openmetrics-text")
        self.assertEqual(contentType, OPENMETRICS)

    def test_gzip(self) -> None:
        """
        A client that accepts gzip, as Prometheus does, gets the exposition
        gzipped, and one that refuses it (C{q=0}) plain, as
        prometheus_client's and Go's servers serve theirs.
        """
        resource = MetricsResource(self.metrics.registry)
        for acceptEncoding, encoding in [("gzip", [b"gzip"]), ("gzip;q=0, identity", None)]:
            request = DummyRequest([b"metrics"])
            request.requestHeaders.setRawHeaders(b"accept-encoding", [acceptEncoding.encode()])
            body = resource.render_GET(request)  # type: ignore[arg-type]
            self.assertEqual(request.responseHeaders.getRawHeaders(b"content-encoding"), encoding)
            text = gzip.decompress(body) if encoding else body
            self.assertIn(b"proxy_connect_count_total 1.0\n", text)


class JavaDoubleTests(SynchronousTestCase):
    """
    L{javaDouble} prints as Java's C{Double.toString} (and simpleclient's
    C{doubleToGoString} for infinities).
    """

    def test_plainRange(self) -> None:
        """
        From 10^-3 up to 10^7: plain digits, at least one after the point.
        """
        for value, text in [
            (0.005, "0.005"),
            (0.001, "0.001"),
            (1.0, "1.0"),
            (2.5, "2.5"),
            (100.0, "100.0"),
            (1048576.0, "1048576.0"),
            (9999999.0, "9999999.0"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
        ]:
            self.assertEqual((value, javaDouble(value)), (value, text))

    def test_scientific(self) -> None:
        """
        Outside that: one digit before the point, at least one after, then
        C{E} and the exponent without a plus sign.
        """
        for value, text in [
            (10485760.0, "1.048576E7"),
            (1e7, "1.0E7"),
            (123456789.0, "1.23456789E8"),
            (0.0001, "1.0E-4"),
            (1.5e-10, "1.5E-10"),
            (1e21, "1.0E21"),
        ]:
            self.assertEqual((value, javaDouble(value)), (value, text))

    def test_special(self) -> None:
        self.assertEqual(javaDouble(float("inf")), "+Inf")
        self.assertEqual(javaDouble(float("-inf")), "-Inf")
        self.assertEqual(javaDouble(float("nan")), "NaN")
        self.assertEqual(javaDouble(0.0), "0.0")
        self.assertEqual(javaDouble(-0.0), "-0.0")


class GoFloatTests(SynchronousTestCase):
    """
    L{goFloat} prints as Go's C{strconv.FormatFloat(v, 'g', -1, 64)},
    which PushProx's client library writes C{le} with; the expected texts
    are what Go 1.19 printed for these values.
    """

    def test_forms(self) -> None:
        for value, text in [
            (0.005, "0.005"),
            (1.0, "1"),
            (2.5, "2.5"),
            (10.0, "10"),
            (100000.0, "100000"),
            (999999.0, "999999"),
            (1e6, "1e+06"),
            (1048576.0, "1.048576e+06"),
            (10485760.0, "1.048576e+07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-10, "1.5e-10"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456.5, "123456.5"),
        ]:
            self.assertEqual((value, goFloat(value)), (value, text))

    def test_special(self) -> None:
        self.assertEqual(
            [goFloat(v) for v in (float("inf"), float("-inf"), float("nan"), 0.0)],
            ["+Inf", "-Inf", "NaN", "0"],
        )

    def test_spelledPerFamily(self) -> None:
        """
        A registry spells a family's buckets as it says, every other
        histogram's as prometheus-proxy's.
        """
        registry = MetricsRegistry()
        Histogram("go_style", "Go's.", buckets=(1.0, 1e6), registry=registry)
        Histogram("java_style", "Java's.", buckets=(1.0, 1e7), registry=registry)
        registry.spellBuckets("go_style", goFloat)
        les = {
            family.name: [s.labels["le"] for s in family.samples if "le" in s.labels]
            for family in registry.collect()
        }
        self.assertEqual(les["go_style"], ["1", "1e+06", "+Inf"])
        self.assertEqual(les["java_style"], ["1.0", "1.0E7", "+Inf"])

    def test_likeGo(self) -> None:
        """
        A family written like Go's client has its buckets spelled as Go
        spells them and no C{_created} sample, in either format; every
        other counter and histogram keeps its C{_created}, as
        prometheus-proxy's simpleclient writes one.
        """
        registry = MetricsRegistry()
        Counter("go_count", "Go's.", registry=registry).inc()
        Histogram("go_time", "Go's.", buckets=(1.0,), registry=registry).observe(0.5)
        Counter("java_count", "Java's.", registry=registry).inc()
        registry.likeGo("go_count")
        registry.likeGo("go_time")
        for text in (
            generate_latest(registry).decode(),
            openMetricsLatest(registry).decode(),
        ):
            names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()}
            self.assertNotIn("go_count_created", names)
            self.assertNotIn("go_time_created", names)
            self.assertIn("go_count_total", names)
            self.assertIn('go_time_bucket{le="1"} 1.0', text)
            self.assertIn("java_count_created", names)


class ChildrenTests(SynchronousTestCase):
    def test_lookedUpOnce(self) -> None:
        """
        Each label set's child is asked of the metric once, then reused.
        """
        asked: list[tuple[str, ...]] = []

        class Metric:
            def labels(self, *values: str) -> object:
                asked.append(values)
                return object()

        children = Children(Metric())
        first = children("p", "success")
        self.assertIs(children("p", "success"), first)
        self.assertIsNot(children("p", "timed_out"), first)
        self.assertEqual(asked, [("p", "success"), ("p", "timed_out")])
