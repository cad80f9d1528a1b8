"""
Unmodified PushProx clients on a promtwist proxy, each program run as its
users run it: the proxy under C{twistd}, the real C{pushprox-client} built
from C{peers/} (L{promtwist.test.pushproxpeer}), a real Prometheus scraping
through C{proxy_url}, and nginx as the front end that gives the clients
their tokens.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from promtwist.test.helpers import RawClient
from promtwist.test.nginx import startNginx
from promtwist.test.processes import Child, Cluster, freePort, hoconString, writeFile
from promtwist.test.pushproxpeer import pushproxClient
from promtwist.test.test_endtoend import PROMETHEUS_MISSING, prometheusBinary

# The client's own retry wait in these tests (--proxy.retry.*): it polls
# again this soon after an error.
RETRY = 0.2


class PushProxSetup:
    """
    A promtwist proxy (with an agent the cluster brings, serving nothing
    the tests use), a target, and PushProx clients polling the proxy.
    """

    def __init__(
        self, case: TestCase, proxyArgs: list[str] | None = None, agentArgs: list[str] | None = None
    ) -> None:
        self.case = case
        self.cluster = Cluster(
            case, paths={"unused": "metrics"}, proxyArgs=proxyArgs or [], agentArgs=agentArgs or []
        )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        case.addCleanup(self.pool.closeCachedConnections)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.cluster.scrapePort)
        # Prometheus' proxy_url: absolute-URI requests to the proxy.
        self.viaProxy = HTTPClient(ProxyAgent(endpoint, reactor, self.pool))

    @property
    def proxyURL(self) -> str:
        return f"http://127.0.0.1:{self.cluster.scrapePort}/"

    def client(self, name: str, fqdn: str, proxyURL: str | None = None) -> Child:
        child = pushproxClient(
            self.case,
            name,
            proxyURL or self.proxyURL,
            fqdn,
            self.cluster.workdir,
            freePort(),
            RETRY,
        )
        self.cluster.children.append(child)
        return child

    async def listed(self) -> list[str]:
        response = await self.cluster.http.get(self.cluster.url("clients"), timeout=2)
        groups = json.loads(await treq.content(response))
        return [target for group in groups for target in group["targets"]]

    async def scrape(self, fqdn: str, deadline: float = 2.0) -> tuple[int, bytes, float]:
        """
        Scrape the target as C{fqdn:port} through the proxy as Prometheus
        would: (status, body, seconds taken).
        """
        started = time.monotonic()
        response = await self.viaProxy.get(
            f"http://{fqdn}:{self.cluster.target.portNumber}/metrics",
            headers=Headers({"X-Prometheus-Scrape-Timeout-Seconds": [f"{deadline:g}"]}),
            timeout=deadline + 5,
        )
        body = await treq.content(response)
        return response.code, body, time.monotonic() - started


class PushProxClientTests(TestCase):
    timeout = 120

    async def test_killedClient(self) -> None:
        """
        A client killed while its poll is held: the next scrape of its
        FQDN fails within its deadline saying no poll came (it was not
        handed to the dead poll), and the restarted client serves again
        within its retry interval.
        """
        setup = PushProxSetup(self)
        cluster = setup.cluster
        await cluster.start()
        client = setup.client("pushprox-client", "127.0.0.1")
        client.start()

        async def served() -> bool:
            status, body, _ = await setup.scrape("127.0.0.1")
            return status == 200 and b"promtwist_e2e_sample" in body

        await cluster.eventually(served, "a scrape served by the pushprox-client", 30)
        self.assertEqual(await setup.listed(), ["127.0.0.1"])
        await client.kill()
        status, body, took = await setup.scrape("127.0.0.1", deadline=2)
        self.assertEqual(status, 503, body)
        self.assertIn(b"no poll from PushProx client '127.0.0.1'", body)
        self.assertIn(b"its last poll was closed by the client", body)
        self.assertLess(took, 2.5)
        # Still listed: it may come back within the grace.
        self.assertEqual(await setup.listed(), ["127.0.0.1"])
        client.start()
        restarted = time.monotonic()
        await cluster.eventually(served, "a scrape served by the restarted client", 30)
        # Its first poll comes at once; the scrape before it may have waited.
        self.assertLess(time.monotonic() - restarted, 10)

    async def test_basicAuthorizationInProxyURL(self) -> None:
        """
        A client whose C{--proxy-url} has user info (Go sends it as Basic
        C{Authorization}, as a front end's C{auth_basic} asks for) polls
        and is scraped where clients need no token, as on PushProx.
        """
        setup = PushProxSetup(self)
        cluster = setup.cluster
        await cluster.start()
        setup.client(
            "pushprox-client", "127.0.0.1", f"http://u:p@127.0.0.1:{cluster.scrapePort}/"
        ).start()

        async def served() -> bool:
            status, body, _ = await setup.scrape("127.0.0.1")
            return status == 200 and b"promtwist_e2e_sample" in body

        await cluster.eventually(served, "a scrape served by the client sending Basic", 30)

    async def test_hostileInputs(self) -> None:
        """
        Malformed polls and pushes, an oversized push and a push for a
        scrape nobody waits for each get their own bounded 4xx, and the
        real client goes on serving meanwhile.
        """
        setup = PushProxSetup(self)
        cluster = setup.cluster
        await cluster.start()
        setup.client("pushprox-client", "127.0.0.1").start()

        async def served() -> bool:
            status, body, _ = await setup.scrape("127.0.0.1")
            return status == 200 and b"promtwist_e2e_sample" in body

        await cluster.eventually(served, "a scrape served by the pushprox-client", 30)
        scrapeId = b"0123abcd-0000-4000-8000-0123456789ab"
        cases = [
            (b"POST /poll", b"bad host!", b"400"),
            (b"POST /poll", b"x" * 5000, b"413"),
            (b"POST /push", b"<!DOCTYPE html><html></html>\r\n\r\n", b"400"),
            (b"POST /push", b"HTTP/1.1 200 OK\r\nId: " + scrapeId + b"\r\n\r\nx", b"404"),
            (b"POST /push", b"x" * (11 * 1024 * 1024), b"413"),
        ]
        for request, body, status in cases:
            client = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", cluster.scrapePort), RawClient()
            )
            client.send(
                b"%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (request, len(body))
            )
            if status != b"413":
                client.send(body)
            await cluster.eventually(
                partial(_answered, client), f"an answer to {request!r}", 10, 0.05
            )
            self.assertTrue(client.received.startswith(b"HTTP/1.1 " + status), client.received)
            assert client.transport is not None
            client.transport.loseConnection()
            await client.closed
        self.assertTrue(await served())

    async def test_unknownFQDN(self) -> None:
        """
        A scrape of a host no PushProx client (and no agent) serves gets
        404 with the reason at once.
        """
        setup = PushProxSetup(self)
        await setup.cluster.start()
        status, body, took = await setup.scrape("nobody.example")
        self.assertEqual(status, 404, body)
        self.assertIn(b"nobody.example", body)
        self.assertLess(took, 1.5)


class PrometheusThroughPushProxTests(TestCase):
    timeout = 120

    async def test_prometheusScrapesPushProxClient(self) -> None:
        """
        A PushProx user's Prometheus configuration, unchanged but for the
        proxy_url, scrapes a target served by the real pushprox-client
        through promtwist: up == 1, samples stored, the instance the
        target's address. Its job for the proxy's own metrics, on the
        port PushProx's proxy serves them on, scrapes promtwist's: up == 1
        and PushProx's client count stored.
        """
        binary = prometheusBinary()
        if binary is None:
            self.fail(PROMETHEUS_MISSING)
        setup = PushProxSetup(self)
        cluster = setup.cluster
        await cluster.start()
        setup.client("pushprox-client", "127.0.0.1").start()
        target = f"127.0.0.1:{cluster.target.portNumber}"
        promPort = freePort()
        config = writeFile(
            os.path.join(cluster.workdir, "prometheus.yml"),
            f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: pushprox
    proxy_url: {setup.proxyURL}
    static_configs:
      - targets: ['{target}']
  - job_name: pushprox-proxy
    static_configs:
      - targets: ['127.0.0.1:{cluster.scrapePort}']
""",
        )
        prometheus = Child(
            self,
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(cluster.workdir, 'tsdb')}",
                f"--web.listen-address=127.0.0.1:{promPort}",
            ],
            cluster.workdir,
        )
        cluster.children.append(prometheus)
        prometheus.start()
        api = f"http://127.0.0.1:{promPort}/api/v1"
        state: dict[str, Any] = {}

        async def query(expression: str) -> list[dict[str, Any]]:
            response = await cluster.http.get(
                f"{api}/query", params={"query": expression}, timeout=2
            )
            document = await treq.json_content(response)
            result: list[dict[str, Any]] = document["data"]["result"]
            return result

        async def stored() -> bool:
            up = await query('up{job=~"pushprox|pushprox-proxy"}')
            samples = await query('promtwist_e2e_sample{job="pushprox"}')
            clients = await query('pushprox_proxy_clients{job="pushprox-proxy"}')
            state.update(up=up, samples=samples, clients=clients)
            return (
                sorted((s["metric"]["job"], s["value"][1]) for s in up)
                == [("pushprox", "1"), ("pushprox-proxy", "1")]
                and [(s["metric"]["instance"], s["value"][1]) for s in samples] == [(target, "42")]
                and [s["value"][1] for s in clients] == ["1"]
            )

        try:
            await cluster.eventually(stored, "the PushProx target up with samples", 60, 0.5)
        except self.failureException as e:
            raise self.failureException(f"{e}\n{json.dumps(state)[:4000]}") from None


