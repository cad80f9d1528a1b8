"""
promtwist's own agent link carried by one gRPC call
(C{agent.transport = grpc}): a real agent (built from its settings) and a
real proxy in one process over loopback, the proxy's link method on a
promtwist listener of the test's own (plain or TLS with ALPN h2).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tracemalloc
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from promtwist.agent.build import buildAgent
from promtwist.agent.grpclink import GrpcLinkEndpoint
from promtwist.agent.service import AgentService
from promtwist.config.settings import (
    AgentSettings,
    Identity,
    PathConfig,
    ProxyEndpoint,
    ProxySettings,
)
from promtwist.grpc.connection import GrpcServerFactory, GrpcServerProtocol
from promtwist.grpc.tunnel import CallTransport
from promtwist.listen import Listener
from promtwist.proxy.build import buildProxy
from promtwist.proxy.grpclink import linkMethod
from promtwist.proxy.link import AgentLink
from promtwist.proxy.server import ProxyService
from promtwist.test.certs import Issued, certificates
from promtwist.test.helpers import eventually, startTarget
from promtwist.test.processes import Child, freePort, writeFile
from promtwist.tls import agentPortTLS

MiB = 1024 * 1024
BIG_BYTES = 24 * MiB
_PIECE = (b'big_metric{shard="0123456789"} 1.5\n' * 2000)[: 64 * 1024]


class _Big(Resource):
    """
    C{BIG_BYTES} of metrics, written as the client takes them.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4")
        sent = 0

        class Pull:
            def resumeProducing(self) -> None:
                nonlocal sent
                if sent >= BIG_BYTES:
                    request.unregisterProducer()
                    request.finish()
                    return
                request.write(_PIECE)
                sent += len(_PIECE)

            def stopProducing(self) -> None:
                pass

        request.registerProducer(Pull(), False)
        return NOT_DONE_YET


class _Lost(Protocol):
    """
    A peer that notes why its connection was lost.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reason = reason
        self.lost.callback(None)


class _Recording(GrpcServerFactory):
    """
    The test's gRPC server: records its connections.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.accepted: list[GrpcServerProtocol] = []

    def buildProtocol(self, addr: object) -> GrpcServerProtocol:
        protocol = super().buildProtocol(addr)
        self.accepted.append(protocol)
        return protocol


