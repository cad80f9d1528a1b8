"""
Tests for L{promtwist.grpc.connection}, L{promtwist.grpc.call} and
L{promtwist.grpc.service}, in memory: a raw HTTP/2 client (C{grpcpeer})
writes frames into the server protocol, hostile ones included, on a
L{Clock}.
"""

from __future__ import annotations

import base64
import gzip
import random
import struct
from typing import Any

from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc.call import CallCancelled, ServerCall
from promtwist.grpc.connection import GrpcServerFactory
from promtwist.grpc.limits import Limits
from promtwist.grpc.messages import frameMessage
from promtwist.grpc.service import bidirectional, unary
from promtwist.grpc.status import StatusCode
from promtwist.test.grpcpeer import (
    EchoService,
    RawPeer,
    continuation,
    data,
    requestHeaders,
    reset,
    windowUpdate,
)


def _peer(limits: Limits | None = None, **kw: object) -> tuple[RawPeer, EchoService]:
    service = EchoService()
    return RawPeer(service.methods(), limits, **kw), service  # type: ignore[arg-type]


class CallTests(SynchronousTestCase):
    """
    The four kinds of call, statuses and metadata.
    """

    def test_settingsAdvertised(self) -> None:
        peer, _ = _peer()
        self.assertEqual(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                SettingCodes.MAX_HEADER_LIST_SIZE: 8192,
                SettingCodes.MAX_FRAME_SIZE: 16384,
                SettingCodes.INITIAL_WINDOW_SIZE: 4 * 1024 * 1024 + 5,
                SettingCodes.ENABLE_PUSH: 0,
            }.items()
            - peer.serverSettings.items(),
            set(),
        )

    def test_unary(self) -> None:
        peer, _ = _peer()
        peer.request(1, messages=[b"hello"])
        answer = peer.answer(1)
        self.assertEqual(answer.headers[0][b":status"], b"200")
        self.assertEqual(answer.headers[0][b"content-type"], b"application/grpc")
        self.assertEqual(answer.messages(), [b"hello"])
        self.assertEqual(answer.status, StatusCode.OK)
        self.assertTrue(answer.ended)
        self.assertIsNone(answer.reset)

    def test_protoContentType(self) -> None:
        peer, _ = _peer()
        peer.request(1, base=requestHeaders(content_type=b"application/grpc+proto"))
        self.assertEqual(peer.answer(1).messages(), [b"hello"])

    def test_errorStatusPercentEncoded(self) -> None:
        """
        A handler's L{GrpcError} is the call's status, its text
        percent-encoded in C{grpc-message}; trailers-only, since nothing
        was sent before.
        """
        peer, _ = _peer()
        peer.request(1, messages=[b"fail:5:100% gone \xc3\xa9"])
        answer = peer.answer(1)
        self.assertEqual(len(answer.headers), 1)
        self.assertEqual(answer.status, StatusCode.NOT_FOUND)
        self.assertEqual(answer.message, b"100%25 gone %C3%A9")

    def test_handlerFailureLogged(self) -> None:
        """
        A handler that raises anything else gives C{UNKNOWN} with no
        detail; the server logs the failure.
        """

        def broken(request: bytes, call: ServerCall[bytes, bytes]) -> bytes:
            raise ValueError("bug")

        peer = RawPeer([unary("/test.Echo/unary", broken, bytes, bytes)])
        peer.request(1)
        self.assertEqual(peer.answer(1).status, StatusCode.UNKNOWN)
        self.assertEqual(peer.answer(1).message, b"the handler failed; the server logged why")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_metadata(self) -> None:
        """
        Custom metadata reaches the handler, C{-bin} values decoded; the
        handler's initial metadata is in the response headers.
        """
        peer, _ = _peer()
        peer.request(
            1,
            b"/test.Echo/metadata",
            extra=[
                (b"agent-token", b"s3cret"),
                (b"trace-bin", base64.b64encode(b"\x00\xff").rstrip(b"=")),
                (b"user-agent", b"grpc-java-netty/1.70"),
                (b"grpc-timeout", b"5S"),
            ],
        )
        answer = peer.answer(1)
        self.assertEqual(answer.headers[0][b"agent-id"], b"7")
        self.assertEqual(answer.messages(), [b"agent-token='s3cret'\ntrace-bin=b'\\x00\\xff'\n"])

    def test_badBinaryMetadata(self) -> None:
        peer, _ = _peer()
        peer.request(1, extra=[(b"trace-bin", b"!!!")])
        self.assertEqual(peer.answer(1).status, StatusCode.INTERNAL)
        self.assertEqual(peer.answer(1).message, b"metadata trace-bin is not base64")

    def test_serverStreaming(self) -> None:
        peer, _ = _peer()
        peer.request(1, b"/test.Echo/count", messages=[b"3"])
        self.assertEqual(peer.answer(1).messages(), [b"0", b"1", b"2"])
        self.assertEqual(peer.answer(1).status, StatusCode.OK)

    def test_clientStreaming(self) -> None:
        peer, _ = _peer()
        peer.request(1, b"/test.Echo/collect", messages=[b"a", b"b", b"c"])
        self.assertEqual(peer.answer(1).messages(), [b"a,b,c"])

    def test_bidirectional(self) -> None:
        """
        Each request is answered as it comes, before the client half-closes.
        """
        peer, _ = _peer()
        peer.request(1, b"/test.Echo/chat", messages=None)
        peer.send(data(1, b"\0\0\0\0\x01a"))
        self.assertEqual(peer.answer(1).messages(), [b"re: a"])
        peer.send(data(1, b"\0\0\0\0\x01b", end=True))
        self.assertEqual(peer.answer(1).messages(), [b"re: a", b"re: b"])
        self.assertEqual(peer.answer(1).status, StatusCode.OK)

    def test_unaryWithoutRequest(self) -> None:
        peer, _ = _peer()
        peer.request(1, messages=[])
        self.assertEqual(peer.answer(1).status, StatusCode.INTERNAL)
        self.assertEqual(peer.answer(1).message, b"half-closed without a request")

    def test_unaryTwoRequests(self) -> None:
        peer, _ = _peer()
        peer.request(1, messages=[b"a", b"b"])
        self.assertEqual(peer.answer(1).message, b"too many requests for a unary request")

    def test_gzipRequest(self) -> None:
        peer, _ = _peer()
        zipped = gzip.compress(b"squeezed")
        peer.request(1, messages=None, extra=[(b"grpc-encoding", b"gzip")])
        peer.send(data(1, struct.pack(">BI", 1, len(zipped)) + zipped, end=True))
        self.assertEqual(peer.answer(1).messages(), [b"squeezed"])

    def test_undecodableRequest(self) -> None:
        """
        A request its method cannot parse is C{INTERNAL}, the client's
        fault: nothing is logged.
        """

        def parse(raw: bytes) -> bytes:
            raise ValueError("not a message")

        peer = RawPeer([unary("/test.Echo/unary", lambda r, c: r, parse, bytes)])
        peer.request(1)
        self.assertEqual(peer.answer(1).status, StatusCode.INTERNAL)
        self.assertEqual(
            peer.answer(1).message, b"could not parse the request for /test.Echo/unary"
        )

    def test_otherStreamsUnaffected(self) -> None:
        """
        A refused call costs only its stream.
        """
        peer, _ = _peer(Limits(maxMessageBytes=10))
        # What fits the stream's window (15 bytes) of a message over the
        # limit: its prefix says so before the rest may be sent.
        peer.request(1, messages=None)
        peer.send(data(1, struct.pack(">BI", 0, 11) + b"x" * 10))
        peer.request(3, messages=[b"fine"])
        self.assertEqual(peer.answer(1).status, StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(peer.answer(1).message, b"message of 11 bytes exceeds the 10-byte limit")
        self.assertEqual(peer.answer(3).messages(), [b"fine"])
        self.assertIsNone(peer.goAway)


class AuthorizeTests(SynchronousTestCase):
    """
    A method's C{authorize}, asked on a call's headers.
    """

    def _authorized(self, authority: object) -> tuple[RawPeer, list[ServerCall[bytes, bytes]]]:
        calls: list[ServerCall[bytes, bytes]] = []

        def handler(request: bytes, call: ServerCall[bytes, bytes]) -> bytes:
            calls.append(call)
            return request

        method = unary("/test.Echo/unary", handler, bytes, bytes, authorize=lambda call: authority)
        return RawPeer([method]), calls

    def test_provedByAuthority(self) -> None:
        """
        An authority proves the connection at the headers.
        """
        peer, calls = self._authorized("identity")
        peer.request(1, messages=[b"hi"])
        self.assertEqual(peer.answer(1).messages(), [b"hi"])
        self.assertEqual(calls[0].authority, "identity")
        self.assertTrue(peer.protocol.proven)

    def test_undecided(self) -> None:
        """
        L{None} admits the call without proving the connection; its
        handler's C{prove} does.
        """
        peer, calls = self._authorized(None)
        peer.request(1, messages=[b"hi"])
        self.assertEqual(peer.answer(1).messages(), [b"hi"])
        self.assertFalse(peer.protocol.proven)
        calls[0].prove()
        self.assertTrue(peer.protocol.proven)


class RequestCheckTests(SynchronousTestCase):
    """
    Requests that are not gRPC, or that the server refuses, before any
    handler runs.
    """

    def test_notPost(self) -> None:
        peer, _ = _peer()
        peer.send(peer.headers(1, requestHeaders(**{":method": b"GET"}), end=True))
        self.assertEqual(peer.answer(1).headers, [{b":status": b"405"}])
        self.assertTrue(peer.answer(1).ended)
        self.assertIsNone(peer.goAway)

    def test_notGrpcContentType(self) -> None:
        peer, _ = _peer()
        peer.request(1, base=requestHeaders(content_type=b"application/json"))
        self.assertEqual(peer.answer(1).headers, [{b":status": b"415"}])

    def test_teRequired(self) -> None:
        peer, _ = _peer()
        peer.request(1, base=requestHeaders(te=b""))
        self.assertEqual(peer.answer(1).status, StatusCode.INTERNAL)
        self.assertEqual(peer.answer(1).message, b"te: trailers is required")

    def test_unknownMethod(self) -> None:
        peer, _ = _peer()
        peer.request(1, b"/io.prometheus.ProxyService/connectAgent")
        self.assertEqual(peer.answer(1).status, StatusCode.UNIMPLEMENTED)
        self.assertEqual(
            peer.answer(1).message, b"unknown method /io.prometheus.ProxyService/connectAgent"
        )

    def test_unsupportedEncoding(self) -> None:
        peer, _ = _peer()
        peer.request(1, extra=[(b"grpc-encoding", b"snappy")])
        self.assertEqual(peer.answer(1).status, StatusCode.UNIMPLEMENTED)
        self.assertEqual(peer.answer(1).message, b"grpc-encoding snappy is not supported")

    def test_badTimeout(self) -> None:
        peer, _ = _peer()
        peer.request(1, extra=[(b"grpc-timeout", b"soon")])
        self.assertEqual(peer.answer(1).status, StatusCode.INTERNAL)
        self.assertEqual(peer.answer(1).message, b"malformed grpc-timeout 'soon'")

    def test_refusedOpenStreamIsReset(self) -> None:
        """
        A refused request whose client has not half-closed is reset with
        NO_ERROR after its answer, so the client sends no more.
        """
        peer, _ = _peer()
        peer.request(1, b"/nope/nope", messages=None)
        self.assertEqual(peer.answer(1).status, StatusCode.UNIMPLEMENTED)
        self.assertEqual(peer.answer(1).reset, ErrorCodes.NO_ERROR)


class CancellationTests(SynchronousTestCase):
    def test_deadline(self) -> None:
        """
        At C{grpc-timeout} the call ends with C{DEADLINE_EXCEEDED} and its
        handler is cancelled.
        """
        peer, service = _peer()
        peer.request(1, b"/test.Echo/hold", extra=[(b"grpc-timeout", b"1500m")])
        peer.clock.advance(1.4)
        peer.read()
        self.assertEqual(peer.answer(1).headers, [])
        self.assertEqual(service.held[0].deadline, 1.5)
        peer.clock.advance(0.1)
        peer.read()
        self.assertEqual(peer.answer(1).status, StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(service.cancelled, ["/test.Echo/hold"])

    def test_resetCancels(self) -> None:
        peer, service = _peer()
        peer.request(1, b"/test.Echo/hold")
        peer.send(reset(1))
        self.assertEqual(service.cancelled, ["/test.Echo/hold"])
        self.assertTrue(service.held[0].cancelled)
        self.assertEqual(peer.answer(1).headers, [])

    def test_resetCancelsStreamingSend(self) -> None:
        """
        A server-streaming handler waiting for its client's window is
        cancelled when the client resets the stream.
        """
        peer, service = _peer()
        peer.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 8}))
        peer.request(1, b"/test.Echo/count", messages=[b"5"])
        peer.send(reset(1))
        self.assertEqual(service.cancelled, ["/test.Echo/count"])

    def test_connectionLostCancels(self) -> None:
        peer, service = _peer()
        peer.request(1, b"/test.Echo/hold")
        peer.request(3, b"/test.Echo/hold")
        peer.protocol.connectionLost()
        self.assertEqual(service.cancelled, ["/test.Echo/hold"] * 2)
        self.assertEqual(peer.clock.getDelayedCalls(), [])