class SelfScrapeTests(TestCase):
    timeout = 120

    async def test_selfScrape(self) -> None:
        """
        GET /metrics on the scrape port, as PushProx users scrape their
        proxy, gives the proxy's own metrics, PushProx's series among
        them, with the polling client counted; once an agent serves path
        C{metrics}, it answers, and the proxy's log says why.
        """
        setup = PushProxSetup(self)
        cluster = setup.cluster
        await cluster.start()
        setup.client("pushprox-client", "127.0.0.1").start()
        seen: list[bytes] = []

        async def clientCounted() -> bool:
            code, body = await cluster.get("metrics")
            seen[:] = [body]
            return code == 200 and b"\npushprox_proxy_clients 1.0\n" in body

        await cluster.eventually(clientCounted, "the polling client in /metrics", 30)
        # A scrape of /metrics counts after its answer: the next one shows it.
        await clientCounted()
        for series in (
            b'pushprox_http_requests_total{code="200",path="/poll"}',
            b'pushprox_http_requests_total{code="200",path="/metrics"}',
            b'pushprox_http_duration_seconds_bucket{le="0.005",path="/metrics"}',
            b"proxy_agent_map_size 1.0",
            b"process_resident_memory_bytes",
        ):
            self.assertIn(series, seen[0])
        config = writeFile(
            os.path.join(cluster.workdir, "metrics-agent.conf"),
            cluster.agentConf({"metrics": "metrics"}),
        )
        cluster.agentChild("metrics-agent", "metrics-agent", config).start()
        await cluster.eventually(
            partial(cluster.servedOnce, "metrics"), "/metrics served by the agent", 30
        )
        await cluster.eventually(
            partial(_logged, cluster.proxy, "proxy.pushprox.selfScrapeEnabled = false"),
            "the proxy's warning that the agent's path shadows its metrics",
            10,
        )


