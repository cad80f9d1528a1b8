"""
Hostile clients on the proxy's ports, over real loopback sockets: each costs
only its own connection, while a real agent keeps being scraped.
"""

from __future__ import annotations

import os
import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from promtwist.config.settings import ProxySettings
from promtwist.protocol.promtwist_pb2 import Frame, Hello
from promtwist.test.helpers import CONNECTION_REFUSALS, BesideARealAgent, RawClient, rejections

TOKEN = "the-real-token"


def helloFrame(token: str) -> bytes:
    data = Frame(
        hello=Hello(protocol_version=1, agent_name="flood", token=token)
    ).SerializeToString()
    return struct.pack("!I", len(data)) + data


class HostileInputTests(BesideARealAgent):
    agentToken = TOKEN

    def proxySettings(self) -> ProxySettings:
        return ProxySettings(
            http_port=0,
            agent_port=0,
            agent_token=TOKEN,
            handshake_timeout_secs=1.0,
            max_pending_handshakes=8,
            http_header_timeout_secs=1.0,
        )

    async def connect(self, port: int | None = None) -> RawClient:
        port = port or self.proxy.agentListener.portNumber
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = RawClient()
        await connectProtocol(endpoint, client)
        return client

    def assertAgentUndisturbed(self) -> None:
        self.assertIs(self.agent.factory.current, self.realLink)
        (served,) = self.proxy.registry.lookup("m")
        self.assertEqual(served.name, "real")

    async def test_randomBytes(self) -> None:
        client = await self.connect()
        client.send(os.urandom(4096))
        await client.closed
        await self.assertRealAgentServes(5)
        self.assertAgentUndisturbed()

    async def test_hugeLengthPrefix(self) -> None:
        client = await self.connect()
        client.send(b"\xff\xff\xff\xff" + b"x" * 100)
        await client.closed
        await self.assertRealAgentServes(5)
        self.assertAgentUndisturbed()

    async def test_helloFlood(self) -> None:
        """
        Fifty connections saying Hello with a wrong token at once are each
        rejected and closed; those beyond the pending-handshake caps are
        refused without being read, and once the address has failed
        C{maxAuthFailuresPerAddress} times its tokens are no longer checked.
        """
        clients = await gatherResults([Deferred.fromCoroutine(self.connect()) for _ in range(50)])
        for client in clients:
            client.send(helloFrame("guess"))
        await self.assertRealAgentServes(5)
        await gatherResults([client.closed for client in clients])
        guessed = [c for c in clients if b"invalid agent token" in c.received]
        throttled = [c for c in clients if b"too many failed authentication" in c.received]
        self.assertEqual(len(guessed), ProxySettings().max_auth_failures_per_address)
        rejected = guessed + throttled
        self.assertEqual(
            len(rejected) + rejections(self.proxy.linkFactory, *CONNECTION_REFUSALS), len(clients)
        )
        self.assertAgentUndisturbed()
        self.assertEqual(len(self.proxy.registry.agents()), 1)

    async def test_neverFinishingHandshake(self) -> None:
        """
        A connection that sends half a Hello and stops is closed at the
        handshake deadline; scrapes go on meanwhile.
        """
        client = await self.connect()
        client.send(helloFrame(TOKEN)[:7])
        await self.assertRealAgentServes(2)
        self.assertNoResult(client.closed)
        await client.closed
        await self.assertRealAgentServes(5)
        self.assertAgentUndisturbed()
        self.assertEqual(self.proxy.linkFactory.pending, set())

    async def test_idleConnectionsCapped(self) -> None:
        """
        Connections that begin a Hello and say no more fill the
        pending-handshake places and no more; those beyond wait for a place
        rather than refused; they all go at their deadlines, and the port
        takes new agents again.
        """
        idle = [await self.connect() for _ in range(12)]
        for client in idle:
            client.send(helloFrame(TOKEN)[:7])
        await deferLater(reactor, 0.1)
        self.assertEqual(len(self.proxy.linkFactory.pending), 8)
        self.assertEqual(rejections(self.proxy.linkFactory, *CONNECTION_REFUSALS), 0)
        await self.assertRealAgentServes(5)
        await gatherResults([client.closed for client in idle])
        self.assertEqual(self.proxy.linkFactory.pending, set())
        self.assertAgentUndisturbed()

    async def test_slowloris(self) -> None:
        """
        A client trickling a request's headers into the scrape port is cut
        off at the header deadline, though it never stops sending; scrapes
        from others go on meanwhile.
        """
        client = await self.connect(self.proxy.httpListener.portNumber)
        request = b"GET /m HTTP/1.1\r\nHost: proxy\r\n" + b"X-Slow: " + b"a" * 200
        sent = 0
        while not client.closed.called:
            client.send(request[sent : sent + 1])
            sent += 1
            await deferLater(reactor, 0.05)
            if sent % 5 == 0:
                await self.assertRealAgentServes(1)
        self.assertLess(sent, len(request))
        self.assertIn(b"408", client.received.split(b"\r\n", 1)[0])
        await self.assertRealAgentServes(5)
        self.assertAgentUndisturbed()