class FlowControlTests(SynchronousTestCase):
    def _slowChat(self, limits: Limits) -> tuple[RawPeer, list[ServerCall[bytes, bytes]]]:
        """
        A peer on a C{chat} whose handler reads only when the test says.
        """
        calls: list[ServerCall[bytes, bytes]] = []

        def keep(call: ServerCall[bytes, bytes]) -> Deferred[None]:
            calls.append(call)
            return Deferred(lambda _: None)

        service = EchoService()
        methods = [*service.methods()[:1], bidirectional("/test.Echo/chat", keep, bytes, bytes)]
        return RawPeer(methods, limits), calls

    def _updates(self, peer: RawPeer, streamId: int) -> list[int]:
        return [
            f.window_increment
            for f in peer.frames
            if isinstance(f, WindowUpdateFrame) and f.stream_id == streamId
        ]

    def test_slowHandlerHoldsWindow(self) -> None:
        """
        A stream's window is the largest message and its prefix, reopened
        only as the handler takes messages: a handler that does not read
        stops its client.
        """
        peer, calls = self._slowChat(Limits(maxMessageBytes=95))
        self.assertEqual(peer.serverSettings[SettingCodes.INITIAL_WINDOW_SIZE], 100)
        peer.request(1, b"/test.Echo/chat", messages=None)
        peer.send(data(1, (b"\0\0\0\0\x19" + b"m" * 25) * 3))
        self.assertEqual(self._updates(peer, 1), [])
        taken = [calls[0].receive() for _ in range(3)]
        self.assertEqual([self.successResultOf(d) for d in taken], [b"m" * 25] * 3)
        peer.read()
        self.assertEqual(self._updates(peer, 1), [90])

    def test_unfinishedMessageHeld(self) -> None:
        """
        The bytes of a message still arriving are acknowledged when it is
        whole and taken: a message as large as the limit still fits.
        """
        peer, calls = self._slowChat(Limits(maxMessageBytes=95))
        peer.request(1, b"/test.Echo/chat", messages=None)
        waiting = calls[0].receive()
        peer.send(data(1, b"\0\0\0\0\x5f" + b"m" * 45))
        self.assertNoResult(waiting)
        self.assertEqual(self._updates(peer, 1), [])
        peer.send(data(1, b"m" * 50))
        self.assertEqual(self.successResultOf(waiting), b"m" * 95)
        self.assertEqual(self._updates(peer, 1), [100])

    def test_slowStreamDoesNotStopNeighbours(self) -> None:
        """
        The connection's window holds several streams' windows: a stream
        whose handler does not read leaves room for the others.
        """
        peer, _ = self._slowChat(Limits(maxMessageBytes=60000))
        peer.request(1, b"/test.Echo/chat", messages=None)
        held = b"\0\0\0\xea\x60" + b"m" * 60000
        peer.send(*[data(1, held[i : i + 16384]) for i in range(0, len(held), 16384)])
        self.assertIsNone(peer.goAway)
        peer.request(3, messages=[b"n" * 10000])
        self.assertEqual([len(m) for m in peer.answer(3).messages()], [10000])
        self.assertEqual(peer.answer(3).status, StatusCode.OK)

    def test_clientWindowPacesSends(self) -> None:
        """
        DATA goes only as far as the client's window; the handler's sends
        wait for it, and the status follows the last of them.
        """
        peer, _ = _peer()
        peer.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 10}))
        peer.request(1, b"/test.Echo/count", messages=[b"5"])
        self.assertEqual(len(peer.answer(1).data), 10)
        self.assertIsNone(peer.answer(1).status)
        peer.send(windowUpdate(1, 100))
        self.assertEqual(peer.answer(1).messages(), [b"0", b"1", b"2", b"3", b"4"])
        self.assertEqual(peer.answer(1).status, StatusCode.OK)

    def test_transportPause(self) -> None:
        """
        While the transport asks its producer to pause, no DATA is sent,
        and nothing more is read from the client.
        """
        peer, _ = _peer()
        peer.request(1, b"/test.Echo/count", messages=None)
        peer.protocol.pauseProducing()
        self.assertEqual(peer.transport.producerState, "producing")
        peer.send(data(1, b"\0\0\0\0\x012", end=True), PingFrame(0, b"12345678"))
        self.assertEqual(peer.transport.producerState, "paused")
        self.assertEqual(peer.answer(1).data, b"")
        self.assertEqual([f for f in peer.frames if isinstance(f, PingFrame)], [])
        peer.protocol.resumeProducing()
        self.assertEqual(peer.transport.producerState, "producing")
        peer.read()
        self.assertEqual(len([f for f in peer.frames if isinstance(f, PingFrame)]), 1)
        self.assertEqual(peer.answer(1).messages(), [b"0", b"1"])
        self.assertEqual(peer.answer(1).status, StatusCode.OK)


