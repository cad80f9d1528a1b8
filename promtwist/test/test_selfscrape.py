"""
Tests for L{promtwist.proxy.selfscrape}: the proxy's own metrics at
C{/metrics} on the scrape port, as PushProx's proxy serves its own there;
deterministically behind the scrape port's server, and over loopback as
L{promtwist.proxy.build.buildProxy} composes the proxy.
"""

from __future__ import annotations

import gzip

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from promtwist.agent.build import buildAgent
from promtwist.config.settings import AgentSettings, PathConfig, ProxyEndpoint, ProxySettings
from promtwist.httputil import UNCACHEABLE
from promtwist.metrics import ProxyMetrics
from promtwist.proxy.answers import ScrapeRecord
from promtwist.proxy.build import buildProxy
from promtwist.proxy.pushmetrics import PushProxMetrics
from promtwist.proxy.registry import Registry
from promtwist.proxy.scrape import ScrapeHandler
from promtwist.proxy.selfscrape import SHADOWED_NOTE, SelfScrape
from promtwist.proxy.server import ProxyService
from promtwist.test.scrapeport import Response, connect, factory, parseResponse
from promtwist.test.test_framing import logText
from promtwist.test.test_relay import FakeLink

RETENTION = 60.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    The samples of a text exposition, by name and sorted labels.
    """
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests(path: str, code: str = "200") -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("pushprox_http_requests_total", (("code", code), ("path", path)))


class ScrapePort:
    """
    The scrape handler with a self-scrape, behind the scrape port's
    server, with a registry of fake agent links.
    """

    def __init__(self, selfScrape: bool = True) -> None:
        self.clock = Clock()
        self.registry = Registry(
            limits=ProxySettings(departed_path_retention_secs=RETENTION), clock=self.clock
        )
        self.metrics = ProxyMetrics("test", self.clock)
        counts = PushProxMetrics(self.metrics.registry, lambda: 2)
        self.selfScrape = (
            SelfScrape(self.metrics.registry, counts, self.clock) if selfScrape else None
        )
        self.handler = ScrapeHandler(
            ProxySettings(), self.registry, self.clock, None, self.selfScrape
        )
        self.records: list[ScrapeRecord] = []
        self.handler.tracker.observers.append(self.records.append)
        self.site = factory(self.handler, self.clock)

    def agent(self, path: str = "metrics") -> FakeLink:
        link = FakeLink("a1", agentId="a1")
        self.registry.addAgent(link)
        self.registry.registerPath(link, path, path, {})
        return link

    def request(
        self, target: bytes = b"/metrics", method: bytes = b"GET", **headers: str
    ) -> Response:
        return parseResponse(self.send(target, method, **headers).value())

    def send(self, target: bytes, method: bytes = b"GET", **headers: str) -> StringTransport:
        connection, transport = connect(self.site)
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: proxy"]
        lines += [f"{k.replace('_', '-')}: {v}".encode() for k, v in headers.items()]
        connection.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        return transport


class SelfScrapeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.port = ScrapePort()

    def test_served(self) -> None:
        """
        A GET /metrics no agent serves gets the proxy's registry in the
        text format, uncacheable, and is counted as PushProx's proxy counts
        its own, from a series there from the start; it is no scrape of an
        agent, so promtwist's scrape metrics do not count it.
        """
        first = self.port.request()
        self.assertEqual(first.status, 200)
        self.assertEqual(
            first.headers[b"content-type"], b"text/plain; version=0.0.4; charset=utf-8"
        )
        self.assertEqual(first.headers[b"cache-control"], UNCACHEABLE)
        self.assertNotIn(b"content-encoding", first.headers)
        exposed = samples(first.body.decode())
        self.assertEqual(exposed[requests("/metrics")], 0)
        self.assertEqual(exposed[("pushprox_proxy_clients", ())], 2)
        self.assertEqual(exposed[("proxy_connect_count_total", ())], 0)
        again = samples(self.port.request().body.decode())
        self.assertEqual(again[requests("/metrics")], 1)
        self.assertEqual(
            again[("pushprox_http_duration_seconds_count", (("path", "/metrics"),))], 1
        )
        self.assertEqual(self.port.records, [])

    def test_openMetricsAndGzip(self) -> None:
        """
        The exposition is negotiated as the metrics port negotiates it:
        OpenMetrics to a client that asks, gzipped to one that accepts it.
        """
        r = self.port.request(accept=OPENMETRICS, accept_encoding="gzip")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers[b"content-type"].startswith(b"application/openmetrics-text"))
        self.assertEqual(r.headers[b"content-encoding"], b"gzip")
        body = gzip.decompress(r.body).decode()
        self.assertTrue(body.endswith("# EOF\n"), body[-100:])
        self.assertIn('pushprox_http_requests_total{code="200",path="/metrics"} 0.0\n', body)

    def test_head(self) -> None:
        """
        HEAD gets the headers a GET would, and no body.
        """
        r = self.port.request(method=b"HEAD")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(r.headers[b"content-type"], b"text/plain; version=0.0.4; charset=utf-8")

    def test_onlyThePath(self) -> None:
        """
        Only /metrics is answered so, and not as a proxy_url target.
        """
        for target in (b"/metricsx", b"/metrics/x", b"http://node1.example:9100/metrics"):
            self.assertEqual(self.port.request(target).status, 404, target)

    def test_agentFirst(self) -> None:
        """
        An agent serving path C{metrics} answers its scrapes, and the proxy
        says once, naming it and the setting, that it no longer answers
        /metrics itself: once the agent is gone its scrapes fail, first
        with 503, then with a 404 that says why the proxy's metrics are not
        there instead.
        """
        link = self.port.agent()
        with capturedLogs() as events:
            for _ in range(2):
                transport = self.port.send(b"/metrics")
                link.head(b"app_up 1\n", last=True, content_type="text/plain", content_length=9)
                r = parseResponse(transport.value())
                self.assertEqual((r.status, r.body), (200, b"app_up 1\n"))
        self.assertEqual([call.path for call in link.calls], ["metrics", "metrics"])
        warnings = [e for e in events if "selfScrapeEnabled" in logText([e])]
        self.assertEqual(len(warnings), 1, logText(events))
        self.assertIn("by path 'metrics' of agent 'a1' on host,", logText(warnings))
        self.port.registry.removeAgent(link)
        gone = self.port.request()
        self.assertEqual(gone.status, 503)
        self.assertIn(b"disconnected", gone.body)
        self.port.clock.advance(RETENTION + 1)
        forgotten = self.port.request()
        self.assertEqual(forgotten.status, 404)
        self.assertEqual(forgotten.body, f"no agent serves /metrics{SHADOWED_NOTE}\n".encode())

    def test_departedUnscraped(self) -> None:
        """
        An agent path C{metrics} that left without being scraped is
        reported departed while it is kept, as any path is; after that the
        proxy answers /metrics again, since no job got the agent's metrics
        there.
        """
        link = self.port.agent()
        self.port.registry.removeAgent(link)
        self.assertEqual(self.port.request().status, 503)
        self.port.clock.advance(RETENTION + 1)
        self.assertIn(b"pushprox_proxy_clients", self.port.request().body)

    def test_otherAgentPaths(self) -> None:
        """
        Agents serving other paths shadow nothing.
        """
        link = self.port.agent("app")
        transport = self.port.send(b"/app")
        link.head(b"x 1\n", last=True, content_type="text/plain", content_length=4)
        self.assertEqual(parseResponse(transport.value()).body, b"x 1\n")
        self.assertIn(b"pushprox_proxy_clients", self.port.request().body)

    def test_stopping(self) -> None:
        """
        While the proxy drains, /metrics gets the drain's 503 as every
        scrape does.
        """
        self.port.handler.stopping = True
        r = self.port.request()
        self.assertEqual(r.status, 503)
        self.assertIn(b"shutting down", r.body)

    def test_without(self) -> None:
        """
        Without a self-scrape, /metrics is an agent path like any other:
        404 when none serves it, as before PushProx's /metrics was served.
        """
        r = ScrapePort(selfScrape=False).request()
        self.assertEqual((r.status, r.body), (404, b"no agent serves /metrics\n"))


class _Target(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.putChild(b"metrics", Data(b"app_up 1\n", "text/plain"))


class ComposedTests(TestCase):
    """
    The self-scrape as L{buildProxy} composes it, over loopback.
    """

    timeout = 30

    def setUp(self) -> None:
        port: IListeningPort = reactor.listenTCP(0, Site(_Target()), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.targetURL = f"http://127.0.0.1:{address.port}/metrics"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = Agent(reactor, pool=pool)

    def proxy(self, **settings: object) -> ProxyService:
        proxy = buildProxy(
            ProxySettings(http_port=0, agent_port=0, **settings),  # type: ignore[arg-type]
            reactor,
            interface="127.0.0.1",
        )
        proxy.startService()
        self.addCleanup(lambda: proxy.stopService() if proxy.running else None)
        return proxy

    async def get(
        self, proxy: ProxyService, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{proxy.httpListener.portNumber}/metrics".encode()
        response = await self.http.request(
            b"GET", url, Headers({k: [v] for k, v in (headers or {}).items()})
        )
        return response.code, await readBody(response)

    async def test_byDefault(self) -> None:
        """
        With PushProx support on, as by default, the scrape port serves the
        proxy's metrics at /metrics, PushProx's series among them, without
        the metrics port; an agent that then registers path C{metrics}
        answers it instead.
        """
        proxy = self.proxy()
        code, body = await self.get(proxy)
        self.assertEqual(code, 200)
        exposed = samples(body.decode())
        self.assertEqual(exposed[("pushprox_proxy_clients", ())], 0)
        self.assertEqual(exposed[requests("/poll", "408")], 0)
        self.assertEqual(exposed[("proxy_agent_map_size", ())], 0)
        agent = buildAgent(
            AgentSettings(
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", proxy.agentListener.portNumber),),
                path_configs=(PathConfig("app", "metrics", self.targetURL),),
                name="a1",
            ),
            reactor,
        )
        agent.startService()
        self.addCleanup(agent.stopService)
        await agent.whenConnected()
        self.assertEqual(await self.get(proxy), (200, b"app_up 1\n"))

    async def test_credentials(self) -> None:
        """
        The scrape side's credentials guard /metrics as they guard scrapes.
        """
        proxy = self.proxy(http_bearer_token="s3cret")
        self.assertEqual((await self.get(proxy))[0], 401)
        code, body = await self.get(proxy, {"Authorization": "Bearer s3cret"})
        self.assertEqual(code, 200)
        self.assertIn(b"pushprox_proxy_clients", body)

    async def test_turnedOff(self) -> None:
        """
        C{proxy.pushprox.selfScrapeEnabled = false}, or PushProx support
        off, leaves /metrics to agents alone.
        """
        for settings in ({"pushprox_self_scrape_enabled": False}, {"pushprox_enabled": False}):
            proxy = self.proxy(**settings)
            code, body = await self.get(proxy)
            self.assertEqual((code, body), (404, b"no agent serves /metrics\n"), settings)
            await proxy.stopService()
