"""
Tests for L{promtwist.proxy.consolidated}: one path, several agents.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from promtwist.agent.build import buildAgent
from promtwist.agent.service import AgentService
from promtwist.config.settings import AgentSettings, PathConfig, ProxyEndpoint, ProxySettings
from promtwist.proxy.build import buildProxy
from promtwist.proxy.consolidated import merge

OPENMETRICS = b"application/openmetrics-text; version=1.0.0; charset=utf-8"


class MergeTests(SynchronousTestCase):
    def test_eofOnceAtTheEnd(self) -> None:
        self.assertEqual(
            merge([b"a 1\n# EOF\n", b"b 2\n# EOF", b"c 3\n"]), b"a 1\nb 2\nc 3\n# EOF\n"
        )

    def test_textWithoutEOF(self) -> None:
        self.assertEqual(merge([b"a 1", b"", b"b 2\n\n"]), b"a 1\nb 2\n")

    def test_nothing(self) -> None:
        self.assertEqual(merge([]), b"")


class _Target(Resource):
    """
    C{/metrics} answers with this target's own sample; C{/slow} never answers.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Request) -> bytes | int:
        if request.path == b"/slow":
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", OPENMETRICS)
        return b'# TYPE up_from gauge\nup_from{agent="%s"} 1\n# EOF\n' % self.name


class ConsolidatedTests(TestCase):
    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.proxy = buildProxy(
            ProxySettings(http_port=0, agent_port=0), reactor, interface="127.0.0.1"
        )
        self.proxy.startService()
        self.addCleanup(self.proxy.stopService)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = Agent(reactor, pool=self.pool)

    def target(self, name: bytes) -> str:
        port: IListeningPort = reactor.listenTCP(0, Site(_Target(name)), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"http://127.0.0.1:{address.port}"

    async def agent(self, name: str, url: str) -> AgentService:
        agent = buildAgent(
            AgentSettings(
                name=name,
                consolidated=True,
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", self.proxy.agentListener.portNumber),),
                path_configs=(PathConfig("shared", "shared", url),),
            ),
            reactor,
        )
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        await agent.whenConnected()
        return agent

    async def get(self, **headers: str) -> tuple[IResponse, bytes]:
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/shared"
        response = await self.http.request(
            b"GET",
            url.encode(),
            Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()}),
        )
        return response, await readBody(response)

    async def test_merged(self) -> None:
        """
        Both agents' samples come back in one body, C{# EOF} once at the end,
        gzip on the link notwithstanding.
        """
        await self.agent("one", f"{self.target(b'one')}/metrics")
        await self.agent("two", f"{self.target(b'two')}/metrics")
        response, body = await self.get(Accept_Encoding="gzip")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [OPENMETRICS])
        lines = body.split(b"\n")
        self.assertIn(b'up_from{agent="one"} 1', lines)
        self.assertIn(b'up_from{agent="two"} 1', lines)
        self.assertEqual(body.count(b"# EOF"), 1)
        self.assertTrue(body.endswith(b"# EOF\n"))
        self.assertIsNone(response.headers.getRawHeaders(b"X-Promtwist-Missing-Agents"))

    async def test_oneAgentKilled(self) -> None:
        """
        With one of two agents gone, the path serves the other's samples.
        """
        await self.agent("one", f"{self.target(b'one')}/metrics")
        two = await self.agent("two", f"{self.target(b'two')}/metrics")
        connection = two.factory.current
        assert connection is not None
        # As a killed process would: the link is cut, nothing is said.
        connection.transport.abortConnection()
        await connection.whenLost()
        await two.stopService()
        while len(self.proxy.registry.lookup("shared")) != 1:
            await deferLater(reactor, 0.01)
        response, body = await self.get()
        self.assertEqual(response.code, 200)
        self.assertIn(b'up_from{agent="one"} 1', body)
        self.assertNotIn(b'agent="two"', body)

    async def test_slowAgentLeftOut(self) -> None:
        """
        An agent that is not done by the deadline is left out and named; the
        others' samples are served in time.
        """
        await self.agent("fast", f"{self.target(b'fast')}/metrics")
        await self.agent("stuck", f"{self.target(b'stuck')}/slow")
        response, body = await self.get(X_Prometheus_Scrape_Timeout_Seconds="1")
        self.assertEqual(response.code, 200)
        self.assertIn(b'up_from{agent="fast"} 1', body)
        (missing,) = response.headers.getRawHeaders(b"X-Promtwist-Missing-Agents")
        self.assertIn(b"stuck: ", missing)
        self.assertIn(b"did not answer within 0.9s", missing)

    async def test_allFail(self) -> None:
        """
        When no agent answers, Prometheus gets an error naming each reason.
        """
        await self.agent("a", "http://127.0.0.1:1/metrics")
        await self.agent("b", "http://127.0.0.1:1/metrics")
        response, body = await self.get()
        self.assertEqual(response.code, 503)
        self.assertIn(b"agent 'a': target http://127.0.0.1:1/metrics unreachable", body)
        self.assertIn(b"agent 'b': target", body)

    async def test_exclusiveCannotJoin(self) -> None:
        await self.agent("one", f"{self.target(b'one')}/metrics")
        exclusive = buildAgent(
            AgentSettings(
                name="loner",
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", self.proxy.agentListener.portNumber),),
                path_configs=(PathConfig("shared", "shared", f"{self.target(b'x')}/metrics"),),
            ),
            reactor,
        )
        exclusive.startService()
        self.addCleanup(exclusive.stopService)
        await exclusive.whenConnected()
        self.assertEqual([a.name for a in self.proxy.registry.lookup("shared")], ["one"])
        self.assertEqual(
            self.proxy.metrics.registry.get_sample_value(
                "proxy_rejections_total", {"reason": "path_mixed"}
            ),
            1,
        )
        _, body = await self.get()
        self.assertIn(b'up_from{agent="one"} 1', body)