class LimitTests(SynchronousTestCase):
    """
    Each limit, tripped by a hostile client: the cost is its stream or its
    connection (GOAWAY with a reason), never an exception.
    """

    def assertGoneAway(self, peer: RawPeer, code: int, reason: bytes) -> None:
        self.assertIsNotNone(peer.goAway, "no GOAWAY")
        assert peer.goAwayReason is not None
        self.assertEqual(peer.goAwayReason[0], code)
        self.assertIn(reason, peer.goAwayReason[1])
        self.assertTrue(peer.transport.disconnecting)

    def test_garbagePreface(self) -> None:
        """
        What promtwist's own link or HTTP/1.1 sends is not HTTP/2.
        """
        peer, _ = _peer(preface=False)
        peer.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertGoneAway(
            peer, ErrorCodes.PROTOCOL_ERROR, b"HTTP/2 error: Invalid HTTP/2 preamble"
        )

    def test_tooManyStreams(self) -> None:
        peer, service = _peer(Limits(maxConcurrentStreams=2))
        for streamId in (1, 3, 5):
            peer.request(streamId, b"/test.Echo/hold")
        self.assertGoneAway(peer, ErrorCodes.PROTOCOL_ERROR, b"Max inbound streams is 2, 2 open")
        self.assertEqual(service.cancelled, ["/test.Echo/hold"] * 2)

    def test_headerListTooLarge(self) -> None:
        peer, _ = _peer()
        peer.request(1, extra=[(b"x-padding", b"p" * 9000)])
        self.assertGoneAway(peer, ErrorCodes.ENHANCE_YOUR_CALM, b"Oversized header block")
        self.assertEqual(peer.answer(1).headers, [])

    def test_frameTooLarge(self) -> None:
        peer, _ = _peer()
        peer.request(1, messages=None)
        peer.send(data(1, b"\0" * 16385))
        self.assertGoneAway(
            peer, ErrorCodes.FRAME_SIZE_ERROR, b"Received overlong frame: length 16385, max 16384"
        )

    def test_rapidReset(self) -> None:
        """
        Streams opened and reset at once, past the bound in one window:
        GOAWAY ENHANCE_YOUR_CALM. As many spread over two windows are fine.
        """
        peer, _ = _peer(Limits(maxResetsPerWindow=5, floodWindowSeconds=10))
        for streamId in range(1, 11, 2):
            peer.request(streamId, b"/test.Echo/hold", messages=None)
            peer.send(reset(streamId))
        self.assertIsNone(peer.goAway)
        peer.clock.advance(10)
        for streamId in range(11, 21, 2):
            peer.request(streamId, b"/test.Echo/hold", messages=None)
            peer.send(reset(streamId))
        self.assertIsNone(peer.goAway)
        peer.request(21, b"/test.Echo/hold", messages=None)
        peer.send(reset(21))
        self.assertGoneAway(peer, ErrorCodes.ENHANCE_YOUR_CALM, b"too many stream resets")

    def test_pingFlood(self) -> None:
        peer, _ = _peer(Limits(maxPingsPerWindow=5))
        peer.send(*[PingFrame(0, b"%08d" % i) for i in range(5)])
        acks = [f for f in peer.frames if isinstance(f, PingFrame) and "ACK" in f.flags]
        self.assertEqual(len(acks), 5)
        self.assertIsNone(peer.goAway)
        peer.send(PingFrame(0, b"12345678"))
        self.assertGoneAway(peer, ErrorCodes.ENHANCE_YOUR_CALM, b"too many PINGs")

    def test_settingsFlood(self) -> None:
        peer, _ = _peer(Limits(maxSettingsPerWindow=5))
        peer.send(*[SettingsFrame(0, {SettingCodes.ENABLE_PUSH: 0}) for _ in range(5)])
        self.assertIsNone(peer.goAway)
        peer.send(SettingsFrame(0, {SettingCodes.ENABLE_PUSH: 0}))
        self.assertGoneAway(peer, ErrorCodes.ENHANCE_YOUR_CALM, b"too many SETTINGS frames")

    def test_emptyFrameFlood(self) -> None:
        peer, _ = _peer(Limits(maxEmptyFramesPerWindow=5))
        peer.request(1, b"/test.Echo/collect", messages=None)
        peer.send(*[data(1, b"") for _ in range(5)])
        self.assertIsNone(peer.goAway)
        peer.send(data(1, b""))
        self.assertGoneAway(peer, ErrorCodes.ENHANCE_YOUR_CALM, b"too many empty frames")

    def test_handshakeTimeout(self) -> None:
        """
        A connection that never sends the preface is aborted after
        C{handshakeSeconds}.
        """
        peer, _ = _peer(Limits(handshakeSeconds=3), preface=False)
        peer.clock.advance(2.9)
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(0.1)
        self.assertTrue(peer.transport.disconnected)

    def test_idleTimeout(self) -> None:
        """
        With no call open for C{idleSeconds}, GOAWAY NO_ERROR; an open call
        keeps the connection.
        """
        peer, _ = _peer(Limits(idleSeconds=60))
        peer.request(1, b"/test.Echo/hold")
        peer.clock.advance(120)
        peer.read()
        self.assertIsNone(peer.goAway)
        peer.send(reset(1))
        peer.clock.advance(59)
        peer.read()
        self.assertIsNone(peer.goAway)
        peer.clock.advance(1)
        peer.read()
        self.assertGoneAway(peer, ErrorCodes.NO_ERROR, b"idle for 60 s")

    def test_unreadGoAwayAborts(self) -> None:
        """
        A client that does not read its GOAWAY is aborted after
        C{closeSeconds}; no timer outlives the connection.
        """
        peer, _ = _peer(Limits(maxPingsPerWindow=0, closeSeconds=5))
        peer.send(PingFrame(0, b"12345678"))
        self.assertFalse(peer.transport.disconnected)
        peer.clock.advance(5)
        self.assertTrue(peer.transport.disconnected)
        peer.protocol.connectionLost()
        self.assertEqual(peer.clock.getDelayedCalls(), [])

    def test_afterGoAwayNothingIsRead(self) -> None:
        peer, service = _peer(Limits(maxPingsPerWindow=0))
        peer.send(PingFrame(0, b"12345678"))
        peer.request(1, b"/test.Echo/hold")
        self.assertEqual(service.held, [])