class _LinkCase(TestCase):
    """
    A proxy with its link method on a listener of the test's, and agents
    on the gRPC transport.
    """

    timeout = 60

    def setUp(self) -> None:
        self.certs = certificates(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = Agent(reactor, pool=self.pool)

    def logged(self, fragment: str, level: LogLevel | None = None) -> list[str]:
        return [
            text
            for event in self.events
            if (level is None or event.get("log_level") == level)
            and fragment in (text := formatEvent(event))
        ]

    def startProxy(self, **settings: Any) -> ProxyService:
        """
        A proxy, and a TLS listener when C{settings} give C{proxy.tls}
        files, serving its link method.
        """
        proxySettings = ProxySettings(http_port=0, agent_port=0, **settings)
        proxy = buildProxy(proxySettings, reactor, interface="127.0.0.1")
        proxy.startService()
        self.addCleanup(lambda: proxy.stopService() if proxy.running else None)
        self.server = _Recording([linkMethod(proxy.linkFactory, reactor)], reactor=reactor)
        listener = Listener(
            reactor,
            0,
            self.server,
            "127.0.0.1",
            agentPortTLS(proxySettings),
            protocols=(b"h2",),
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        self.grpcPort = listener.portNumber
        return proxy

    def startAgent(
        self, path: str = "m", url: str = "", port: int | None = None, **settings: Any
    ) -> AgentService:
        agent = buildAgent(
            AgentSettings(
                **{
                    "name": f"agent-{path}",
                    "transport": "grpc",
                    "proxy_endpoints": (ProxyEndpoint("localhost", port or self.grpcPort),),
                    "path_configs": (PathConfig(path, path, url or startTarget(self)),),
                    **settings,
                },
            ),
            reactor,
        )
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        return agent

    def tlsSettings(self, trust: bool = False) -> dict[str, Any]:
        return {
            "tls_cert_chain_file_path": self.certs.server.cert,
            "tls_private_key_file_path": self.certs.server.key,
            "tls_trust_cert_collection_file_path": self.certs.ca if trust else "",
        }

    def agentTLS(self, client: Issued | None = None) -> dict[str, Any]:
        return {
            "tls_trust_cert_collection_file_path": self.certs.ca,
            "tls_cert_chain_file_path": client.cert if client else "",
            "tls_private_key_file_path": client.key if client else "",
        }

    async def get(self, proxy: ProxyService, path: str = "m") -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{proxy.httpListener.portNumber}/{path}".encode()
        response = await self.http.request(b"GET", url)
        return response.code, await readBody(response)

    def linkOf(self, proxy: ProxyService, path: str = "m") -> AgentLink:
        (link,) = proxy.registry.lookup(path)
        assert isinstance(link, AgentLink)
        return link

    async def linkFailure(self, fragment: str) -> str:
        def failures() -> list[str]:
            return [
                line for line in self.logged("no link to proxy", LogLevel.warn) if fragment in line
            ]

        await eventually(self, lambda: bool(failures()), f"a dial failure with {fragment!r}")
        return failures()[0]


class LinkOverGrpcTests(_LinkCase):
    async def test_scrape(self) -> None:
        """
        The agent's link crosses inside a gRPC call: the proxy's link for
        it runs on the call, and scrapes are answered through it.
        """
        proxy = self.startProxy()
        agent = self.startAgent()
        await agent.whenConnected()
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))
        link = self.linkOf(proxy)
        self.assertIsInstance(link.transport, CallTransport)
        self.assertEqual(link.name, "agent-m")
        self.assertEqual(len(self.server.accepted), 1)

    async def test_tls(self) -> None:
        """
        Over TLS, the agent offers ALPN h2 and checks the proxy's
        certificate; the link sees a TLS transport.
        """
        proxy = self.startProxy(**self.tlsSettings())
        agent = self.startAgent(**self.agentTLS())
        await agent.whenConnected()
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))
        self.assertTrue(ISSLTransport.providedBy(self.linkOf(proxy).transport))

    async def test_mutualTLSIdentity(self) -> None:
        """
        The client certificate of the HTTP/2 connection names the link's
        identity, whose path globs apply, as on the native port.
        """
        proxy = self.startProxy(
            identities=(Identity("team_a", "", ("m",)),), **self.tlsSettings(trust=True)
        )
        allowed = self.startAgent(**self.agentTLS(self.certs.client))
        await allowed.whenConnected()
        self.assertEqual(self.linkOf(proxy).identity.name, "team_a")
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))
        refused = self.startAgent("other", **self.agentTLS(self.certs.client))
        await refused.whenConnected()
        self.assertEqual(proxy.registry.lookup("other"), ())
        self.assertEqual(
            proxy.metrics.registry.get_sample_value(
                "proxy_rejections_total", {"reason": "path_unauthorized"}
            ),
            1,
        )

    async def test_withoutClientCertificate(self) -> None:
        """
        A proxy that requires client certificates refuses an agent without
        one in the TLS handshake, and the agent says why.
        """
        self.startProxy(**self.tlsSettings(trust=True))
        self.startAgent(**self.agentTLS())
        await self.linkFailure("the proxy requires a client certificate")

    async def test_tokenRefused(self) -> None:
        """
        The native handshake runs inside the call: a wrong token gets the
        proxy's Reject, which the agent logs.
        """
        self.startProxy(agent_token="right")
        self.startAgent(agent_token="wrong")
        line = await self.linkFailure("the proxy rejected this agent")
        self.assertIn("invalid agent token", line.lower())

    async def test_largeBody(self) -> None:
        """
        A body of many frames streams through the call within the windows:
        whole and in order, while the process holds a small part of it.
        """
        proxy = self.startProxy()
        agent = self.startAgent(url=startTarget(self, _Big()), max_content_length_mbytes=64)
        await agent.whenConnected()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        code, body = await self.get(proxy)
        _, peak = tracemalloc.get_traced_memory()
        self.assertEqual(code, 200)
        pieces = -(-BIG_BYTES // len(_PIECE))
        self.assertEqual(len(body), pieces * len(_PIECE))
        self.assertEqual(
            hashlib.sha256(body).hexdigest(), hashlib.sha256(_PIECE * pieces).hexdigest()
        )
        # The body as read by the test itself, plus a few windows.
        self.assertLess(peak, 2 * len(body) + 16 * MiB, f"peak traced memory {peak} bytes")

    async def test_reconnect(self) -> None:
        """
        When the HTTP/2 connection is lost the proxy forgets the link, and
        the agent dials a new call and serves again.
        """
        proxy = self.startProxy()
        agent = self.startAgent(reconnect_pause_secs=0.1)
        first = await agent.whenConnected()
        old = self.linkOf(proxy)
        (connection,) = self.server.accepted
        assert connection.transport is not None
        connection.transport.abortConnection()
        await eventually(self, lambda: not old.isOpen(), "the proxy's link is closed")
        await eventually(
            self,
            lambda: len(self.server.accepted) == 2 and bool(proxy.registry.lookup("m")),
            "the agent reconnected",
            seconds=15,
        )
        self.assertIsNot(await agent.whenConnected(), first)
        self.assertIsNot(self.linkOf(proxy), old)
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))

    async def test_noLinkMethod(self) -> None:
        """
        A gRPC server without the link's method: the agent logs the
        server's status.
        """
        self.startProxy()
        self.server.methods.clear()
        self.startAgent()
        line = await self.linkFailure("UNIMPLEMENTED")
        self.assertIn("unknown method /promtwist.Link/Connect", line)

    async def test_nativeTLSPortWithoutH2(self) -> None:
        """
        An agent on the gRPC transport dialling a TLS port that does not
        agree to h2 (an agent port with gRPC turned off) says so.
        """
        proxy = self.startProxy(agent_grpc_enabled=False, **self.tlsSettings())
        self.startAgent(port=proxy.agentListener.portNumber, **self.agentTLS())
        await self.linkFailure("answered no protocol to TLS ALPN h2")

    async def test_hostilePeer(self) -> None:
        """
        A peer that sends the link a frame over its limit inside a call:
        the proxy aborts that link, which resets its call, and serves the
        other agents as before.
        """
        proxy = self.startProxy()
        good = self.startAgent()
        await good.whenConnected()
        endpoint = GrpcLinkEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.grpcPort), "localhost", reactor
        )
        hostile = _Lost()
        await endpoint.connect(Factory.forProtocol(lambda: hostile))
        assert hostile.transport is not None
        hostile.transport.write(b"\x7f\xff\xff\xff" + b"junk")
        await hostile.lost
        assert hostile.reason is not None
        self.assertEqual(hostile.reason.getErrorMessage(), "the server reset the call (CANCEL)")
        self.assertTrue(self.logged("frame length 2147483647 exceeds the limit"))
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))

    async def test_plainPortWithoutGrpc(self) -> None:
        """
        Plain HTTP/2 to an agent port with gRPC turned off: the agent is
        told so, naming the setting.
        """
        proxy = self.startProxy(agent_grpc_enabled=False)
        self.startAgent(port=proxy.agentListener.portNumber)
        await self.linkFailure("proxy.agent.grpcEnabled = false")


