"""
A hostile agent on a real loopback proxy, answering scrapes as an attacker
would: lying about lengths, ignoring credit, sending bodies too big to
merge. Each attack costs only its own scrape or link, with a reason, while a
real agent's scrapes keep succeeding and the proxy's memory stays bounded.
"""

from __future__ import annotations

import gzip
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IConsumer, IPushProducer, ISystemHandle
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from promtwist.config.settings import PathConfig, ProxySettings
from promtwist.protocol.promtwist_pb2 import (
    Frame,
    Hello,
    Pong,
    RegisterPath,
    ScrapeChunk,
    ScrapeRequest,
    ScrapeResponse,
)
from promtwist.test.helpers import BesideARealAgent, MiB, rss, startTarget

Behaviour = Callable[["HostileAgent", ScrapeRequest], None]


@implementer(IPushProducer)
class HostileAgent(Int32StringReceiver):
    """
    Speaks the link protocol well enough to be welcomed and to register a
    path, then answers scrapes with C{behaviour}.
    """

    MAX_LENGTH = 4 * MiB

    def __init__(self, path: str, behaviour: Behaviour, consolidated: bool = False) -> None:
        self.path = path
        self.behaviour = behaviour
        self.consolidated = consolidated
        self.ready: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.cancelled: set[int] = set()
        self.sentBytes = 0
        # The attacker lives in this test's process: it respects TCP's
        # backpressure so that what is measured is the proxy's memory.
        # (Not "paused": IntNStringReceiver stops parsing while that is set.)
        self.writePaused = False
        self._waiting: list[Callable[[], None]] = []

    def whenWritable(self, f: Callable[[], None]) -> None:
        if self.writePaused:
            self._waiting.append(f)
        else:
            reactor.callLater(0, f)

    def pauseProducing(self) -> None:
        self.writePaused = True

    def resumeProducing(self) -> None:
        self.writePaused = False
        waiting, self._waiting = self._waiting, []
        for f in waiting:
            f()

    def stopProducing(self) -> None:
        self._waiting = []

    def send(self, frame: Frame) -> None:
        data = frame.SerializeToString()
        self.sentBytes += len(data)
        assert self.transport is not None
        self.transport.write(struct.pack("!I", len(data)) + data)

    def connectionMade(self) -> None:
        cast(IConsumer, self.transport).registerProducer(self, True)
        self.send(
            Frame(
                hello=Hello(
                    protocol_version=1,
                    agent_name=f"hostile-{self.path}",
                    host_name="attacker",
                    launch_id="x",
                    consolidated=self.consolidated,
                    max_frame_bytes=MiB,
                )
            )
        )

    def stringReceived(self, data: bytes) -> None:
        frame = Frame.FromString(data)
        kind = frame.WhichOneof("kind")
        if kind == "welcome":
            self.send(
                Frame(register_path=RegisterPath(request_id=1, path=self.path, name=self.path))
            )
        elif kind == "path_reply":
            self.ready.callback(None)
        elif kind == "ping":
            self.send(Frame(pong=Pong(nonce=frame.ping.nonce)))
        elif kind == "cancel_scrape":
            self.cancelled.add(frame.cancel_scrape.scrape_id)
        elif kind == "scrape_request":
            self.behaviour(self, frame.scrape_request)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)

    @property
    def open(self) -> bool:
        return not self.closed.called


async def connectHostile(
    case: TestCase, port: int, path: str, behaviour: Behaviour, consolidated: bool = False
) -> HostileAgent:
    """
    A L{HostileAgent} connected to the agent port C{port} on loopback and
    serving C{path}, for the length of C{case}.
    """
    agent = HostileAgent(path, behaviour, consolidated)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, agent)
    case.addCleanup(lambda: agent.transport.loseConnection() if agent.transport else None)
    await agent.ready
    return agent