class LimitsTests(SynchronousTestCase):
    def test_connectionWindowFitsAMessage(self) -> None:
        error = self.assertRaises(ValueError, Limits, maxMessageBytes=32 * 1024 * 1024)
        self.assertEqual(
            str(error),
            "connectionWindowBytes (16777216) is smaller than one stream's window,"
            " maxMessageBytes + 5 (33554437)",
        )


class GzipHoldTests(SynchronousTestCase):
    def test_heldCompressed(self) -> None:
        """
        Messages a handler has not taken are held as they came: a window
        of gzip bombs costs the window, and each is inflated (and refused
        past the limit) only when taken.
        """
        calls: list[ServerCall[bytes, bytes]] = []

        def keep(call: ServerCall[bytes, bytes]) -> Deferred[None]:
            calls.append(call)
            return Deferred(lambda _: None)

        peer = RawPeer(
            [bidirectional("/test.Echo/chat", keep, bytes, bytes)], Limits(maxMessageBytes=1000)
        )
        bomb = gzip.compress(b"\0" * 1001)
        peer.request(1, b"/test.Echo/chat", messages=None, extra=[(b"grpc-encoding", b"gzip")])
        peer.send(data(1, (struct.pack(">BI", 1, len(bomb)) + bomb) * 3))
        failure = self.failureResultOf(calls[0].receive())
        self.assertEqual(failure.value.code, StatusCode.RESOURCE_EXHAUSTED)
        calls[0].abort("test over")


