"""
Tests for L{promtwist.sendnow}: writes leave when the marked call that made
them returns, over real loopback sockets, plain and TLS.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from promtwist.sendnow import PENDING, sendBuffered, sendsOnReturn
from promtwist.test.certs import makeCertificates
from promtwist.test.helpers import unsent


class Producer(Protocol):
    """
    The server side: writes what it is told, in a marked call or not, and
    counts the system calls its socket makes.
    """

    def __init__(self) -> None:
        self.ready: Deferred[Producer] = Deferred()
        self.sends = 0

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def _write(self, chunks: list[bytes], close: bool) -> None:
        assert self.transport is not None
        for chunk in chunks:
            self.transport.write(chunk)
            PENDING.wrote(self.transport)
        if close:
            self.transport.loseConnection()

    @sendsOnReturn
    def marked(self, chunks: list[bytes], close: bool = False) -> None:
        self._write(chunks, close)

    def unmarked(self, chunks: list[bytes]) -> None:
        self._write(chunks, close=False)

    @sendsOnReturn
    def writing(
        self, chunks: list[bytes], seen: list[tuple[int, int]], abort: bool = False
    ) -> None:
        """
        Write C{chunks} with L{PENDING.write}, noting after each what the
        socket holds unsent and how many sends it made; abort the
        connection first if told to.
        """
        assert self.transport is not None
        if abort:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        for chunk in chunks:
            PENDING.write(self.transport, chunk)
            seen.append((self.held(), self.sends))

    @sendsOnReturn
    def outer(self, inner: list[bytes], after: list[bytes], seen: list[int]) -> None:
        self.marked(inner)
        seen.append(self.held())
        self._write(after, close=False)

    def socket(self) -> Any:
        transport: Any = self.transport
        return getattr(transport, "transport", transport) if _isTLS(transport) else transport

    def held(self) -> int:
        return unsent(self.socket())

    def countSends(self) -> None:
        """
        Count the socket's sends from now on.
        """
        socket = self.socket()
        send = socket.writeSomeData

        def counted(data: bytes) -> Any:
            self.sends += 1
            return send(data)

        socket.writeSomeData = counted


def _isTLS(transport: Any) -> bool:
    return hasattr(transport, "_aggregator")


class Collector(Protocol):
    """
    The client side: keeps what it receives.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._waiting: tuple[int, Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiting is not None and len(self.received) >= self._waiting[0]:
            waiting, self._waiting = self._waiting[1], None
            waiting.callback(self.received)

    def receive(self, size: int) -> Deferred[bytes]:
        done: Deferred[bytes] = Deferred()
        if len(self.received) >= size:
            done.callback(self.received)
        else:
            self._waiting = (size, done)
        return done

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


class SendsOnReturnTests(TestCase):
    """
    Writes made in a marked call leave the process when it returns.
    """

    async def connect(self, tls: bool = False) -> tuple[Producer, Collector]:
        accepted = Producer()
        factory: IProtocolFactory = Factory.forProtocol(lambda: accepted)
        if tls:
            serverOptions, clientOptions = _tlsOptions(self.mktemp())
            factory = TLSMemoryBIOFactory(serverOptions, False, factory)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client: IStreamClientEndpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port
        )
        if tls:
            client = wrapClientTLS(clientOptions, client)
        collector = await connectProtocol(client, Collector())
        self.addCleanup(_closed, collector)
        producer = await accepted.ready
        if tls:
            # Complete the handshake first: what it writes is not ours.
            producer.unmarked([b"hello"])
            await collector.receive(5)
        return producer, collector

    async def test_sentOnReturn(self) -> None:
        """
        Three writes in one marked call leave in one send before it returns.
        """
        producer, collector = await self.connect()
        producer.countSends()
        producer.marked([b"a" * 10, b"b" * 20, b"c" * 30])
        self.assertEqual((producer.held(), producer.sends), (0, 1))
        self.assertEqual(await collector.receive(60), b"a" * 10 + b"b" * 20 + b"c" * 30)

    async def test_unmarkedWaits(self) -> None:
        """
        Outside a marked call a write waits for the reactor, as usual.
        """
        producer, collector = await self.connect()
        producer.unmarked([b"x" * 10])
        self.assertEqual(producer.held(), 10)
        self.assertEqual(await collector.receive(10), b"x" * 10)

    async def test_outermostSends(self) -> None:
        """
        A marked call inside another sends nothing when it returns: the
        outermost sends what both wrote, at once.
        """
        producer, collector = await self.connect()
        producer.countSends()
        seen: list[int] = []
        producer.outer([b"i" * 5], [b"o" * 7], seen)
        self.assertEqual((seen, producer.held(), producer.sends), ([5], 0, 1))
        self.assertEqual(await collector.receive(12), b"i" * 5 + b"o" * 7)

    async def test_firstWriteAtOnce(self) -> None:
        """
        L{PENDING.write}: in a marked call, the first write to a socket with
        nothing unsent leaves at once, in one send and before the call
        returns; later writes in the call are held, and leave together in
        one more send when it returns.
        """
        producer, collector = await self.connect()
        producer.countSends()
        seen: list[tuple[int, int]] = []
        producer.writing([b"a" * 10, b"b" * 20, b"c" * 30], seen)
        self.assertEqual(seen, [(0, 1), (20, 1), (50, 1)])
        self.assertEqual((producer.held(), producer.sends), (0, 2))
        self.assertEqual(await collector.receive(60), b"a" * 10 + b"b" * 20 + b"c" * 30)

    async def test_writeAfterBuffered(self) -> None:
        """
        A first write in a marked call to a socket that still holds bytes
        written before is buffered behind them: nothing overtakes.
        """
        producer, collector = await self.connect()
        producer.unmarked([b"x" * 10])
        producer.countSends()
        seen: list[tuple[int, int]] = []
        producer.writing([b"y" * 5], seen)
        self.assertEqual(seen, [(15, 0)])
        self.assertEqual((producer.held(), producer.sends), (0, 1))
        self.assertEqual(await collector.receive(15), b"x" * 10 + b"y" * 5)

    async def test_abortedSendsNothing(self) -> None:
        """
        A connection aborted in the marked call sends nothing written after.
        """
        producer, collector = await self.connect()
        producer.countSends()
        seen: list[tuple[int, int]] = []
        producer.writing([b"q" * 10], seen, abort=True)
        await collector.closed
        self.assertEqual((collector.received, producer.sends), (b"", 0))

    async def test_writeTLS(self) -> None:
        """
        L{PENDING.write} on a TLS transport takes the usual way: encrypted
        and sent when the marked call returns.
        """
        producer, collector = await self.connect(tls=True)
        seen: list[tuple[int, int]] = []
        producer.writing([b"t" * 10, b"u" * 10], seen)
        self.assertEqual(producer.held(), 0)
        self.assertEqual(await collector.receive(25), b"hello" + b"t" * 10 + b"u" * 10)

    async def test_closingLeftToReactor(self) -> None:
        """
        A transport closing in the marked call is left to the reactor, which
        sends everything and then closes it.
        """
        producer, collector = await self.connect()
        producer.marked([b"z" * 100], close=True)
        self.assertEqual(producer.held(), 100)
        await collector.closed
        self.assertEqual(collector.received, b"z" * 100)

    async def test_tls(self) -> None:
        """
        TLS holds small writes for the next iteration; in a marked call they
        are encrypted and sent when it returns.
        """
        producer, collector = await self.connect(tls=True)
        producer.unmarked([b"w" * 10])
        self.assertEqual(producer.transport._aggregator._buffer, [b"w" * 10])  # type: ignore[union-attr]
        producer.marked([b"v" * 10])
        self.assertEqual(producer.transport._aggregator._buffer, [])  # type: ignore[union-attr]
        self.assertEqual(producer.held(), 0)
        self.assertEqual(await collector.receive(25), b"hello" + b"w" * 10 + b"v" * 10)


class NotASocketTests(SynchronousTestCase):
    def test_stringTransport(self) -> None:
        """
        A transport that is no socket keeps what was written to it.
        """
        transport = StringTransport()
        transport.write(b"kept")
        sendBuffered(transport)
        self.assertEqual(transport.value(), b"kept")


def _tlsOptions(directory: str) -> tuple[Any, Any]:
    """
    TLS options for a server with a fresh certificate for C{localhost}, and
    for a client that trusts it.
    """
    os.makedirs(directory)
    certs = makeCertificates(directory)
    server = PrivateCertificate.loadPEM(
        FilePath(certs.server.cert).getContent() + FilePath(certs.server.key).getContent()
    )
    trust = Certificate.loadPEM(FilePath(certs.ca).getContent())
    return server.options(), optionsForClientTLS("localhost", trustRoot=trust)


async def _closed(collector: Collector) -> None:
    assert collector.transport is not None
    collector.transport.loseConnection()
    await collector.closed