class AgentPortTests(_LinkCase):
    """
    The proxy's own agent port serves the link's method beside upstream's
    ProxyService (its first bytes pick HTTP/2, its TLS answers ALPN h2):
    an agent switched to the gRPC transport needs no other port.
    """

    async def test_plain(self) -> None:
        proxy = self.startProxy(agent_token="s3cret")
        agent = self.startAgent(port=proxy.agentListener.portNumber, agent_token="s3cret")
        await agent.whenConnected()
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))
        self.assertIsInstance(self.linkOf(proxy).transport, CallTransport)

    async def test_mutualTLS(self) -> None:
        proxy = self.startProxy(
            identities=(Identity("team_a", "", ("m",)),), **self.tlsSettings(trust=True)
        )
        agent = self.startAgent(
            port=proxy.agentListener.portNumber, **self.agentTLS(self.certs.client)
        )
        await agent.whenConnected()
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))
        link = self.linkOf(proxy)
        self.assertIsInstance(link.transport, CallTransport)
        self.assertEqual(link.identity.name, "team_a")

    async def test_nativeBeside(self) -> None:
        """
        A native agent and a gRPC-transport agent on the same port.
        """
        proxy = self.startProxy()
        port = proxy.agentListener.portNumber
        grpcAgent = self.startAgent(port=port)
        native = self.startAgent("n", port=port, transport="native")
        await grpcAgent.whenConnected()
        await native.whenConnected()
        self.assertIsInstance(self.linkOf(proxy).transport, CallTransport)
        self.assertNotIsInstance(self.linkOf(proxy, "n").transport, CallTransport)
        self.assertEqual(await self.get(proxy, "n"), (200, b"up 1\n"))
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))