class GarbageTests(SynchronousTestCase):
    def test_randomFrames(self) -> None:
        """
        Random frames (plausible headers, random types, flags, streams and
        bodies) on a connection with calls open never raise out of the
        protocol and leave no timer behind; trial fails the test on any
        logged error.
        """
        for seed in range(300):
            rng = random.Random(seed)
            peer, _ = _peer()
            peer.request(1, b"/test.Echo/chat", messages=None)
            peer.request(3, b"/test.Echo/hold")
            for _ in range(5):
                body = rng.randbytes(rng.randrange(40))
                streamId = rng.randrange(6)
                kind, flags = rng.randrange(10), rng.randrange(256)
                peer.send(
                    len(body).to_bytes(3, "big")
                    + bytes([kind, flags])
                    + streamId.to_bytes(4, "big")
                    + body
                )
            peer.protocol.connectionLost()
            self.assertEqual(peer.clock.getDelayedCalls(), [], f"seed {seed}")


class ContinuationFloodTests(SynchronousTestCase):
    def test_continuationFlood(self) -> None:
        """
        A header block that never ends (CONTINUATION flood,
        CVE-2024-27316) is cut off by h2 after 64 frames.
        """
        peer, _ = _peer()
        start = HeadersFrame(1, b"\x00")
        peer.send(start, *[continuation(1, b"\x00" * 100, last=False) for _ in range(70)])
        self.assertIsNotNone(peer.goAwayReason)
        assert peer.goAwayReason is not None
        self.assertEqual(peer.goAwayReason[0], ErrorCodes.PROTOCOL_ERROR)
        self.assertIn(b"Too many continuation frames received", peer.goAwayReason[1])


