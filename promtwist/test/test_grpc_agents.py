"""
Unmodified prometheus-proxy 4.0.1 agents against a real promtwist proxy.

The agents are L{promtwist.test.upstreamagent}'s emulation of upstream's
agent code over grpcio; the proxy is L{promtwist.proxy.build.buildProxy}
on loopback ports, its agent port taking upstream's HTTP/2 beside
promtwist's own link (grpc-common §1). Every scrape goes from an HTTP
client through the proxy's scrape port to the agent and its real target,
and is checked byte for byte against what the target served.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import time
from typing import Any

import grpc
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from promtwist.agent.build import buildAgent
from promtwist.agent.service import AgentService
from promtwist.config.settings import (
    AgentSettings,
    Identity,
    PathConfig,
    ProxyEndpoint,
    ProxySettings,
)
from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.proxy.build import buildProxy
from promtwist.proxy.server import ProxyService
from promtwist.test.certs import Certificates, certificates
from promtwist.test.helpers import eventually, sourceTreeFile, startTarget
from promtwist.test.nginx import startNginx
from promtwist.test.processes import Child, ProcessGroup, freePort, writeFile
from promtwist.test.upstreamagent import UpstreamAgent, UpstreamOptions, UpstreamPath, javaGzip

CHUNK = 32 * 1024

# Bodies of each of upstream's three ways of sending a result (§A.6 step 8):
# text (at most minGzipSizeBytes, 512 bytes), one gzipped message (gzip
# under 32 KiB), and chunks (gzip of at least three 32 KiB chunks: random
# digits do not compress much).
PLAIN = "# HELP café_total Cafés served, « quoted ».\nup 1\ncafé_total 3\n".encode()
GZIPPED = "".join(f'gzipped_metric{{i="{i}"}} {i}\n' for i in range(2000)).encode()
_random = random.Random(13)
CHUNKED = "".join(
    f'chunked_metric{{i="{i}"}} {_random.getrandbits(64)}\n' for i in range(9000)
).encode()
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# proxy_agents' kinds (docs/metrics.md).
KINDS = ("promtwist", "grpc", "pushprox")


class _Targets(Resource):
    """
    Scrape targets: each path a body, answered with L{CONTENT_TYPE}; what
    each request carried is noted for the tests. Two paths are special:
    C{held} answers only at L{release}, and C{secret} answers L{PLAIN}
    to Basic credentials C{scraper:p@ss} and challenges anyone else.
    """

    isLeaf = True

    def __init__(self, bodies: dict[str, bytes]) -> None:
        super().__init__()
        self.bodies = bodies
        self.requests: list[Request] = []
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.requests.append(request)
        name = request.path.decode().lstrip("/")
        if name == "held":
            self.held.append(request)
            request.notifyFinish().addErrback(lambda _: self.held.remove(request))
            return NOT_DONE_YET
        if name == "secret" and request.getUser() + b":" + request.getPassword() != b"scraper:p@ss":
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="targets"')
            return b"who are you?\n"
        body = self.bodies.get("plain" if name == "secret" else name)
        if body is None:
            request.setResponseCode(404)
            return b"no such target\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return body

    def release(self) -> None:
        """
        Answer every held request (whoever still waits for it).
        """
        while self.held:
            request = self.held.pop()
            request.write(b"late 1\n")
            request.finish()


def _gzippedSize(body: bytes) -> int:
    return len(javaGzip(body))


class _Fleet(TestCase):
    """
    A proxy on loopback, targets, and the agents a test starts; all torn
    down after it.
    """

    timeout = 60
    transportFilterDisabled = False

    def setUp(self) -> None:
        self.targets = _Targets({"plain": PLAIN, "gzipped": GZIPPED, "chunked": CHUNKED})
        self.targetBase = startTarget(self, self.targets, "").rstrip("/")
        self.addCleanup(self.targets.release)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = Agent(reactor, pool=self.pool)
        self.promtwistAgents: list[AgentService] = []

    def startProxy(self, **settings: Any) -> ProxyService:
        settings.setdefault("http_port", 0)
        settings.setdefault("agent_port", 0)
        proxy = self.proxy = buildProxy(ProxySettings(**settings), reactor, interface="127.0.0.1")
        proxy.startService()
        self.addCleanup(lambda: proxy.stopService() if proxy.running else None)
        return proxy

    def path(self, name: str, target: str | None = None, **labels: str) -> UpstreamPath:
        """
        An agent path C{/name} serving the target C{target} (C{name} by
        default).
        """
        return UpstreamPath(name, f"/{name}", f"{self.targetBase}/{target or name}", labels)

    def upstreamEndpoint(self) -> str:
        """
        Where upstream agents dial: the proxy's agent port.
        """
        return f"127.0.0.1:{self.proxy.agentListener.portNumber}"

    def upstream(self, *paths: UpstreamPath, **options: Any) -> UpstreamAgent:
        """
        An upstream agent of this proxy, started, stopped after the test.
        """
        options.setdefault("transportFilterDisabled", self.transportFilterDisabled)
        agent = UpstreamAgent(UpstreamOptions(self.upstreamEndpoint(), paths=paths, **options))
        agent.start()
        self.addCleanup(agent.stop)
        return agent

    async def connected(self, *paths: UpstreamPath, **options: Any) -> UpstreamAgent:
        """
        An upstream agent once it has registered all its paths.
        """
        agent = self.upstream(*paths, **options)
        await eventually(
            self,
            lambda: agent.connected >= 1 or bool(agent.connectFailures or agent.registerFailures),
            "the upstream agent registered",
            15,
        )
        self.assertEqual(
            (agent.connectFailures, agent.registerFailures),
            ([], []),
            "the upstream agent did not get through registration",
        )
        return agent

    async def refused(self, agent: UpstreamAgent) -> str:
        """
        Wait until C{agent}'s first connection fails in connect or
        registration, check that it never got through, and say why it
        failed.
        """
        await eventually(
            self,
            lambda: bool(agent.registerFailures or agent.connectFailures),
            "the refusal",
            15,
        )
        self.assertEqual(agent.connected, 0)
        return (agent.registerFailures + [details for _, details in agent.connectFailures])[0]

    async def failed(self, agent: UpstreamAgent) -> None:
        """
        Wait for C{agent}'s first failed connect.
        """
        await eventually(self, lambda: bool(agent.connectFailures), "a failed connect", 15)

    def promtwistAgent(
        self,
        name: str,
        path: str,
        target: str,
        consolidated: bool = False,
        transport: str = "native",
        port: int | None = None,
    ) -> Deferred[Any]:
        """
        A promtwist agent of this proxy (or of what listens on C{port})
        serving C{path} from C{target} over its C{transport}; fires once it
        is connected.
        """
        port = port or self.proxy.agentListener.portNumber
        agent = buildAgent(
            AgentSettings(
                name=name,
                consolidated=consolidated,
                transport=transport,
                proxy_endpoints=(ProxyEndpoint("127.0.0.1", port),),
                path_configs=(PathConfig(name, path, f"{self.targetBase}/{target}"),),
            ),
            reactor,
        )
        agent.startService()
        self.addCleanup(agent.stopService)
        self.promtwistAgents.append(agent)
        return agent.whenConnected()

    async def scrape(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Headers, bytes]:
        """
        C{GET /path} on the proxy's scrape port, without C{Accept-Encoding}
        so that the body comes as the proxy makes it.
        """
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/{path}".encode()
        response = await self.http.request(
            b"GET",
            url,
            Headers({k: [v] for k, v in (headers or {}).items()}),
        )
        return response.code, response.headers, await readBody(response)

    async def assertServes(self, path: str, body: bytes, times: int = 1) -> None:
        for _ in range(times):
            code, headers, received = await self.scrape(path)
            self.assertEqual((code, received), (200, body), f"/{path}")
            self.assertEqual(headers.getRawHeaders(b"content-type"), [CONTENT_TYPE])

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        value = self.proxy.metrics.registry.get_sample_value(name, labels or {})
        return None if value is None else float(value)


class DefaultModeTests(_Fleet):
    """
    The scenarios both of upstream's modes must pass, here with the
    transport filter on (connectAgent, the id in the headers).
    """

    async def test_scrapesByteForByte(self) -> None:
        """
        Text, one gzipped message and at least three chunks, each answered
        through the proxy with the target's bytes and content type.
        """
        self.startProxy()
        self.assertGreaterEqual(_gzippedSize(CHUNKED), 3 * CHUNK)
        self.assertLess(_gzippedSize(GZIPPED), CHUNK)
        self.assertGreater(len(GZIPPED), 512)
        agent = await self.connected(self.path("plain"), self.path("gzipped"), self.path("chunked"))
        await self.assertServes("plain", PLAIN, 2)
        await self.assertServes("gzipped", GZIPPED, 2)
        await self.assertServes("chunked", CHUNKED, 2)
        self.assertEqual(dict(agent.resultCounts), {"non-gzipped": 2, "gzipped": 2, "chunked": 2})
        self.assertEqual(agent.connected, 1)
        self.assertEqual(agent.streamEnds, [])

    async def test_registration(self) -> None:
        """
        registerPath's answers as upstream gives them: valid, the
        proxy-wide path count, ids from a proxy-global counter; pathMapSize
        counts every path; the assigned agent id is the proxy's, not
        upstream's guessable 1, 2, 3.
        """
        self.startProxy()
        first = await self.connected(self.path("plain"), self.path("gzipped"))
        second = await self.connected(self.path("chunked"))
        answers = first.registrations[0] + second.registrations[0]
        self.assertEqual([a.valid for a in answers], [True, True, True])
        self.assertEqual([a.path_count for a in answers], [1, 2, 3])
        self.assertEqual(len({a.path_id for a in answers}), 3)
        connection = first.connection
        assert connection is not None
        self.assertEqual(await deferToThread(connection.pathMapSize), 3)
        ids = first.agentIds + second.agentIds
        self.assertEqual(len(set(ids)), 2)
        for agentId in ids:
            # At least 128 bits (grpc-common §2): 22 characters of base64
            # or 32 of hex.
            self.assertGreaterEqual(len(agentId), 22, agentId)
            self.assertFalse(agentId.isdigit(), agentId)

    async def test_concurrentScrapes(self) -> None:
        """
        Thirty scrapes at once of the three kinds, on an agent that fetches
        four at a time so that its results cross on both streams: each
        answer is its own scrape's, byte for byte.
        """
        self.startProxy()
        agent = await self.connected(
            self.path("plain"), self.path("gzipped"), self.path("chunked"), maxConcurrentClients=4
        )
        expected = [("plain", PLAIN), ("gzipped", GZIPPED), ("chunked", CHUNKED)] * 10
        answers = await gatherResults(
            [Deferred.fromCoroutine(self.scrape(path)) for path, _ in expected]
        )
        self.assertEqual(
            [(code, body) for code, _, body in answers], [(200, body) for _, body in expected]
        )
        self.assertEqual(
            dict(agent.resultCounts), {"non-gzipped": 10, "gzipped": 10, "chunked": 10}
        )

    async def test_queryAcceptAuthorization(self) -> None:
        """
        The scrape's query string, Accept and Authorization reach the
        target as upstream's agent sends them.
        """
        self.startProxy()
        await self.connected(self.path("plain"))
        code, _, body = await self.scrape(
            "plain?module=http_2xx&target=a%20b",
            {"Accept": "application/openmetrics-text;version=1.0.0", "Authorization": "Bearer t0k"},
        )
        self.assertEqual((code, body), (200, PLAIN))
        request = self.targets.requests[-1]
        self.assertEqual(request.args, {b"module": [b"http_2xx"], b"target": [b"a b"]})
        self.assertEqual(
            request.requestHeaders.getRawHeaders(b"accept"),
            [b"application/openmetrics-text;version=1.0.0"],
        )
        self.assertEqual(request.requestHeaders.getRawHeaders(b"authorization"), [b"Bearer t0k"])

    async def test_targetBasicAuth(self) -> None:
        """
        Credentials in a path's URL answer the target's Basic challenge,
        as upstream's HTTP client does with them.
        """
        self.startProxy()
        url = self.targetBase.replace("//", "//scraper:p%40ss@") + "/secret"
        await self.connected(UpstreamPath("secret", "secret", url))
        await self.assertServes("secret", PLAIN)
        first, second = self.targets.requests[-2:]
        self.assertIsNone(first.requestHeaders.getRawHeaders(b"authorization"))
        self.assertEqual(
            second.requestHeaders.getRawHeaders(b"authorization"),
            [b"Basic " + base64.b64encode(b"scraper:p@ss")],
        )

    async def test_unregisterPath(self) -> None:
        """
        unregisterPath removes the path: it is no longer served.
        """
        self.startProxy()
        agent = await self.connected(self.path("plain"), self.path("gzipped"))
        connection = agent.connection
        assert connection is not None
        answer = await deferToThread(connection.unregisterPath, "/gzipped")
        self.assertTrue(answer.valid, answer.reason)
        code, _, _ = await self.scrape("gzipped")
        self.assertNotEqual(code, 200)
        await self.assertServes("plain", PLAIN)
        again = await deferToThread(connection.unregisterPath, "/gzipped")
        self.assertFalse(again.valid)
        self.assertIn("gzipped", again.reason)

    async def test_agentLeavesMidScrape(self) -> None:
        """
        A scrape in flight when its agent's connection ends is answered
        502 at once, not at the scrape's deadline.
        """
        self.startProxy()
        agent = await self.connected(self.path("held"))
        scrape = Deferred.fromCoroutine(self.scrape("held"))
        await eventually(self, lambda: bool(self.targets.held), "the target asked", 10)
        started = time.monotonic()
        stopped = agent.stop()
        code, _, body = await scrape
        self.assertEqual(code, 502, body)
        self.assertLess(time.monotonic() - started, 10)
        # Said once, and why.
        self.assertEqual(body.count(b"agent disconnected"), 1, body)
        self.targets.release()
        await stopped

    async def test_forgedResult(self) -> None:
        """
        A result for another agent's scrape, sent by an agent of another
        identity that was not asked (with its own agent id, then with the
        other's), is not taken: the scrape is answered by the agent it
        went to.
        """
        self.startProxy(identities=(Identity("team_a", "token-a"), Identity("team_b", "token-b")))
        victim = await self.connected(self.path("held"), agentToken="token-a")
        forger = await self.connected(self.path("plain"), agentToken="token-b")
        scrape = Deferred.fromCoroutine(self.scrape("held"))
        await eventually(self, lambda: bool(self.targets.held), "the target asked", 10)
        scrapeId = victim.received[-1].scrape_id
        connection = forger.connection
        assert connection is not None
        for agentId in (forger.agentIds[-1], victim.agentIds[-1]):
            connection.forge(
                pb.ScrapeResponse(
                    valid_response=True,
                    agent_id=agentId,
                    scrape_id=scrapeId,
                    status_code=200,
                    content_type="text/plain",
                    content_as_text="forged 1\n",
                )
            )
        await deferLater(reactor, 0.5)
        self.assertFalse(scrape.called, "a forged answer was taken")
        self.targets.release()
        code, _, body = await scrape
        self.assertEqual((code, body), (200, b"late 1\n"))

    async def test_lateAnswer(self) -> None:
        """
        A scrape past Prometheus' timeout is answered 503 then; the agent's
        answer that comes later is dropped, and costs the agent nothing.
        """
        self.startProxy()
        agent = await self.connected(self.path("held"), self.path("plain"))
        code, _, _ = await self.scrape("held", {"X-Prometheus-Scrape-Timeout-Seconds": "1"})
        self.assertEqual(code, 503)
        self.targets.release()
        await eventually(self, lambda: agent.resultCounts["non-gzipped"] == 1, "the late answer")
        await self.assertServes("plain", PLAIN, 2)
        self.assertEqual((agent.connected, agent.streamEnds), (1, []))

    async def test_targetFailures(self) -> None:
        """
        The target's own status, and an unreachable target, come back as
        upstream's agent reports them: that status, and 503.
        """
        self.startProxy()
        await self.connected(
            self.path("missing"), UpstreamPath("gone", "gone", "http://127.0.0.1:1/metrics")
        )
        code, _, _ = await self.scrape("missing")
        self.assertEqual(code, 404)
        code, _, _ = await self.scrape("gone")
        self.assertEqual(code, 503)

    async def test_gzipBomb(self) -> None:
        """
        An agent allowed a bigger body than the proxy's
        maxUnzippedContentSizeMBytes (10 MiB) sends it gzipped, a few
        kilobytes: the proxy stops unzipping at its limit and answers 413;
        the agent's other paths are unharmed.
        """
        self.targets.bodies["huge"] = b"a 1\n" * (3 * 1024 * 1024)  # 12 MiB
        self.assertLess(_gzippedSize(self.targets.bodies["huge"]), CHUNK)
        self.startProxy()
        await self.connected(self.path("huge"), self.path("plain"), maxContentLengthMBytes=20)
        code, _, _ = await self.scrape("huge")
        self.assertEqual(code, 413)
        await self.assertServes("plain", PLAIN)

    async def test_oversizedChunkedResult(self) -> None:
        """
        Chunks adding up to more than maxZippedContentSizeMBytes (5 MiB)
        fail their scrape with 502 naming the setting; the chunks that
        follow are dropped, and the agent's other scrapes are unharmed.
        """
        # Hex digits: a 12 MiB body whose gzip is above 5 MiB.
        self.targets.bodies["huge"] = random.Random(5).randbytes(6 * 1024 * 1024).hex().encode()
        self.startProxy()
        await self.connected(self.path("huge"), self.path("chunked"), maxContentLengthMBytes=20)
        code, _, body = await self.scrape("huge")
        self.assertEqual(code, 502, body)
        self.assertIn(b"maxZippedContentSizeMBytes", body)
        await self.assertServes("chunked", CHUNKED, 2)

    async def test_reconnect(self) -> None:
        """
        When the proxy goes and comes back on the same ports, the agent
        connects again with a new agent id, registers its paths again and
        serves.
        """
        ports = {"http_port": freePort(), "agent_port": freePort()}
        first = self.startProxy(**ports)
        agent = await self.connected(self.path("plain"), reconnectPauseSecs=0.5)
        await self.assertServes("plain", PLAIN)
        await first.stopService()
        await eventually(self, lambda: bool(agent.streamEnds), "the agent saw the proxy go", 10)
        self.startProxy(**ports)
        await eventually(self, lambda: agent.connected == 2, "the agent back", 15)
        await self.assertServes("plain", PLAIN)
        self.assertEqual(len(set(agent.agentIds)), 2)

    async def test_token(self) -> None:
        """
        The right token serves; a wrong or missing one is refused on the
        first call with upstream's UNAUTHENTICATED "Missing or invalid
        agent token", and the agent registers nothing.
        """
        self.startProxy(agent_token="s3cret")
        await self.connected(self.path("plain"), agentToken="s3cret")
        wrong = self.upstream(self.path("gzipped"), agentToken="guess")
        missing = self.upstream(self.path("chunked"))
        for agent in (wrong, missing):
            await self.failed(agent)
            self.assertEqual(
                agent.connectFailures[0],
                (grpc.StatusCode.UNAUTHENTICATED, "Missing or invalid agent token"),
            )
            self.assertEqual(agent.connected, 0)
        await self.assertServes("plain", PLAIN)
        for path in ("gzipped", "chunked"):
            code, _, _ = await self.scrape(path)
            self.assertEqual(code, 404, path)

    async def test_identityPaths(self) -> None:
        """
        A proxy.auth identity's token admits only its paths: another path
        is refused valid=false naming the identity and the path.
        """
        self.startProxy(identities=(Identity("team_a", "token-a", ("plain", "gz*")),))
        await self.connected(self.path("plain"), self.path("gzipped"), agentToken="token-a")
        refused = self.upstream(self.path("chunked"), agentToken="token-a")
        await eventually(self, lambda: bool(refused.registerFailures), "the refusal", 15)
        answer = refused.registrations[0][-1]
        self.assertFalse(answer.valid)
        self.assertIn("team_a", answer.reason)
        self.assertIn("chunked", answer.reason)
        await self.assertServes("plain", PLAIN)
        await self.assertServes("gzipped", GZIPPED)

    async def test_checksumMismatch(self) -> None:
        """
        A chunk whose running CRC32 is wrong fails its scrape with 502 and
        a reason naming the checksum; the agent's other scrapes and its
        connection are unharmed, and upstream's counter says which stage.
        """
        self.startProxy()
        liar = await self.connected(self.path("chunked"), self.path("plain"), failureOnChunk=2)
        honest = await self.connected(self.path("gzipped"), self.path("other", "chunked"))
        code, _, body = await self.scrape("chunked")
        self.assertEqual(code, 502)
        self.assertIn(b"checksum", body.lower())
        await self.assertServes("plain", PLAIN)
        await self.assertServes("other", CHUNKED)
        await self.assertServes("gzipped", GZIPPED)
        self.assertEqual(
            self.metric("proxy_chunk_validation_failures_total", {"stage": "chunk"}), 1.0
        )
        self.assertEqual((liar.connected, liar.streamEnds), (1, []))
        self.assertEqual((honest.connected, honest.streamEnds), (1, []))

    async def test_heartbeatsStop(self) -> None:
        """
        An agent that heart-beats stays; one that stops is evicted after
        maxAgentInactivitySecs (and not before), its paths with it, and
        its request stream ended.
        """
        self.startProxy(max_agent_inactivity_secs=3, stale_agent_check_pause_secs=0.25)
        beating = await self.connected(self.path("plain"), heartbeatMaxInactivitySecs=1)
        silent = await self.connected(
            self.path("gzipped"), heartbeatMaxInactivitySecs=1, reconnect=False
        )
        silent.heartbeating = False
        stopped = time.monotonic()
        await eventually(self, lambda: not self.proxy.registry.lookup("gzipped"), "evicted", 10)
        # Its last message was at most one heartbeat check (0.5 s) and one
        # heartbeat (1 s) before it stopped.
        self.assertGreater(time.monotonic() - stopped, 3 - 1.5 - 0.1)
        await eventually(self, lambda: bool(silent.streamEnds), "the agent told", 10)
        self.assertEqual(self.metric("proxy_eviction_count_total"), 1.0)
        code, _, _ = await self.scrape("gzipped")
        self.assertNotEqual(code, 200)
        await self.assertServes("plain", PLAIN)
        self.assertGreaterEqual(beating.heartbeats["valid"], 2)
        self.assertEqual((beating.connected, beating.streamEnds), (1, []))

    async def test_spoofedAgentId(self) -> None:
        """
        An agent that sends another agent's id, with a credential of its
        own, is refused; the other agent is unharmed.
        """
        self.startProxy(identities=(Identity("team_a", "token-a"), Identity("team_b", "token-b")))
        victim = await self.connected(self.path("plain"), agentToken="token-a")
        spoofer = self.upstream(
            self.path("gzipped"), agentToken="token-b", agentIdOverride=victim.agentIds[0]
        )
        await self.refused(spoofer)
        code, _, _ = await self.scrape("gzipped")
        self.assertEqual(code, 404)
        await self.assertServes("plain", PLAIN)
        self.assertEqual((victim.connected, victim.streamEnds), (1, []))


class TransportFilterDisabledTests(DefaultModeTests):
    """
    The same with the transport filter off
    (connectAgentWithTransportFilterDisabled, the id in the body), as
    agents behind an L7 proxy run.
    """

    transportFilterDisabled = True


class ThroughNginxTests(TransportFilterDisabledTests):
    """
    The same through a real nginx in front of the agent port, configured
    with examples/nginx/promtwist-grpc.conf (upstream's nginx/ example),
    the agents in the transport-filter-disabled mode that example needs.
    """

    def startProxy(self, **settings: Any) -> ProxyService:
        proxy = super().startProxy(**settings)
        if not hasattr(self, "nginx"):
            self.nginxPort = freePort()
            self.startNginx(self.nginxPort, proxy.agentListener.portNumber)
        return proxy

    def upstreamEndpoint(self) -> str:
        return f"127.0.0.1:{self.nginxPort}"

    # What the example says to write for TLS on the agent port, or None.
    tlsToProxy: dict[str, str] | None = None

    def startNginx(self, port: int, agentPort: int) -> None:
        with open(sourceTreeFile("examples/nginx/promtwist-grpc.conf")) as f:
            example = f.read()
        # The example's ports, and nothing else, moved to this test's.
        self.assertEqual(example.count("listen 50440 http2;"), 1)
        self.assertEqual(example.count("        grpc_pass grpc://127.0.0.1:50051;"), 1)
        example = example.replace("listen 50440 http2;", f"listen 127.0.0.1:{port} http2;")
        passing = f"grpc_pass grpc://127.0.0.1:{agentPort};"
        if self.tlsToProxy is not None:
            # The commented lines, with the test's CA and the name in its
            # server certificate.
            lines = [
                "grpc_pass grpcs://127.0.0.1:50051;",
                "grpc_ssl_verify on;",
                "grpc_ssl_trusted_certificate /etc/nginx/promtwist-ca.pem;",
                "grpc_ssl_name <a name the proxy's certificate holds>;",
            ]
            for line in lines:
                self.assertIn(f"        #   {line}\n", example)
            passing = "\n        ".join(lines)
            for old, new in {"50051": str(agentPort), **self.tlsToProxy}.items():
                passing = passing.replace(old, new)
        example = example.replace("grpc_pass grpc://127.0.0.1:50051;", passing)
        server = writeFile(os.path.abspath(str(self.mktemp())) + ".conf", example)
        self.nginx = startNginx(self, f"    include {server};")

    async def connected(self, *paths: UpstreamPath, **options: Any) -> UpstreamAgent:
        await self.listening(self.nginxPort)
        return await super().connected(*paths, **options)

    async def test_tlsToTheProxy(self) -> None:
        """
        nginx to a TLS agent port as the example's comment says, the
        proxy's certificate checked: scrapes go through.
        """
        certs = certificates(self)
        self.tlsToProxy = {
            "/etc/nginx/promtwist-ca.pem": _absolute(certs.ca),
            "<a name the proxy's certificate holds>": "localhost",
        }
        self.startProxy(
            tls_cert_chain_file_path=certs.server.cert,
            tls_private_key_file_path=certs.server.key,
        )
        await self.connected(self.path("plain"), self.path("chunked"))
        await self.assertServes("plain", PLAIN)
        await self.assertServes("chunked", CHUNKED)

    async def test_wrongModeThroughNginx(self) -> None:
        """
        An agent left in the default mode behind nginx (upstream's issue
        #81: nginx carries its calls on several connections) is refused
        with a reason that names the setting to change; an agent in the
        right mode beside it serves.
        """
        self.startProxy()
        await self.connected(self.path("plain"))
        await self.listening(self.nginxPort)
        wrong = self.upstream(self.path("gzipped"), transportFilterDisabled=False)
        reason = await self.refused(wrong)
        self.assertIn("transportFilterDisabled", reason)
        await self.assertServes("plain", PLAIN)

    async def test_mixedFleetThroughNginx(self) -> None:
        """
        Through the same nginx, a promtwist agent over gRPC
        (C{agent.transport = grpc}) and an upstream agent share a
        consolidated path, and the promtwist agent serves a chunked-size
        body of its own byte for byte.
        """
        self.startProxy()
        self.targets.bodies["from_grpc"] = b'fleet_member{kind="grpc"} 1\n'
        self.targets.bodies["from_promtwist"] = b'fleet_member{kind="promtwist"} 1\n'
        await self.connected(self.path("shared", "from_grpc"), consolidated=True)
        await self.promtwistAgent(
            "pt", "shared", "from_promtwist", True, transport="grpc", port=self.nginxPort
        )
        await self.promtwistAgent("pt-big", "big", "chunked", transport="grpc", port=self.nginxPort)
        code, _, body = await self.scrape("shared")
        self.assertEqual(code, 200)
        self.assertEqual(
            _lines(body),
            _lines(self.targets.bodies["from_grpc"] + self.targets.bodies["from_promtwist"]),
        )
        await self.assertServes("big", CHUNKED, 2)

    async def listening(self, port: int) -> None:
        """
        Wait until nginx accepts connections on C{port}.
        """
        for _ in range(100):
            try:
                protocol = await connectProtocol(
                    TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol()
                )
            except ConnectError:
                await deferLater(reactor, 0.05)
                continue
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            return
        self.fail(f"nginx does not listen on {port}:\n{self.nginx.describe()}")


class BothModesTests(_Fleet):
    async def test_bothModesAtOnce(self) -> None:
        """
        One proxy serves agents of either mode at once (grpc-common §2).
        """
        self.startProxy()
        await self.connected(self.path("plain"), transportFilterDisabled=False)
        await self.connected(self.path("gzipped"), transportFilterDisabled=True)
        await self.assertServes("plain", PLAIN)
        await self.assertServes("gzipped", GZIPPED)


class TLSTests(_Fleet):
    """
    The agent port under TLS, with certificates made for the test.
    """

    def setUp(self) -> None:
        super().setUp()
        self.certs: Certificates = certificates(self)

    def tlsProxy(self, mutual: bool, **settings: Any) -> ProxyService:
        return self.startProxy(
            tls_cert_chain_file_path=self.certs.server.cert,
            tls_private_key_file_path=self.certs.server.key,
            tls_trust_cert_collection_file_path=self.certs.ca if mutual else "",
            **settings,
        )

    async def test_tls(self) -> None:
        """
        TLS on the agent port (ALPN h2): an agent trusting the proxy's CA
        serves; one trusting another CA does not connect.
        """
        self.tlsProxy(mutual=False)
        await self.connected(
            self.path("plain"),
            self.path("chunked"),
            trustCertCollectionFilePath=self.certs.ca,
            overrideAuthority="localhost",
        )
        await self.assertServes("plain", PLAIN)
        await self.assertServes("chunked", CHUNKED)
        untrusting = self.upstream(
            self.path("gzipped"), trustCertCollectionFilePath=self.certs.otherCa
        )
        await self.failed(untrusting)
        self.assertEqual(untrusting.connectFailures[0][0], grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(untrusting.connected, 0)
        code, _, _ = await self.scrape("gzipped")
        self.assertEqual(code, 404)

    async def test_mutualTLS(self) -> None:
        """
        mTLS: a client certificate from the trusted CA serves; none, or one
        from another CA, does not connect.
        """
        self.tlsProxy(mutual=True)
        await self.connected(
            self.path("plain"),
            self.path("gzipped"),
            trustCertCollectionFilePath=self.certs.ca,
            certChainFilePath=self.certs.client.cert,
            privateKeyFilePath=self.certs.client.key,
        )
        await self.assertServes("plain", PLAIN)
        await self.assertServes("gzipped", GZIPPED)
        without = self.upstream(self.path("chunked"), trustCertCollectionFilePath=self.certs.ca)
        stranger = self.upstream(
            self.path("chunked"),
            trustCertCollectionFilePath=self.certs.ca,
            certChainFilePath=self.certs.otherClient.cert,
            privateKeyFilePath=self.certs.otherClient.key,
        )
        for agent in (without, stranger):
            await self.failed(agent)
            self.assertEqual(agent.connected, 0)
        code, _, _ = await self.scrape("chunked")
        self.assertEqual(code, 404)

    async def test_certificateIdentity(self) -> None:
        """
        mTLS with proxy.auth: the client certificate's common name is the
        identity, and admits only its paths.
        """
        self.tlsProxy(mutual=True, identities=(Identity("team_a", paths=("plain",)),))
        client = {
            "trustCertCollectionFilePath": self.certs.ca,
            "certChainFilePath": self.certs.client.cert,
            "privateKeyFilePath": self.certs.client.key,
        }
        await self.connected(self.path("plain"), **client)
        refused = self.upstream(self.path("gzipped"), **client)
        await eventually(self, lambda: bool(refused.registerFailures), "the refusal", 15)
        answer = refused.registrations[0][-1]
        self.assertFalse(answer.valid)
        self.assertIn("team_a", answer.reason)
        await self.assertServes("plain", PLAIN)


def _absolute(path: str) -> str:
    # nginx reads relative paths from its prefix, not the test's directory.
    return os.path.abspath(path)


def _lines(body: bytes) -> set[bytes]:
    return {line for line in body.split(b"\n") if line}


class MixedFleetTests(_Fleet):
    """
    gRPC agents and promtwist agents in one registry.
    """

    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.targets.bodies.update(
            {
                "from_grpc": b'fleet_member{kind="grpc"} 1\n',
                "from_promtwist": b'fleet_member{kind="promtwist"} 1\n',
            }
        )

    async def test_consolidated(self) -> None:
        """
        A consolidated path served by a gRPC agent and a promtwist agent
        answers both bodies; either leaving leaves the other's.
        """
        self.startProxy()
        grpcAgent = await self.connected(self.path("shared", "from_grpc"), consolidated=True)
        await self.promtwistAgent("pt", "shared", "from_promtwist", consolidated=True)
        code, _, body = await self.scrape("shared")
        self.assertEqual(code, 200)
        self.assertEqual(
            _lines(body),
            _lines(self.targets.bodies["from_grpc"] + self.targets.bodies["from_promtwist"]),
        )
        await grpcAgent.stop()
        await eventually(
            self, lambda: len(self.proxy.registry.lookup("shared")) == 1, "the gRPC agent gone"
        )
        await self.assertServes("shared", self.targets.bodies["from_promtwist"])

    async def test_discoveryAndCounts(self) -> None:
        """
        A consolidated path of both kinds is discovered once, with the
        labels of its first registrant (the gRPC agent's) and both agents'
        names and hosts; proxy_agents counts each kind.
        """
        self.startProxy(sd_enabled=True)
        grpcAgent = await self.connected(
            self.path("shared", "from_grpc", env="prod"), consolidated=True, agentName="upstream-a"
        )
        await self.promtwistAgent("pt", "shared", "from_promtwist", consolidated=True)
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/discovery"
        response = await treq.get(url, pool=self.pool)
        (group,) = await treq.json_content(response)
        labels = group["labels"]
        self.assertEqual((labels["env"], labels["__metrics_path__"]), ("prod", "/shared"))
        self.assertEqual(sorted(labels["agentName"].split(", ")), ["pt", "upstream-a"])
        self.assertIn(socket.gethostname(), labels["hostName"].split(", "))
        counts = {kind: self.metric("proxy_agents", {"kind": kind}) for kind in KINDS}
        self.assertEqual(counts, {"promtwist": 1.0, "grpc": 1.0, "pushprox": 0.0})
        await grpcAgent.stop()
        await eventually(
            self, lambda: self.metric("proxy_agents", {"kind": "grpc"}) == 0.0, "the count down"
        )
        self.assertEqual(self.metric("proxy_agents", {"kind": "promtwist"}), 1.0)

    async def test_grpcDisabled(self) -> None:
        """
        With proxy.agent.grpcEnabled off, a gRPC agent does not connect;
        promtwist agents on the same port serve as ever.
        """
        self.startProxy(agent_grpc_enabled=False)
        await self.promtwistAgent("pt", "owned", "from_promtwist")
        refused = self.upstream(self.path("shared", "from_grpc"))
        await self.failed(refused)
        self.assertEqual(refused.connected, 0)
        self.assertEqual(refused.connectFailures[0][0], grpc.StatusCode.UNAVAILABLE)
        await self.assertServes("owned", self.targets.bodies["from_promtwist"])
        code, _, _ = await self.scrape("shared")
        self.assertEqual(code, 404)

    async def test_maxAgents(self) -> None:
        """
        proxy.internal.maxAgents counts both kinds: past it, a gRPC agent
        is refused with a reason naming the setting, and those connected
        keep serving.
        """
        self.startProxy(max_agents=2)
        await self.promtwistAgent("pt", "owned", "from_promtwist")
        await self.connected(self.path("shared", "from_grpc"))
        extra = self.upstream(self.path("plain"))
        reason = await self.refused(extra)
        self.assertIn("maxAgents", reason)
        await self.assertServes("owned", self.targets.bodies["from_promtwist"])
        await self.assertServes("shared", self.targets.bodies["from_grpc"])

    async def test_exclusiveRefusedIntoConsolidated(self) -> None:
        """
        A non-consolidated gRPC agent cannot take a path held consolidated
        by a promtwist agent.
        """
        self.startProxy()
        await self.promtwistAgent("pt", "shared", "from_promtwist", consolidated=True)
        intruder = self.upstream(self.path("shared", "from_grpc"))
        await eventually(self, lambda: bool(intruder.registrations), "its answer", 15)
        self.assertFalse(intruder.registrations[0][0].valid)
        await self.assertServes("shared", self.targets.bodies["from_promtwist"])

    async def test_ownershipPromtwistHolds(self) -> None:
        """
        A gRPC agent claiming a path a promtwist agent holds is a standby
        (told valid, as upstream's agent knows nothing else); the holder
        keeps serving until it leaves, then the gRPC agent serves at once.
        """
        self.startProxy()
        await self.promtwistAgent("pt", "owned", "from_promtwist")
        standby = await self.connected(self.path("owned", "from_grpc"))
        answer = standby.registrations[0][0]
        self.assertTrue(answer.valid)
        self.assertIn("standby", answer.reason)
        await self.assertServes("owned", self.targets.bodies["from_promtwist"], 2)
        await self.promtwistAgents[0].stopService()
        await self.assertServes("owned", self.targets.bodies["from_grpc"], 2)
        self.assertEqual((standby.connected, standby.streamEnds), (1, []))

    async def test_ownershipGrpcHolds(self) -> None:
        """
        The other way round: a promtwist agent waits behind a gRPC holder
        and takes over when the holder's connection ends.
        """
        self.startProxy()
        holder = await self.connected(self.path("owned", "from_grpc"))
        await self.promtwistAgent("pt", "owned", "from_promtwist")
        await self.assertServes("owned", self.targets.bodies["from_grpc"], 2)
        before = self.proxy.registry.lookup("owned")
        await holder.stop()
        await eventually(
            self,
            lambda: self.proxy.registry.lookup("owned") not in ((), before),
            "the standby promoted",
        )
        await self.assertServes("owned", self.targets.bodies["from_promtwist"], 2)

    def workdir(self) -> str:
        workdir = os.path.abspath(str(self.mktemp()))
        os.makedirs(workdir)
        return workdir

    async def test_prometheusScrapesTheFleet(self) -> None:
        """
        A real Prometheus scrapes a consolidated path (a gRPC and a
        promtwist agent) and an owned path (gRPC holder, promtwist
        standby) through the proxy, and sees every member.
        """
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.assertTrue(os.access(binary, os.X_OK), "the real Prometheus server is needed")
        self.startProxy()
        await self.connected(self.path("shared", "from_grpc"), consolidated=True)
        await self.promtwistAgent("pt-shared", "shared", "from_promtwist", consolidated=True)
        await self.connected(self.path("owned", "chunked"))
        await self.promtwistAgent("pt-owned", "owned", "plain")
        group = ProcessGroup(self)
        workdir = self.workdir()
        port = freePort()
        proxy = f"127.0.0.1:{self.proxy.httpListener.portNumber}"
        config = json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": name,
                        "metrics_path": f"/{name}",
                        "static_configs": [{"targets": [proxy]}],
                    }
                    for name in ("shared", "owned")
                ],
            }
        )
        prometheus = Child(
            self,
            "prometheus",
            [
                binary,
                f"--config.file={writeFile(os.path.join(workdir, 'prometheus.yml'), config)}",
                f"--storage.tsdb.path={os.path.join(workdir, 'tsdb')}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            workdir,
        )
        group.children.append(prometheus)
        prometheus.start()

        async def query(expression: str) -> list[dict[str, Any]] | None:
            response = await treq.get(
                f"http://127.0.0.1:{port}/api/v1/query",
                params={"query": expression},
                timeout=2,
                pool=self.pool,
            )
            document = await treq.json_content(response)
            result: list[dict[str, Any]] = document["data"]["result"]
            return result or None

        async def everyone() -> bool:
            members = await query("fleet_member")
            up = await query("up == 1")
            chunked = await query("count(chunked_metric)")
            return bool(
                members
                and {m["metric"]["kind"] for m in members} == {"grpc", "promtwist"}
                and up
                and {u["metric"]["job"] for u in up} == {"shared", "owned"}
                and chunked
                and chunked[0]["value"][1] == "9000"
            )

        await group.eventually(everyone, "Prometheus sees the whole fleet", 45, interval=0.5)


def _holdMessages(
    port: int, token: str, sizes: list[int]
) -> tuple[list[bytes | None], list[socket.socket]]:
    """
    The reviewer's C{hold_auth.py}, bounded: on one new connection each,
    begin a C{writeResponsesToProxy} message of each of C{sizes} bytes and
    send all of it but its last byte; return each call's C{grpc-message}
    if the proxy ended it within a few seconds, else L{None}, and the
    connections, still open (on an error, they are closed). Blocking: run
    in a thread.
    """
    import struct

    import h2.config
    import h2.connection
    import h2.events

    sockets: list[socket.socket] = []
    answers: list[bytes | None] = []
    try:
        for size in sizes:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sockets.append(sock)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            streamId = conn.get_next_available_stream_id()
            conn.send_headers(
                streamId,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", "/ProxyService/writeResponsesToProxy"),
                    (":authority", "proxy"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                    ("agent-token", token),
                ],
            )
            payload = struct.pack(">BI", 0, size) + b"\0" * (size - 1)
            sent = 0
            answer: bytes | None = None
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and answer is None:
                room = min(conn.local_flow_control_window(streamId), len(payload) - sent)
                room = min(room, conn.max_outbound_frame_size)
                if room > 0:
                    conn.send_data(streamId, payload[sent : sent + room])
                    sent += room
                sock.sendall(conn.data_to_send())
                if room > 0 and sent < len(payload):
                    continue
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    break
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        answer = dict(event.headers or []).get(b"grpc-message", answer)
                sock.sendall(conn.data_to_send())
                if sent == len(payload) and answer is None:
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
            answers.append(answer)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return answers, sockets


class UnfinishedMessagesTests(_Fleet):
    """
    What one identity's unfinished gRPC messages may hold of the proxy, on
    loopback with a real grpcio agent beside the holder.
    """

    async def test_budgetPerIdentity(self) -> None:
        """
        A token holder that leaves a large message unfinished on each of
        several connections is refused, past its share of
        C{proxy.internal.maxGrpcMessageBufferMBytes}, RESOURCE_EXHAUSTED
        naming the setting, while an honest agent of the same token goes
        on being scraped beside what it holds.
        """
        self.startProxy(agent_token="s3cret", max_grpc_message_buffer_mbytes=8)
        await self.connected(self.path("plain"), agentToken="s3cret")
        port = self.proxy.agentListener.portNumber
        held = deferToThread(_holdMessages, port, "s3cret", [3 * 1024 * 1024] * 2)
        (first, second), sockets = await held
        for sock in sockets:
            self.addCleanup(sock.close)
        self.assertIsNone(first)
        assert second is not None
        self.assertIn(b"proxy.internal.maxGrpcMessageBufferMBytes", second)
        self.assertIn(b"unfinished gRPC messages", second)
        await self.assertServes("plain", PLAIN)
