"""
Proxy, agent and targets in one process over real loopback sockets.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import tracemalloc
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IListeningPort, IPullProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from promtwist.agent.build import buildAgent
from promtwist.config.settings import AgentSettings, PathConfig, ProxyEndpoint, ProxySettings
from promtwist.proxy.build import buildProxy
from promtwist.test.processes import freePort

BIG_BODY_BYTES = 50 * 1024 * 1024
PIECE = (b'big_metric{shard="0123456789"} 1.5\n' * 2000)[: 64 * 1024]


class Target(Resource):
    """
    Scrape targets: C{/metrics} (echoes the query), C{/gzip} (compressed by
    the target itself), C{/slow} (never answers) and C{/big} (50 MB, produced
    as it is read).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.gzipped = gzip.compress(b"gzipped_metric 1\n" * 5000)
        self.slow: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4")
        if request.path == b"/gzip":
            request.setHeader(b"Content-Encoding", b"gzip")
            return self.gzipped
        if request.path == b"/slow":
            self.slow.append(request)
            return NOT_DONE_YET
        if request.path == b"/stall":
            # Headers promise a body that never comes.
            request.setHeader(b"Content-Length", b"1000")
            request.write(b"")
            self.slow.append(request)
            return NOT_DONE_YET
        if request.path == b"/big":
            request.registerProducer(_BigBody(request), False)
            return NOT_DONE_YET
        query = request.uri.partition(b"?")[2]
        authorization = request.getHeader(b"Authorization") or b""
        return b'echo{query="%s",authorization="%s"} 1\n' % (query, authorization)


@implementer(IPullProducer)
class _BigBody:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.sent = 0

    def resumeProducing(self) -> None:
        if self.sent >= BIG_BODY_BYTES:
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.request.write(PIECE)
        self.sent += len(PIECE)

    def stopProducing(self) -> None:
        pass