class ClientGoAwayTests(SynchronousTestCase):
    def test_clientGoAway(self) -> None:
        """
        A client's GOAWAY closes the connection: its open calls are
        cancelled, and a handler answering late sends nothing.
        """
        peer, service = _peer()
        peer.request(1, b"/test.Echo/hold")
        peer.request(3, b"/test.Echo/count", messages=None)
        peer.send(GoAwayFrame(0))
        self.assertEqual(service.cancelled, ["/test.Echo/hold"])
        self.assertTrue(peer.transport.disconnecting)
        self.assertRaises(CallCancelled, service.held[0].send, b"late")
        peer.protocol.connectionLost()
        self.assertEqual(peer.clock.getDelayedCalls(), [])

    def test_requestAndGoAwayInOneRead(self) -> None:
        """
        A request answered at once and a GOAWAY in the same read: h2 has
        closed the connection before the request is handled, so nothing is
        answered and nothing raises.
        """
        peer, _ = _peer()
        peer.send(
            peer.headers(1, requestHeaders()),
            data(1, b"\0\0\0\0\x01x", end=True),
            GoAwayFrame(0),
        )
        self.assertEqual(peer.answer(1).headers, [])
        self.assertTrue(peer.transport.disconnecting)

    def test_requestAndResetInOneRead(self) -> None:
        """
        A request answered at once and its reset in the same read: h2 has
        closed the stream before the request is handled; nothing is sent on
        it, nothing raises, and the next request is served.
        """
        peer, _ = _peer()
        peer.send(
            peer.headers(1, requestHeaders(b"/test.Echo/count")),
            data(1, b"\0\0\0\0\x013", end=True),
            reset(1),
        )
        self.assertEqual(peer.answer(1).headers, [])
        peer.request(3)
        self.assertEqual(peer.answer(3).messages(), [b"hello"])


