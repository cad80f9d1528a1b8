"""
promtwist's own agent link carried by one gRPC call
(C{agent.transport = grpc}): a real agent and proxy in one process over
loopback, the proxy's link method on a gRPC server of the test's own.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from promtwist.agent.build import buildAgent
from promtwist.agent.grpclink import GrpcLinkEndpoint
from promtwist.agent.service import AgentService
from promtwist.config.settings import AgentSettings, PathConfig, ProxySettings
from promtwist.grpc.connection import GrpcServerFactory
from promtwist.proxy.build import buildProxy
from promtwist.proxy.grpclink import linkMethod
from promtwist.proxy.server import ProxyService
from promtwist.test.helpers import startTarget


class LinkOverGrpcTests(TestCase):
    timeout = 30

    async def startAll(self, proxySettings: ProxySettings | None = None) -> None:
        self.targetURL = startTarget(self)
        self.proxy: ProxyService = buildProxy(
            proxySettings or ProxySettings(http_port=0, agent_port=0),
            reactor,
            interface="127.0.0.1",
        )
        self.proxy.startService()
        self.addCleanup(lambda: self.proxy.stopService() if self.proxy.running else None)
        self.grpcPort: IListeningPort = reactor.listenTCP(
            0,
            GrpcServerFactory([linkMethod(self.proxy.linkFactory, reactor)], reactor=reactor),
            interface="127.0.0.1",
        )
        self.addCleanup(self.grpcPort.stopListening)
        address = self.grpcPort.getHost()
        assert isinstance(address, IPv4Address)
        endpoint: IStreamClientEndpoint = GrpcLinkEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", address.port),
            f"127.0.0.1:{address.port}",
            reactor,
        )
        self.agent: AgentService = buildAgent(
            AgentSettings(name="grpc-agent", path_configs=(PathConfig("m", "m", self.targetURL),)),
            reactor,
            endpoints=[(f"127.0.0.1:{address.port}", endpoint)],
        )
        self.agent.startService()
        self.addCleanup(lambda: self.agent.stopService() if self.agent.running else None)
        await self.agent.whenConnected()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = Agent(reactor, pool=self.pool)

    async def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.proxy.httpListener.portNumber}/{path}".encode()
        response = await self.http.request(b"GET", url)
        return response.code, await readBody(response)

    async def test_scrape(self) -> None:
        await self.startAll()
        self.assertEqual(await self.get("m"), (200, b"up 1\n"))
