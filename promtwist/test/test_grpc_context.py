"""
L{promtwist.grpc.context}: one context per HTTP/2 connection, carried by
every call on it, whose initial metadata goes in every call's headers and
which is told when the connection is lost.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc.call import ServerCall
from promtwist.grpc.connection import GrpcServerFactory
from promtwist.grpc.context import ConnectionContext
from promtwist.grpc.service import unary
from promtwist.grpc.status import GrpcError, StatusCode
from promtwist.test.grpcpeer import RawPeer


class _Noted(ConnectionContext):
    made: ClassVar[list[_Noted]] = []

    def __init__(self, transport: ITCPTransport) -> None:
        super().__init__(transport)
        self.initialMetadata.append(("agent-id", "abc"))
        self.lost = 0
        self.calls: list[ServerCall[bytes, bytes]] = []
        self.lostAfter: list[bool] = []
        _Noted.made.append(self)

    def connectionLost(self) -> None:
        self.lost += 1
        # The calls are cancelled before the context hears of it.
        self.lostAfter = [call.cancelled for call in self.calls]


class ContextTests(SynchronousTestCase):
    def setUp(self) -> None:
        _Noted.made = []
        self.held: list[Deferred[bytes]] = []

        def note(request: bytes, call: ServerCall[bytes, bytes]) -> bytes:
            context = call.context
            assert isinstance(context, _Noted)
            context.calls.append(call)
            return request

        def refuse(request: bytes, call: ServerCall[bytes, bytes]) -> bytes:
            raise GrpcError(StatusCode.PERMISSION_DENIED, "no")

        def hold(request: bytes, call: ServerCall[bytes, bytes]) -> Deferred[bytes]:
            context = call.context
            assert isinstance(context, _Noted)
            context.calls.append(call)
            held: Deferred[bytes] = Deferred()
            self.held.append(held)
            return held

        self.peer = RawPeer(
            [
                unary("/t/note", note, bytes, bytes),
                unary("/t/refuse", refuse, bytes, bytes),
                unary("/t/hold", hold, bytes, bytes),
            ],
            contexts=_Noted,
        )

    def test_oneContextPerConnection(self) -> None:
        """
        The context is made when the connection is, from its transport;
        every call of the connection carries the same one, and reaches the
        transport through it.
        """
        (context,) = _Noted.made
        self.assertIs(context.transport, self.peer.transport)
        self.peer.request(1, b"/t/note")
        self.peer.request(3, b"/t/note")
        self.assertEqual(len(context.calls), 2)
        for call in context.calls:
            self.assertIs(call.context, context)
            self.assertIs(call.transport, self.peer.transport)
        self.assertIs(self.peer.protocol.context, context)

    def test_initialMetadataOnEveryCall(self) -> None:
        """
        The context's initial metadata is in the headers of every call: an
        answered one, and one refused with a trailers-only answer.
        """
        self.peer.request(1, b"/t/note")
        self.peer.request(3, b"/t/refuse")
        answered, refused = self.peer.answer(1), self.peer.answer(3)
        self.assertEqual(answered.headers[0].get(b"agent-id"), b"abc")
        self.assertEqual(answered.status, 0)
        self.assertEqual(refused.headers[0].get(b"agent-id"), b"abc")
        self.assertEqual(refused.status, StatusCode.PERMISSION_DENIED)

    def test_connectionLost(self) -> None:
        """
        The context is told once when the connection is lost, after its
        open calls were cancelled.
        """
        (context,) = _Noted.made
        self.peer.request(1, b"/t/hold")
        self.assertEqual(context.lost, 0)
        self.peer.protocol.connectionLost()
        self.assertEqual((context.lost, context.lostAfter), (1, [True]))
        self.assertTrue(self.held[0].called)
        self.held[0].addErrback(lambda f: None)

    def test_closeAll(self) -> None:
        """
        The factory knows its open connections; closeAll ends each open
        call UNAVAILABLE saying why (its handler cancelled), then the
        connection with GOAWAY NO_ERROR saying why, and fires once the
        connections are lost (the reviewer's C{t_stop.py}: streams removed
        without a status, the reactor stopped before the GOAWAY went).
        """
        factory = self.peer.protocol.factory
        assert isinstance(factory, GrpcServerFactory)
        self.assertEqual(factory.connections, {self.peer.protocol})
        self.peer.request(1, b"/t/hold")
        closed = factory.closeAll("the proxy is shutting down")
        self.peer.read()
        answer = self.peer.answer(1)
        self.assertEqual(answer.status, StatusCode.UNAVAILABLE)
        self.assertEqual(answer.message, b"the proxy is shutting down")
        self.assertEqual(self.peer.goAwayReason, (0, b"the proxy is shutting down"))
        self.assertTrue(self.held[0].called)
        self.held[0].addErrback(lambda f: None)
        self.assertNoResult(closed)
        self.peer.protocol.connectionLost()
        self.successResultOf(closed)
        self.assertEqual(factory.connections, set())