class FrameSequenceTests(SynchronousTestCase):
    def test_randomValidFrames(self) -> None:
        """
        Well-formed frames in random orders and batches (requests for every
        kind of method, data, resets, window updates, PINGs, SETTINGS,
        GOAWAY) never raise out of the protocol nor log an error.
        """
        paths = [
            b"/test.Echo/unary",
            b"/test.Echo/hold",
            b"/test.Echo/count",
            b"/test.Echo/collect",
            b"/test.Echo/chat",
        ]
        for seed in range(300):
            rng = random.Random(seed)
            peer, _ = _peer()
            opened: list[int] = []

            def frame(
                peer: RawPeer = peer, rng: random.Random = rng, opened: list[int] = opened
            ) -> bytes:
                choice = rng.randrange(8)
                if choice == 0 or not opened:
                    streamId = (opened[-1] + 2) if opened else 1
                    opened.append(streamId)
                    return peer.headers(streamId, requestHeaders(rng.choice(paths))).serialize()
                streamId = rng.choice(opened)
                if choice <= 2:
                    body = b"\0\0\0\0\x01" + rng.choice([b"1", b"5"])
                    return data(streamId, body, end=rng.random() < 0.5).serialize()
                if choice == 3:
                    return reset(streamId).serialize()
                if choice == 4:
                    return windowUpdate(
                        rng.choice([0, streamId]), rng.randrange(1, 1000)
                    ).serialize()
                if choice == 5:
                    return PingFrame(0, b"pingpong").serialize()
                if choice == 6:
                    return SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 7}).serialize()
                return GoAwayFrame(0).serialize() if rng.random() < 0.2 else b""

            for _ in range(6):
                peer.send(b"".join(frame() for _ in range(rng.randrange(1, 5))))
            peer.clock.advance(1)
            peer.protocol.connectionLost()
            self.assertEqual(peer.clock.getDelayedCalls(), [], f"seed {seed}")