class FrontEndTests(TestCase):
    """
    PushProx clients behind nginx, which adds each one's token, as
    docs/pushprox.md sets it up.
    """

    timeout = 120

    def nginx(self, proxyPort: int, tokens: dict[int, str]) -> Child:
        return startNginx(
            self,
            "\n".join(
                f"""\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{proxyPort};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
            proxy_read_timeout 120s;
            client_max_body_size 11m;
        }}
    }}"""
                for port, token in tokens.items()
            ),
        )

    def authConfig(self) -> str:
        """
        A proxy config with two PushProx client identities and the
        cluster's agent's, and a short client grace.
        """
        return writeFile(
            os.path.abspath(self.mktemp() + "-auth.conf"),
            "proxy.auth = [\n"
            f"  {{ name = {hoconString('a')}, token = {hoconString('tok-a')} }},\n"
            f"  {{ name = {hoconString('b')}, token = {hoconString('tok-b')} }},\n"
            "  { name = agent, token = agent-token }\n"
            "]\n"
            "proxy.pushprox.clientGraceSecs = 2\n",
        )

    async def test_standby(self) -> None:
        """
        Two clients with their own identities claim one FQDN: the first
        serves it, the second waits; killed, the first hands the FQDN to
        the second once its grace ends, and scrapes go on.
        """
        auth = self.authConfig()
        setup = PushProxSetup(self, ["-c", auth], ["--agent_token", "agent-token"])
        cluster = setup.cluster
        await cluster.start()
        frontA, frontB = freePort(), freePort()
        nginx = self.nginx(cluster.scrapePort, {frontA: "tok-a", frontB: "tok-b"})
        cluster.children.append(nginx)
        first = setup.client("client-a", "127.0.0.1", f"http://127.0.0.1:{frontA}/")
        first.start()

        async def served() -> bool:
            status, body, _ = await setup.scrape("127.0.0.1")
            return status == 200 and b"promtwist_e2e_sample" in body

        await cluster.eventually(served, "a scrape served by client a", 30)
        second = setup.client("client-b", "127.0.0.1", f"http://127.0.0.1:{frontB}/")
        second.start()
        await cluster.eventually(
            lambda: _logged(
                cluster.proxy, "127.0.0.1 (identity 'b', from 127.0.0.1) registered as standby"
            ),
            "client b registered as standby",
            30,
        )
        self.assertEqual(await setup.listed(), ["127.0.0.1"])
        await first.kill()
        await cluster.eventually(served, "a scrape served by client b after a left", 30)
        self.assertIn(
            "PushProx client 127.0.0.1 (identity 'b', from 127.0.0.1) is now holder",
            cluster.proxy.log(),
        )

    async def test_largePush(self) -> None:
        """
        A push over nginx's default body limit of 1 MiB goes through the
        documented front end: a 2 MiB answer reaches Prometheus whole.
        """
        setup = PushProxSetup(self, ["-c", self.authConfig()], ["--agent_token", "agent-token"])
        cluster = setup.cluster
        await cluster.start()
        front = freePort()
        cluster.children.append(self.nginx(cluster.scrapePort, {front: "tok-a"}))
        big = Data(b"promtwist_e2e_big 1\n" * (2**21 // 20), "text/plain; version=0.0.4")
        root = Resource()
        root.putChild(b"metrics", big)
        site = Site(root)
        site.log = lambda request: None  # type: ignore[method-assign]
        targetPort = freePort()
        listening = reactor.listenTCP(
            targetPort,
            site,  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(listening.stopListening)
        setup.client("client-a", "127.0.0.1", f"http://127.0.0.1:{front}/").start()
        state: dict[str, Any] = {}

        async def served() -> bool:
            response = await setup.viaProxy.get(
                f"http://127.0.0.1:{targetPort}/metrics",
                headers=Headers({"X-Prometheus-Scrape-Timeout-Seconds": ["5"]}),
                timeout=10,
            )
            body = await treq.content(response)
            state.update(status=response.code, body=body[:300])
            return bool(response.code == 200 and body == big.data)

        try:
            await cluster.eventually(served, "a 2 MiB answer pushed through nginx", 30)
        except self.failureException as e:
            raise self.failureException(f"{e}\nlast answer: {state}") from None


async def _answered(client: RawClient) -> bool:
    return b"\r\n\r\n" in client.received


async def _logged(child: Child, text: str) -> bool:
    return text in child.log()