class NginxFrontEndTests(_LinkCase):
    """
    The link through a real nginx C{grpc_pass}, as docs/grpc-link.md sets
    it up: the agent dials nginx (HTTP/2 without TLS), which passes the
    call to the proxy's gRPC listener.
    """

    timeout = 120

    def nginx(self, upstream: int) -> int:
        """
        Start nginx passing gRPC to C{upstream}; return its port.
        """
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(binary, os.X_OK):
            self.fail("nginx is needed (Debian package 'nginx'; scripts/test installs it as root)")
        port = freePort()
        prefix = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(prefix, "logs"))
        config = writeFile(
            os.path.join(prefix, "nginx.conf"),
            f"""\
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/body;
    server {{
        listen 127.0.0.1:{port} http2;
        location /promtwist.Link/ {{
            grpc_pass grpc://127.0.0.1:{upstream};
            client_max_body_size 0;
        }}
    }}
}}
""",
        )
        Child(self, "nginx", [binary, "-p", prefix, "-c", config], prefix).start()
        return port

    async def startThroughNginx(self, **agentSettings: Any) -> tuple[ProxyService, AgentService]:
        proxy = self.startProxy()
        agent = self.startAgent(
            port=self.nginx(self.grpcPort), reconnect_pause_secs=0.2, **agentSettings
        )
        await agent.whenConnected()
        return proxy, agent

    async def test_proxyDown(self) -> None:
        """
        nginx that cannot reach the proxy answers the call itself, and the
        agent says what it answered.
        """
        self.startAgent(port=self.nginx(freePort()))
        line = await self.linkFailure("the server answered HTTP 502")
        self.assertIn("cannot reach it (502, 503, 504)", line)

    async def test_scrapeThroughNginx(self) -> None:
        proxy, _ = await self.startThroughNginx()
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))
        self.assertIsInstance(self.linkOf(proxy).transport, CallTransport)

    async def test_largeBodyThroughNginx(self) -> None:
        """
        A body of many windows crosses nginx's flow control whole.
        """
        proxy, _ = await self.startThroughNginx(
            url=startTarget(self, _Big()), max_content_length_mbytes=64
        )
        code, body = await self.get(proxy)
        self.assertEqual(code, 200)
        pieces = -(-BIG_BYTES // len(_PIECE))
        self.assertEqual(
            hashlib.sha256(body).hexdigest(), hashlib.sha256(_PIECE * pieces).hexdigest()
        )

    async def test_reconnectThroughNginx(self) -> None:
        """
        nginx's upstream connection lost: the agent's call ends, it dials
        again through nginx, and serves.
        """
        proxy, _ = await self.startThroughNginx()
        old = self.linkOf(proxy)
        for connection in self.server.accepted:
            assert connection.transport is not None
            connection.transport.abortConnection()
        await eventually(
            self,
            lambda: bool(proxy.registry.lookup("m")) and self.linkOf(proxy) is not old,
            "the agent reconnected through nginx",
            seconds=15,
        )
        self.assertEqual(await self.get(proxy), (200, b"up 1\n"))