class ConnectionLogTests(SynchronousTestCase):
    def test_closesLoggedAtABoundedRate(self) -> None:
        """
        Connections closed for breaking HTTP/2 are logged a few per minute
        for the whole server, not one line each, and name their peer as
        host:port (the reviewer's C{t_logs.py}: 500 lines of address reprs).
        """
        clock = Clock()
        factory = GrpcServerFactory(EchoService().methods(), reactor=clock)
        peer = IPv6Address("TCP", "::ffff:127.0.0.1", 40000)
        with capturedLogs() as events:
            for _ in range(50):
                protocol = factory.buildProtocol(peer)
                transport = StringTransport(peerAddress=peer)
                protocol.makeConnection(transport)
                client = RawPeer((), clock=clock, over=(protocol, transport))
                # DATA on stream 0 breaks HTTP/2.
                client.send(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
                self.assertIsNotNone(client.goAway)
                protocol.connectionLost()
        closes = [e for e in events if "closed" in formatEvent(e)]
        self.assertEqual(len(closes), factory.warnings.burst)
        self.assertIn("gRPC connection from 127.0.0.1:40000 closed", formatEvent(closes[0]))
        clock.advance(factory.warnings.interval)


class OwedRequestTests(SynchronousTestCase):
    """
    An open call is activity, but not one that waits for bytes its client
    does not send (the reviewer's C{hold.py}: all but the last byte of a
    message, held for ever).
    """

    def test_unaryRequestNeverSent(self) -> None:
        """
        A unary call whose request does not come fails DEADLINE_EXCEEDED
        C{idleSeconds} after its headers.
        """
        peer, _ = _peer(Limits(idleSeconds=30))
        peer.request(1, messages=None)
        peer.clock.advance(29)
        peer.read()
        self.assertIsNone(peer.answer(1).status)
        peer.clock.advance(1)
        peer.read()
        answer = peer.answer(1)
        self.assertEqual(answer.status, StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(answer.message, b"the request did not arrive whole within 30 s")

    def test_messageLeftUnfinished(self) -> None:
        """
        On a streaming call, a message begun and not finished fails the
        call C{messageSeconds} after its first byte, however the rest
        trickles in; one waiting between messages is left alone.
        """
        peer, _ = _peer(Limits(messageSeconds=30))
        peer.request(1, b"/test.Echo/chat", messages=None)
        peer.request(3, b"/test.Echo/chat", messages=None)
        peer.clock.advance(100)
        peer.send(data(1, frameMessage(b"x" * 100)[:50]))
        for _ in range(29):
            peer.clock.advance(1)
            peer.send(data(1, b"x"))
        self.assertIsNone(peer.answer(1).status)
        peer.clock.advance(1)
        peer.read()
        self.assertEqual(peer.answer(1).status, StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(
            peer.answer(1).message, b"the message begun did not arrive whole within 30 s"
        )
        self.assertIsNone(peer.answer(3).status)
        peer.protocol.connectionLost()
        self.assertEqual(peer.clock.getDelayedCalls(), [])

    def test_messageDueLongBeforeIdle(self) -> None:
        """
        By default a message begun must be whole within a minute, not the
        five idle minutes: its bytes come at line speed, and until it is
        whole it holds up to a window of the server's memory. On a unary
        call the sooner of its two debts fails it; once the message is
        whole, the request's own debt runs on from the headers.
        """
        peer, _ = _peer()
        peer.request(1, messages=None)
        peer.request(3, b"/test.Echo/chat", messages=None)
        peer.clock.advance(10)
        peer.send(data(1, frameMessage(b"x" * 100)[:50]))
        peer.send(data(3, frameMessage(b"x" * 100)[:50]))
        peer.clock.advance(59)
        peer.read()
        self.assertEqual((peer.answer(1).status, peer.answer(3).status), (None, None))
        peer.clock.advance(1)
        peer.read()
        for streamId in (1, 3):
            self.assertEqual(peer.answer(streamId).status, StatusCode.DEADLINE_EXCEEDED)
            self.assertEqual(
                peer.answer(streamId).message,
                b"the message begun did not arrive whole within 60 s",
            )

    def test_unaryRequestDueAfterItsMessage(self) -> None:
        """
        A unary call whose message is whole but whose stream stays open
        still owes its request by C{idleSeconds} after its headers.
        """
        peer, _ = _peer(Limits(idleSeconds=100, messageSeconds=10))
        peer.request(1, messages=None)
        peer.send(data(1, frameMessage(b"x")))
        peer.clock.advance(99)
        peer.read()
        self.assertIsNone(peer.answer(1).status)
        peer.clock.advance(1)
        peer.read()
        self.assertEqual(peer.answer(1).message, b"the request did not arrive whole within 100 s")


class _Budget:
    """
    A L{MessageBudget} of C{limit} bytes per source; every call is of one
    source.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}

    def sourceOf(self, call: ServerCall[Any, Any]) -> str:
        return "the source"

    def take(self, size: int, source: str) -> str | None:
        if self.held.get(source, 0) + size > self.limit:
            return f"{size} more bytes would pass the test's limit"
        self.held[source] = self.held.get(source, 0) + size
        return None

    def give(self, size: int, source: str) -> None:
        self.held[source] -= size
        if not self.held[source]:
            del self.held[source]


class MessageBudgetTests(SynchronousTestCase):
    """
    Every unfinished message is charged, by its declared size, to the
    server's budget: many connections of one source together hold no more
    than it allows.
    """

    def test_chargedFromItsPrefix(self) -> None:
        """
        A message is charged its declared size (its prefix included) once
        its prefix is here, and given back once it is whole.
        """
        budget = _Budget(10_000)
        peer, _ = _peer(budget=budget)
        peer.request(1, b"/test.Echo/chat", messages=None)
        message = frameMessage(b"x" * 1000)
        peer.send(data(1, message[:3]))
        self.assertEqual(budget.held, {})
        peer.send(data(1, message[3:500]))
        self.assertEqual(budget.held, {"the source": 1005})
        peer.send(data(1, message[500:]))
        self.assertEqual(budget.held, {})

    def test_refusedAcrossConnections(self) -> None:
        """
        A message past the budget fails its call RESOURCE_EXHAUSTED with the
        budget's reason; the other connection's message, and the budget,
        are untouched; when a call ends, what it held is given back.
        """
        budget = _Budget(3000)
        clock = Clock()
        first, _ = _peer(budget=budget, clock=clock)
        second, _ = _peer(budget=budget, clock=clock)
        for peer in (first, second):
            peer.request(1, b"/test.Echo/chat", messages=None)
            peer.send(data(1, frameMessage(b"x" * 2000)[:100]))
            peer.read()
        self.assertIsNone(first.answer(1).status)
        refused = second.answer(1)
        self.assertEqual(refused.status, StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(refused.message, b"2005 more bytes would pass the test's limit")
        self.assertEqual(budget.held, {"the source": 2005})
        first.send(reset(1))
        self.assertEqual(budget.held, {})
        second.protocol.connectionLost()
        first.protocol.connectionLost()