class _Counter(Protocol):
    """
    Reads a body without keeping it: its size and digest only.
    """

    def __init__(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()
        self.done: Deferred[_Counter] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        self.digest.update(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(self)
        else:
            self.done.errback(reason)


class LoopbackTests(TestCase):
    timeout = 60

    async def startAll(
        self, proxySettings: ProxySettings | None = None, **agentOptions: Any
    ) -> None:
        self.target = Target()
        self.targetPort: IListeningPort = reactor.listenTCP(
            0,
            Site(self.target),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(self.targetPort.stopListening)
        targetAddress = self.targetPort.getHost()
        assert isinstance(targetAddress, IPv4Address)
        base = f"http://127.0.0.1:{targetAddress.port}"
        self.paths = (
            PathConfig("app", "app", f"{base}/metrics", {"team": "a", "n": "2"}),
            PathConfig("gz", "team/gz", f"{base}/gzip"),
            PathConfig("slow", "slow", f"{base}/slow"),
            PathConfig("stall", "stall", f"{base}/stall"),
            PathConfig("big", "big", f"{base}/big"),
            PathConfig("down", "down", f"http://127.0.0.1:{freePort()}/metrics"),
        )
        await self.startProxy(
            proxySettings or ProxySettings(http_port=0, agent_port=0, sd_enabled=True)
        )
        self.agent = buildAgent(
            AgentSettings(
                name="it-agent",
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", self.proxy.agentListener.portNumber),),
                path_configs=self.paths,
                **agentOptions,
            ),
            reactor,
        )
        self.agent.startService()
        self.addCleanup(lambda: self.agent.stopService() if self.agent.running else None)
        await self.agent.whenConnected()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = Agent(reactor, pool=self.pool)

    async def startProxy(self, settings: ProxySettings) -> None:
        self.proxy = buildProxy(settings, reactor, interface="127.0.0.1")
        self.proxy.startService()
        self.addCleanup(lambda: self.proxy.stopService() if self.proxy.running else None)

    async def get(self, path: str, **headers: str) -> tuple[IResponse, bytes]:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/{path}"
        response = await self.client.request(
            b"GET",
            url.encode("ascii"),
            Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()}),
        )
        return response, await readBody(response)

    async def test_scrape(self) -> None:
        await self.startAll()
        response, body = await self.get("app")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b'echo{query="",authorization=""} 1\n')
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Type"), [b"text/plain; version=0.0.4"]
        )

    async def test_queryForwarded(self) -> None:
        """
        Prometheus' C{params} reach the target, encoded as Prometheus sent them.
        """
        await self.startAll()
        _, body = await self.get("app?match%5B%5D=up&x=1")
        self.assertEqual(body, b'echo{query="match%5B%5D=up&x=1",authorization=""} 1\n')

    async def test_authorizationForwarded(self) -> None:
        """
        Prometheus' Authorization header reaches the target by default.
        """
        await self.startAll()
        _, body = await self.get("app", Authorization="Bearer abc")
        self.assertEqual(body, b'echo{query="",authorization="Bearer abc"} 1\n')

    async def test_authorizationNotForwarded(self) -> None:
        """
        With C{proxy.http.forwardAuthorization = false} it does not.
        """
        await self.startAll(ProxySettings(http_port=0, agent_port=0, forward_authorization=False))
        _, body = await self.get("app", Authorization="Bearer abc")
        self.assertEqual(body, b'echo{query="",authorization=""} 1\n')

    async def test_gzipByteIdentical(self) -> None:
        """
        A body the target gzipped reaches Prometheus byte for byte.
        """
        await self.startAll()
        response, body = await self.get("team/gz", Accept_Encoding="gzip")
        self.assertEqual(response.headers.getRawHeaders(b"Content-Encoding"), [b"gzip"])
        self.assertEqual(body, self.target.gzipped)

    async def test_gzipForClientWithout(self) -> None:
        """
        A client that does not accept gzip gets the body decompressed.
        """
        await self.startAll()
        response, body = await self.get("team/gz")
        self.assertIsNone(response.headers.getRawHeaders(b"Content-Encoding"))
        self.assertEqual(body, gzip.decompress(self.target.gzipped))

    async def test_bigBodyStreams(self) -> None:
        """
        50 MB stream through while the process (target, agent, proxy and
        client together) grows by a small fraction of that.
        """
        await self.startAll(max_content_length_mbytes=64)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/big"
        response = await self.client.request(b"GET", url.encode("ascii"))
        counter = _Counter()
        response.deliverBody(counter)
        await counter.done
        _, peak = tracemalloc.get_traced_memory()
        pieces = -(-BIG_BODY_BYTES // len(PIECE))
        self.assertEqual(counter.size, pieces * len(PIECE))
        expected = hashlib.sha256()
        for _ in range(pieces):
            expected.update(PIECE)
        self.assertEqual(counter.digest.hexdigest(), expected.hexdigest())
        self.assertLess(peak, BIG_BODY_BYTES / 20, f"peak traced memory {peak} bytes")

    async def test_bodyOverLimit(self) -> None:
        """
        A body that outgrows C{maxContentLengthMBytes} after streaming began
        is cut off, so Prometheus records a failed scrape rather than a
        truncated one.
        """
        await self.startAll(max_content_length_mbytes=1)
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/big"
        response = await self.client.request(b"GET", url.encode("ascii"))
        self.assertEqual(response.code, 200)
        counter = _Counter()
        response.deliverBody(counter)
        await self.assertFailure(counter.done, ResponseFailed)
        self.assertLessEqual(counter.size, 1024 * 1024 + 64 * 1024)

    async def test_targetDown(self) -> None:
        await self.startAll()
        response, body = await self.get("down")
        self.assertEqual(response.code, 503)
        self.assertIn(b"unreachable: connection refused", body)
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Type"), [b"text/plain; charset=utf-8"]
        )

    async def test_slowTarget(self) -> None:
        """
        A target slower than Prometheus' timeout yields 408 before Prometheus
        would give up.
        """
        await self.startAll()
        response, body = await self.get("slow", X_Prometheus_Scrape_Timeout_Seconds="1")
        self.assertEqual(response.code, 408)
        self.assertIn(b"did not answer within 0.9s", body)

    async def test_stallAfterHeaders(self) -> None:
        """
        A target that sends its headers and then nothing is reported as too
        slow within the deadline.
        """
        await self.startAll()
        response, body = await self.get("stall", X_Prometheus_Scrape_Timeout_Seconds="1")
        self.assertEqual(response.code, 408)
        self.assertIn(b"did not answer within 0.9s", body)

    async def test_unknownPath(self) -> None:
        await self.startAll()
        response, body = await self.get("nothing/here")
        self.assertEqual((response.code, body), (404, b"no agent serves /nothing/here\n"))

    async def test_agentDroppedMidScrape(self) -> None:
        """
        When the agent's link drops, its scrape in flight is answered 502 at
        once, not at the deadline.
        """
        await self.startAll()
        scraping = Deferred.fromCoroutine(self.get("slow"))
        while not self.target.slow:
            await deferLater(reactor, 0.01)
        connection = self.agent.factory.current
        assert connection is not None
        connection.transport.abortConnection()
        response, body = await scraping
        self.assertEqual(response.code, 502)
        self.assertIn(b"agent disconnected", body)

    async def test_proxyRestart(self) -> None:
        """
        After the proxy restarts, the agent reconnects and registers its
        paths again.
        """
        await self.startAll()
        agentPort = self.proxy.agentListener.portNumber
        await self.proxy.stopService()
        await self.startProxy(ProxySettings(http_port=0, agent_port=agentPort, sd_enabled=True))
        while not self.proxy.registry.lookup("app"):
            await deferLater(reactor, 0.05)
        response, body = await self.get("app")
        self.assertEqual((response.code, body), (200, b'echo{query="",authorization=""} 1\n'))

    async def test_concurrentScrapes(self) -> None:
        """
        200 scrapes at once over one agent each get their own answer.
        """
        await self.startAll()
        results = await gatherResults(
            [Deferred.fromCoroutine(self.get(f"app?i={i}")) for i in range(200)]
        )
        for i, (response, body) in enumerate(results):
            self.assertEqual(response.code, 200)
            self.assertEqual(body, b'echo{query="i=%d",authorization=""} 1\n' % i)

    async def test_discovery(self) -> None:
        await self.startAll()
        response, body = await self.get("discovery")
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Type"), [b"application/json; charset=utf-8"]
        )
        groups = json.loads(body)
        port = self.proxy.httpListener.portNumber
        self.assertEqual(
            [g["labels"]["__metrics_path__"] for g in groups],
            ["/app", "/big", "/down", "/slow", "/stall", "/team/gz"],
        )
        self.assertEqual({tuple(g["targets"]) for g in groups}, {(f"127.0.0.1:{port}",)})
        self.assertEqual(
            groups[0]["labels"],
            {
                "team": "a",
                "n": "2",
                "__metrics_path__": "/app",
                "agentName": "it-agent",
                "hostName": socket.gethostname(),
            },
        )