class RelayAttackTests(BesideARealAgent):
    def proxySettings(self) -> ProxySettings:
        return ProxySettings(http_port=0, agent_port=0, max_consolidated_buffer_mbytes=32)

    async def hostile(
        self, path: str, behaviour: Behaviour, consolidated: bool = False
    ) -> HostileAgent:
        return await connectHostile(
            self, self.proxy.agentListener.portNumber, path, behaviour, consolidated
        )

    async def test_forgedLengthCannotSplitKeepAlive(self) -> None:
        """
        An agent that declares 23 bytes and sends far more cannot make the
        surplus the answer to the next request on the same keep-alive
        connection: the connection is closed after the declared bytes.
        """

        def lie(agent: HostileAgent, request: ScrapeRequest) -> None:
            forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
            agent.send(
                Frame(
                    scrape_response=ScrapeResponse(
                        scrape_id=request.scrape_id, status=200, content_length=23, body=b"x" * 23
                    )
                )
            )
            agent.send(
                Frame(scrape_chunk=ScrapeChunk(scrape_id=request.scrape_id, data=forged * 1000))
            )

        await self.hostile("evil", lie)
        client = await self.raw(
            b"GET /evil HTTP/1.1\r\nHost: p\r\n\r\nGET /m HTTP/1.1\r\nHost: p\r\n\r\n"
        )
        await client.closed
        # The answer is broken off (the head may not even have left the
        # proxy); nothing of the surplus, and no second answer, arrives.
        self.assertNotIn(b"forged", client.received)
        self.assertLessEqual(client.received.count(b"HTTP/1.1 "), 1)
        await self.assertRealAgentServes()

    async def test_declaredMoreThanSent(self) -> None:
        """
        An agent that declares more than it sends does not leave Prometheus
        waiting for bytes that never come.
        """

        def short(agent: HostileAgent, request: ScrapeRequest) -> None:
            agent.send(
                Frame(
                    scrape_response=ScrapeResponse(
                        scrape_id=request.scrape_id, status=200, content_length=1000, body=b"x"
                    )
                )
            )
            agent.send(Frame(scrape_chunk=ScrapeChunk(scrape_id=request.scrape_id, last=True)))

        await self.hostile("short", short)
        client = await self.raw(b"GET /short HTTP/1.1\r\nHost: p\r\n\r\n")
        await client.closed
        self.assertNotIn(b"\r\n0\r\n\r\n", client.received, "never a complete chunked body")
        await self.assertRealAgentServes()

    async def test_creditIgnored(self) -> None:
        """
        An agent that ignores credit while Prometheus reads nothing loses its
        link after one window's worth, and the proxy's memory stays bounded.
        """
        flood: list[HostileAgent] = []

        def pour(agent: HostileAgent, request: ScrapeRequest) -> None:
            flood.append(agent)
            agent.send(
                Frame(
                    scrape_response=ScrapeResponse(
                        scrape_id=request.scrape_id, status=200, content_length=-1
                    )
                )
            )

            def more() -> None:
                if agent.open and agent.sentBytes < 1024 * MiB:
                    for _ in range(16):
                        agent.send(
                            Frame(
                                scrape_chunk=ScrapeChunk(
                                    scrape_id=request.scrape_id, data=b"z" * 65536
                                )
                            )
                        )
                    agent.whenWritable(more)

            more()

        hostile = await self.hostile("flood", pour)
        before = rss()
        client = await self.raw(b"GET /flood HTTP/1.1\r\nHost: p\r\n\r\n")
        assert client.transport is not None
        client.transport.pauseProducing()  # type: ignore[attr-defined]
        await hostile.closed
        self.assertLess(rss() - before, 100 * MiB)
        self.assertLess(hostile.sentBytes, 200 * MiB)
        self.assertEqual(self.proxy.registry.lookup("flood"), ())
        await self.assertRealAgentServes()

    async def test_consolidatedMemoryBounded(self) -> None:
        """
        Thirty concurrent scrapes of a path whose two agents answer 6 MiB
        each are held within the proxy's consolidated budget (32 MiB here):
        those past it are answered 503 with the reason, and memory stays
        bounded.
        """
        body = (b"big_metric 1\n" * (6 * MiB // 13))[: 6 * MiB]

        def big(agent: HostileAgent, request: ScrapeRequest) -> None:
            scrapeId = request.scrape_id
            agent.send(
                Frame(
                    scrape_response=ScrapeResponse(
                        scrape_id=scrapeId, status=200, content_length=-1
                    )
                )
            )

            # One chunk a turn, so that every scrape is in flight at once.
            def chunk(start: int) -> None:
                if scrapeId in agent.cancelled or not agent.open:
                    return
                last = start + 512 * 1024 >= len(body)
                agent.send(
                    Frame(
                        scrape_chunk=ScrapeChunk(
                            scrape_id=scrapeId, data=body[start : start + 512 * 1024], last=last
                        )
                    )
                )
                if not last:
                    agent.whenWritable(lambda: chunk(start + 512 * 1024))

            chunk(0)

        await self.hostile("shared", big, consolidated=True)
        await self.hostile("shared", big, consolidated=True)
        before = rss()
        request = b"GET /shared HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        clients = await gatherResults(
            [Deferred.fromCoroutine(self.raw(request)) for _ in range(30)]
        )
        await gatherResults([client.closed for client in clients])
        answers = [client.received.partition(b"\r\n")[0] for client in clients]
        self.assertEqual(len(answers), 30)
        refused = [c.received for c in clients if c.received.startswith(b"HTTP/1.1 503")]
        self.assertTrue(refused, answers)
        self.assertIn(b"maxConsolidatedBufferMBytes", refused[0])
        self.assertTrue(
            all(a.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")) for a in answers), answers
        )
        # Measured: about 65 MiB (the 32 MiB budget, the merged answers on
        # their way out, and the attacker's own buffers in this process).
        self.assertLess(rss() - before, 200 * MiB)
        self.assertEqual(self.proxy.scrapes.budget.used, 0)
        await deferLater(reactor, 0)
        await self.assertRealAgentServes()

    async def test_multiMemberGzipInflatedWhole(self) -> None:
        """
        A body of two gzip members (valid RFC 1952) reaches a client that
        does not accept gzip whole, on a single and on a consolidated path;
        trailing garbage after a member is an error with a reason, not a 200
        with a silently shortened body.
        """
        twoMembers = gzip.compress(b"first 1\n") + gzip.compress(b"second 2\n")

        def answer(body: bytes) -> Behaviour:
            def behaviour(agent: HostileAgent, request: ScrapeRequest) -> None:
                agent.send(
                    Frame(
                        scrape_response=ScrapeResponse(
                            scrape_id=request.scrape_id,
                            status=200,
                            content_encoding="gzip",
                            content_length=-1,
                            body=body,
                            last=True,
                        )
                    )
                )

            return behaviour

        await self.hostile("members", answer(twoMembers))
        self.assertEqual(await self.get("members"), (200, b"first 1\nsecond 2\n"))
        await self.hostile("merged", answer(twoMembers), consolidated=True)
        await self.hostile("merged", answer(gzip.compress(b"third 3\n")), consolidated=True)
        status, body = await self.get("merged")
        self.assertEqual(status, 200)
        self.assertEqual(sorted(body.splitlines()), [b"first 1", b"second 2", b"third 3"])
        await self.hostile("garbage", answer(twoMembers + b"trailing junk"))
        status, body = await self.get("garbage")
        self.assertEqual(status, 502)
        self.assertIn(b"trailing garbage after member 2", body)
        await self.assertRealAgentServes()

    async def test_invalidHeadsAnsweredAtOnce(self) -> None:
        """
        A head the proxy cannot pass on truthfully is a 502 naming what was
        wrong as soon as it arrives, not a 503 at the deadline; the agent's
        link stays up for its other scrapes.
        """
        heads: Iterator[dict[str, Any]] = iter(
            [
                {"status": 99999},
                {"status": 200, "content_type": "text/plain; \u2603"},
                {"outcome": 42},
            ]
        )

        def invalid(agent: HostileAgent, request: ScrapeRequest) -> None:
            agent.send(
                Frame(
                    scrape_response=ScrapeResponse(
                        scrape_id=request.scrape_id, last=True, **next(heads)
                    )
                )
            )

        hostile = await self.hostile("invalid", invalid)
        started = reactor.seconds()
        answers = [await self.get("invalid") for _ in range(3)]
        self.assertLess(reactor.seconds() - started, 5)
        self.assertEqual([status for status, _ in answers], [502, 502, 502])
        for (_, body), expected in zip(
            answers,
            [b"status 99999", b"is not latin-1 text", b"unknown outcome 42"],
            strict=True,
        ):
            self.assertIn(expected, body)
        self.assertTrue(hostile.open)
        await self.assertRealAgentServes()

    async def test_queryBytesRefusedAtTheProxy(self) -> None:
        """
        A raw 0x7f in the query string is refused at the proxy with a 400
        saying where it is (llhttp refuses it as it parses); no agent is
        asked, so no target is blamed.
        """
        client = await self.raw(b"GET /m?a=\x7f HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        await client.closed
        self.assertTrue(client.received.startswith(b"HTTP/1.1 400"), client.received)
        self.assertIn(b"malformed request: Invalid char in url query", client.received)
        await self.assertRealAgentServes()


class _Big(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"b" * MiB


class BusyLinkTests(BesideARealAgent):
    """
    Not an attack: a busy link on a slow path, big bodies flowing one way
    while a burst of scrape requests with big headers goes the other, must
    not stall with both ends waiting for the other to read.
    """

    async def test_noDeadlockOnASlowPath(self) -> None:
        self.agent.factory.replacePaths(
            static=[PathConfig("big", "big", startTarget(self, _Big(), "big"))]
        )
        await self.until(lambda: bool(self.proxy.registry.lookup("big")))
        (proxyEnd,) = self.proxy.linkFactory.links
        for transport in (proxyEnd.transport, self.realLink.transport):
            handle = cast(socket.socket, cast(ISystemHandle, transport).getHandle())
            # A slow path: small socket buffers on both ends.
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        request = (
            b"GET /big HTTP/1.1\r\nHost: p\r\nConnection: close\r\nAuthorization: Bearer "
            + b"x" * 14_000
            + b"\r\n\r\n"
        )
        clients = await gatherResults(
            [Deferred.fromCoroutine(self.raw(request)) for _ in range(30)]
        )
        await gatherResults([client.closed for client in clients])
        answers = [client.received.partition(b"\r\n")[0] for client in clients]
        self.assertEqual(answers, [b"HTTP/1.1 200 OK"] * 30)
        self.assertIs(self.agent.factory.current, self.realLink, "the link was never lost")

    async def until(self, condition: Callable[[], bool]) -> None:
        for _ in range(100):
            if condition():
                return
            await deferLater(reactor, 0.02)
        self.fail("not within 2 s")
