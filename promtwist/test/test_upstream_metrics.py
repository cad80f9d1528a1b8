"""
A real proxy and real agents on loopback, driven through every kind of
scrape, export prometheus-proxy's metric families with its types, label
names, label values and C{le} text, as listed in
C{promtwist/test/data/upstream-metrics.json} (taken from prometheus-proxy's
C{ProxyMetrics.kt} and C{AgentMetrics.kt}); promtwist's own families use
names of their own.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from promtwist.agent.build import buildAgent
from promtwist.agent.service import AgentService
from promtwist.config.settings import (
    AgentSettings,
    MetricFilter,
    PathConfig,
    ProxyEndpoint,
    ProxySettings,
)
from promtwist.protocol.promtwist_pb2 import Frame, ScrapeChunk, ScrapeRequest, ScrapeResponse
from promtwist.proxy.build import buildProxy
from promtwist.test.helpers import startTarget
from promtwist.test.processes import freePort
from promtwist.test.test_metrics import scrape
from promtwist.test.test_relay_attacks import Behaviour, HostileAgent, connectHostile

UPSTREAM: dict[str, Any] = json.loads(
    FilePath(__file__).sibling("data").child("upstream-metrics.json").getContent()
)

# promtwist's own families (docs/metrics.md), by process.
EXTRAS = {
    "proxy": {
        "proxy_relayed_bytes",
        "proxy_rejections",
        "proxy_path_holder_changes",
        "proxy_connected_agents",
        "proxy_agent_connected_seconds",
        "proxy_agent_heartbeat_rtt_seconds",
        "proxy_scrapes_in_flight",
        "proxy_pending_handshakes",
        "proxy_agents",
    },
    "agent": {
        "agent_link_up",
        "agent_scrapes_in_flight",
        "agent_heartbeat_rtt_seconds",
        "agent_paths",
        "agent_scrape_retry_count",
    },
}

# The proxy's families under PushProx's names, for PushProx clients; not
# prometheus-proxy's, and not promtwist's own either.
PUSHPROX = {
    "pushprox_http_requests",
    "pushprox_http_duration_seconds",
    "pushproxy_proxied_requests",
    "pushprox_proxy_clients",
}

# Families every Python process exports (where prometheus-proxy has its
# optional JVM collectors).
PROCESS = re.compile(r"^(process_|python_)")

# The big target's body: varied enough digits that even gzipped it fills
# several chunks of the link.
BIG = b"".join(b'big_metric{n="%d"} %d\n' % (n, n * 7919**5) for n in range(20_000))


class Targets(Resource):
    """
    One target per outcome: C{/metrics}, C{/gzip} (gzipped by the target),
    C{/missing} (404), C{/error} (500) and C{/big}.
    """

    isLeaf = True
    gzipped = gzip.compress(b"gzipped_metric 1\n" * 2000)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4")
        path = request.path
        if path == b"/gzip":
            request.setHeader(b"Content-Encoding", b"gzip")
            return self.gzipped
        if path == b"/missing":
            request.setResponseCode(404)
            return b"not here\n"
        if path == b"/error":
            request.setResponseCode(500)
            return b"broken\n"
        if path == b"/big":
            return BIG
        return b'echo_metric 1\nkept_metric{a="b"} 2\n'


def exposition(text: str) -> tuple[dict[str, str], dict[str, list[dict[str, str]]]]:
    """
    The C{# TYPE} lines of a text exposition (name to type), and the label
    sets of the samples of every family, as parsed.
    """
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    samples = {
        family.name: [dict(sample.labels) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }
    return types, samples


def bucketBounds(text: str, family: str) -> list[list[str]]:
    """
    The C{le} texts of each series of a histogram, in the order exposed.
    """
    series: dict[str, list[str]] = defaultdict(list)
    for labels in re.findall(rf"^{family}_bucket{{(.*)}} ", text, re.MULTILINE):
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
        rest = ",".join(f"{k}={v}" for k, v in pairs if k != "le")
        series[rest].extend(v for k, v in pairs if k == "le")
    return list(series.values())


def typeLineName(entry: dict[str, Any]) -> str:
    """
    The name simpleclient 0.16 writes in an entry's C{# TYPE} line of the
    text format: a counter's family with C{_total} (TextFormat.write004).
    """
    family: str = entry["family"]
    return family + ("_total" if entry["type"] == "counter" else "")


def sampleNames(entry: dict[str, Any]) -> set[str]:
    """
    The sample names simpleclient 0.16 exports for an entry.
    """
    name: str = entry["family"]
    return {
        "counter": {name + "_total", name + "_created"},
        "histogram": {name + s for s in ("_bucket", "_count", "_sum", "_created")},
        "gauge": {name},
    }[entry["type"]]


class UpstreamMetricsTests(TestCase):
    timeout = 60

    async def startAll(self) -> None:
        base = startTarget(self, Targets(), "").rstrip("/")
        self.proxy = buildProxy(
            ProxySettings(http_port=0, agent_port=0), reactor, interface="127.0.0.1"
        )
        self.proxy.startService()
        self.addCleanup(self.proxy.stopService)
        agentPort = self.proxy.agentListener.portNumber
        paths = (
            PathConfig("app", "app", f"{base}/metrics"),
            PathConfig("gz", "gz", f"{base}/gzip"),
            PathConfig("missing", "missing", f"{base}/missing"),
            PathConfig("error", "error", f"{base}/error"),
            PathConfig("big", "big", f"{base}/big"),
            PathConfig("filtered", "filtered", f"{base}/metrics"),
            PathConfig("down", "down", f"http://127.0.0.1:{freePort()}/metrics"),
        )
        self.agent = await self.startAgent(
            AgentSettings(
                name="one",
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", agentPort),),
                path_configs=paths,
                filters=(MetricFilter("filtered", deny=("echo_metric",)),),
            )
        )
        # A consolidated path two agents serve.
        for name in ("c1", "c2"):
            await self.startAgent(
                AgentSettings(
                    name=name,
                    consolidated=True,
                    proxy_endpoints=(ProxyEndpoint("127.0.0.1", agentPort),),
                    path_configs=(PathConfig("group", "group", f"{base}/metrics"),),
                )
            )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = Agent(reactor, pool=self.pool)

    async def startAgent(self, settings: AgentSettings) -> AgentService:
        agent = buildAgent(settings, reactor)
        agent.startService()
        self.addCleanup(agent.stopService)
        await agent.whenConnected()
        return agent

    async def hostile(self, path: str, behaviour: Behaviour) -> HostileAgent:
        return await connectHostile(self, self.proxy.agentListener.portNumber, path, behaviour)

    async def get(self, path: str, gzipOK: bool = True) -> int | str:
        """
        Scrape C{/path} through the proxy: the status, or C{"broken"} for
        an answer broken off (before or after its head went out).
        """
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/{path}".encode()
        headers = Headers({b"Accept-Encoding": [b"gzip"]} if gzipOK else {})
        try:
            response = await self.http.request(b"GET", url, headers)
            await readBody(response)
        except (ResponseNeverReceived, ResponseFailed, PotentialDataLoss):
            return "broken"
        code: int = response.code
        return code

    async def driveEveryOutcome(self) -> None:
        def liar(agent: HostileAgent, request: ScrapeRequest) -> None:
            # Declares 5 body bytes, then sends more in a chunk.
            agent.send(
                Frame(
                    scrape_response=ScrapeResponse(
                        scrape_id=request.scrape_id, status=200, content_length=5, body=b"x"
                    )
                )
            )
            agent.send(Frame(scrape_chunk=ScrapeChunk(scrape_id=request.scrape_id, data=b"y" * 9)))

        def quitter(agent: HostileAgent, request: ScrapeRequest) -> None:
            # Starts an answer in several frames, then leaves.
            agent.send(
                Frame(scrape_response=ScrapeResponse(scrape_id=request.scrape_id, status=200))
            )
            assert agent.transport is not None
            agent.transport.loseConnection()

        await self.hostile("liar", liar)
        await self.hostile("quitter", quitter)
        codes = {
            path: await self.get(path, gzipOK)
            for path, gzipOK in [
                ("app", True),
                ("gz", True),
                ("gz", False),
                ("missing", True),
                ("error", True),
                ("big", True),
                ("filtered", True),
                ("down", True),
                ("group", True),
                ("nothing/here", True),
                ("", True),
                ("liar", True),
                ("quitter", True),
            ]
        }
        self.assertEqual(
            codes,
            {
                "app": 200,
                "gz": 200,
                "missing": 404,
                "error": 500,
                "big": 200,
                "filtered": 200,
                "down": 503,
                "group": 200,
                "nothing/here": 404,
                "": 404,
                "liar": "broken",
                "quitter": 502,
            },
        )

    def assertAsUpstream(self, process: str, registry: CollectorRegistry) -> None:
        text = scrape(registry)[1]
        types, samples = exposition(text)
        upstream = {entry["family"]: entry for entry in UPSTREAM[process]}
        for name, entry in upstream.items():
            self.assertEqual(
                (name, types.get(typeLineName(entry))), (name, entry["type"]), "# TYPE line"
            )
            self.assertTrue(samples[name], f"{name} has no samples")
            for labels in samples[name]:
                names = set(labels) - {"le"}
                self.assertEqual((name, names), (name, set(entry["labels"])))
                for label, values in entry.get("label_values", {}).items():
                    self.assertIn(labels[label], values, f"{name}{{{label}}}")
            if "le" in entry:
                for bounds in bucketBounds(text, name):
                    self.assertEqual((name, bounds), (name, entry["le"]))
            if entry["type"] != "gauge":
                # Written after the rest as a gauge family, as simpleclient does.
                self.assertEqual(types.get(name + "_created"), "gauge", name)
        # A counter's or histogram's _created is its own, not a family.
        created = {name + "_created" for name in samples}
        own = {name for name in samples if not PROCESS.match(name) and name not in created} - set(
            upstream
        )
        if process == "proxy":
            # PushProx's own series, under its names (docs/pushprox.md),
            # checked against PushProx in test_pushprox.
            self.assertEqual(own & PUSHPROX, PUSHPROX)
            own -= PUSHPROX
        self.assertEqual(own, EXTRAS[process])
        # No sample of promtwist's own is named as one of prometheus-proxy's.
        upstreamSamples = set().union(*(sampleNames(entry) for entry in upstream.values()))
        ownSamples = {
            sample.name
            for family in text_string_to_metric_families(text)
            if family.name in own
            for sample in family.samples
        }
        self.assertEqual(ownSamples & upstreamSamples, set())

    async def test_asUpstream(self) -> None:
        await self.startAll()
        await self.driveEveryOutcome()
        self.assertAsUpstream("proxy", self.proxy.metrics.registry)
        self.assertAsUpstream("agent", self.agent.metrics.registry)

    async def test_countedAsUpstream(self) -> None:
        """
        What the driven scrapes count, where promtwist once counted them
        otherwise.
        """
        await self.startAll()
        await self.driveEveryOutcome()
        proxy = self.proxy.metrics.registry
        text = scrape(proxy)[1]
        # A target's 404 is timed under its registered path.
        self.assertIsNotNone(
            proxy.get_sample_value(
                "proxy_scrape_request_latency_seconds_count",
                {"path": "missing", "outcome": "path_not_found"},
            )
        )
        # Requests no agent was asked for are counted, never timed.
        self.assertNotIn('path=""', text)
        self.assertNotIn("nothing/here", text)
        self.assertEqual(
            proxy.get_sample_value("proxy_scrape_requests_total", {"type": "invalid_path"}), 1
        )
        self.assertEqual(
            proxy.get_sample_value("proxy_scrape_requests_total", {"type": "missing_path"}), 1
        )
        # Each of the consolidated path's two agents counts.
        self.assertEqual(
            proxy.get_sample_value(
                "proxy_scrape_request_latency_seconds_count",
                {"path": "group", "outcome": "success"},
            ),
            2,
        )
        # The target's own gzip: the body's size, from its trailer when it
        # went to Prometheus as it was, counted when the proxy inflated it.
        gz = {"path": "gz", "encoding": "gzipped"}
        self.assertEqual(proxy.get_sample_value("proxy_scrape_response_bytes_count", gz), 2)
        self.assertEqual(
            proxy.get_sample_value("proxy_scrape_response_bytes_sum", gz),
            2 * len(gzip.decompress(Targets.gzipped)),
        )
        self.assertEqual(
            proxy.get_sample_value("proxy_chunk_validation_failures_total", {"stage": "chunk"}), 1
        )
        self.assertEqual(proxy.get_sample_value("proxy_chunked_transfers_abandoned_total"), 1)

        agent = self.agent.metrics.registry
        launch = {"launch_id": self.agent.factory.launchId}

        def requests(kind: str) -> float | None:
            return agent.get_sample_value(
                "agent_scrape_request_count_total", {**launch, "type": kind}
            )

        def results(kind: str) -> float | None:
            return agent.get_sample_value(
                "agent_scrape_result_count_total", {**launch, "type": kind}
            )

        # app, gz twice, big, filtered; missing and error answered non-2xx;
        # the unreachable target is not counted, but timed.
        self.assertEqual((requests("success"), requests("unsuccessful")), (5, 2))
        self.assertEqual(
            agent.get_sample_value(
                "agent_scrape_request_latency_seconds_count", {**launch, "agent_name": "one"}
            ),
            8,
        )
        # Every result once: gz (gzip from the target) twice in one frame,
        # big in several, the rest plain in one.
        self.assertEqual(
            (results("gzipped"), results("chunked"), results("non-gzipped")), (2, 1, 5)
        )
