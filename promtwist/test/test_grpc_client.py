"""
Tests for L{promtwist.grpc.client}, in memory: the client protocol against
an h2 server state machine of the test's own, honest or hostile, on a
L{Clock}.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc.call import CallCancelled
from promtwist.grpc.client import CallFailed, CallRequest, GrpcClientProtocol
from promtwist.grpc.limits import Limits
from promtwist.grpc.messages import frameMessage
from promtwist.grpc.status import StatusCode, encodeMessage

OK_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


class Server:
    """
    A gRPC server as an h2 state machine, wired to a client protocol
    through a L{StringTransport}; L{pump} moves bytes both ways.
    """

    def __init__(self, limits: Limits | None = None, **settings: int) -> None:
        self.clock = Clock()
        self.limits = limits or Limits()
        self.client = GrpcClientProtocol(
            CallRequest("/promtwist.Link/Connect", "proxy.example:50051", (("x-who", "me"),)),
            self.limits,
            self.clock,
        )
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings({getattr(SettingCodes, k): v for k, v in settings.items()})
        self.events: list[h2.events.Event] = []
        self.received = b""
        self.pump()

    @property
    def call(self) -> Any:
        return self.client.call

    def pump(self) -> None:
        for _ in range(20):
            fromClient = self.transport.value()
            self.transport.clear()
            fromServer = self.h2.data_to_send()
            if not fromClient and not fromServer:
                return
            if fromClient:
                self.received += fromClient
                if not self.h2.state_machine.state.name == "CLOSED":
                    self.events += self.h2.receive_data(fromClient)
            if fromServer:
                self.client.dataReceived(fromServer)

    def raw(self, data: bytes) -> None:
        """
        Bytes straight to the client, as a hostile server writes them.
        """
        self.client.dataReceived(data)
        self.pump()

    def frames(self) -> list[Frame]:
        """
        The frames the client sent, after its preface.
        """
        data = self.received[24:]
        out = []
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9 : 9 + length]))
            data = data[9 + length :]
            out.append(frame)
        return out

    def goAway(self) -> GoAwayFrame | None:
        found = [f for f in self.frames() if isinstance(f, GoAwayFrame)]
        return found[-1] if found else None

    def resets(self) -> list[int]:
        return [f.error_code for f in self.frames() if isinstance(f, RstStreamFrame)]

    def failure(self) -> CallFailed:
        failures: list[Failure] = []
        self.call.whenDone().addErrback(failures.append)
        [failure] = failures
        error = failure.trap(CallFailed) and failure.value
        assert isinstance(error, CallFailed)
        return error

    def respond(self, *messages: bytes, status: int = 0, end: bool = True) -> None:
        self.h2.send_headers(1, OK_HEADERS)
        for message in messages:
            self.h2.send_data(1, frameMessage(message))
        if end:
            self.h2.send_headers(1, [(b"grpc-status", b"%d" % status)], end_stream=True)
        self.pump()


def received(call: Any) -> list[bytes | None]:
    out: list[bytes | None] = []
    while True:
        results: list[Any] = []
        call.receive().addBoth(results.append)
        if not results:
            return out
        [result] = results
        if isinstance(result, Failure):
            out.append(None)
            return out
        out.append(result)
        if result is None:
            return out


class CallTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        The call's headers go out as soon as the connection is made, with
        gRPC's required fields and the metadata given.
        """
        server = Server()
        [request] = [e for e in server.events if isinstance(e, h2.events.RequestReceived)]
        headers = dict(request.headers or [])
        self.assertEqual(headers[b":method"], b"POST")
        self.assertEqual(headers[b":scheme"], b"http")
        self.assertEqual(headers[b":path"], b"/promtwist.Link/Connect")
        self.assertEqual(headers[b":authority"], b"proxy.example:50051")
        self.assertEqual(headers[b"content-type"], b"application/grpc")
        self.assertEqual(headers[b"te"], b"trailers")
        self.assertTrue(headers[b"user-agent"].startswith(b"promtwist/"))
        self.assertEqual(headers[b"x-who"], b"me")

    def test_messagesBothWays(self) -> None:
        """
        Messages the call sends reach the server; the server's come out
        of receive(), then None after its OK; then the connection closes
        with GOAWAY NO_ERROR.
        """
        server = Server()
        sent: list[object] = []
        server.call.send(b"hello").addCallback(sent.append)
        server.call.halfClose()
        server.pump()
        data = b"".join(
            e.data or b"" for e in server.events if isinstance(e, h2.events.DataReceived)
        )
        self.assertEqual(data, frameMessage(b"hello"))
        self.assertEqual(sent, [None])
        self.assertTrue(any(isinstance(e, h2.events.StreamEnded) for e in server.events))
        server.respond(b"one", b"two")
        self.assertEqual(received(server.call), [b"one", b"two", None])
        goAway = server.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(server.transport.disconnecting)

    def test_errorStatus(self) -> None:
        """
        A trailers-only answer with an error status fails the call with it.
        """
        server = Server()
        server.h2.send_headers(
            1,
            [
                *OK_HEADERS,
                (b"grpc-status", b"14"),
                (b"grpc-message", encodeMessage("gone fishing: 100%")),
            ],
            end_stream=True,
        )
        server.pump()
        error = server.failure()
        self.assertEqual(error.code, StatusCode.UNAVAILABLE)
        self.assertEqual(
            str(error), "the server ended the call with UNAVAILABLE: gone fishing: 100%"
        )

    def test_unknownStatus(self) -> None:
        server = Server()
        server.h2.send_headers(1, OK_HEADERS)
        server.h2.send_headers(1, [(b"grpc-status", b"99")], end_stream=True)
        server.pump()
        self.assertEqual(str(server.failure()), "the server ended the call with status 99")

    def test_noStatus(self) -> None:
        server = Server()
        server.h2.send_headers(1, OK_HEADERS, end_stream=True)
        server.pump()
        self.assertEqual(str(server.failure()), "the server ended the call without a grpc-status")

    def test_notGrpc(self) -> None:
        """
        An HTTP answer that is not gRPC (a front end's 404 page) fails the
        call naming it, and the client resets the stream.
        """
        server = Server()
        server.h2.send_headers(1, [(b":status", b"404"), (b"content-type", b"text/html")])
        server.pump()
        self.assertIn("HTTP 404 with content type text/html, not gRPC", str(server.failure()))
        self.assertEqual(server.resets(), [ErrorCodes.CANCEL])

    def test_endsInsideMessage(self) -> None:
        server = Server()
        server.h2.send_headers(1, OK_HEADERS)
        server.h2.send_data(1, frameMessage(b"abcdef")[:7])
        server.h2.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
        server.pump()
        self.assertIn("inside a message", str(server.failure()))


class HostileServerTests(SynchronousTestCase):
    def test_badFrames(self) -> None:
        """
        Bytes that are not HTTP/2 end the connection with GOAWAY
        PROTOCOL_ERROR and fail the call saying so.
        """
        server = Server()
        server.raw(b"\x00\x00\x04\x09\x00\x00\x00\x00\x07garbage" * 3)
        goAway = server.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertIn("the server broke HTTP/2", str(server.failure()))
        self.assertTrue(server.transport.disconnecting)

    def test_hugeHeaders(self) -> None:
        """
        A header block larger than the limit is refused before it is held:
        GOAWAY, and the call fails.
        """
        server = Server(Limits(maxHeaderListBytes=1024))
        encoder = Encoder()
        block = encoder.encode([*OK_HEADERS, (b"x-big", b"x" * 4000)])
        frame = HeadersFrame(1)
        frame.data = block
        frame.flags.add("END_HEADERS")
        server.raw(frame.serialize())
        goAway = server.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIn("the server broke HTTP/2", str(server.failure()))

    def test_goAway(self) -> None:
        """
        The server's GOAWAY ends the call with its code and debug data.
        """
        server = Server()
        pending = server.call.receive()
        failures: list[Failure] = []
        pending.addErrback(failures.append)
        server.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"go away")
        server.pump()
        self.assertEqual(
            str(server.failure()),
            "the server closed the HTTP/2 connection (GOAWAY ENHANCE_YOUR_CALM: go away)",
        )
        self.assertEqual(len(failures), 1)
        self.assertTrue(server.transport.disconnecting)

    def test_reset(self) -> None:
        server = Server()
        server.h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        server.pump()
        self.assertEqual(str(server.failure()), "the server reset the call (REFUSED_STREAM)")
        self.assertTrue(server.transport.disconnecting)

    def test_oversizedMessage(self) -> None:
        """
        A message over the limit is refused from its prefix: the call
        fails with RESOURCE_EXHAUSTED and is reset.
        """
        server = Server(Limits(maxMessageBytes=100))
        server.h2.send_headers(1, OK_HEADERS)
        server.h2.send_data(1, b"\x00\x00\x00\x10\x00")
        server.pump()
        error = server.failure()
        self.assertEqual(error.code, StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("exceeds the 100-byte limit", str(error))
        self.assertEqual(server.resets(), [ErrorCodes.CANCEL])

    def test_pingFlood(self) -> None:
        server = Server(Limits(maxPingsPerWindow=3))
        server.raw(b"".join(PingFrame(0, b"%08d" % i).serialize() for i in range(4)))
        goAway = server.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(goAway.additional_data, b"too many PINGs from the server")

    def test_silentServer(self) -> None:
        """
        A server that sends no SETTINGS within handshakeSeconds is
        aborted, and the call says why.
        """
        clock = Clock()
        client = GrpcClientProtocol(CallRequest("/a/b", "x:1"), Limits(), clock)
        transport = StringTransport()
        client.makeConnection(transport)
        clock.advance(10)
        self.assertTrue(transport.disconnected)
        failures: list[Failure] = []
        client.call.whenDone().addErrback(failures.append)
        self.assertIn("no HTTP/2 SETTINGS from the server within 10 s", str(failures[0].value))

    def test_noStatusAfterHalfClose(self) -> None:
        """
        A server that never ends the call after the client half-closed is
        not waited for beyond closeSeconds: the call is reset.
        """
        server = Server()
        server.call.halfClose()
        server.pump()
        server.clock.advance(5)
        server.pump()
        self.assertIn("did not end the call within 5 s", str(server.failure()))
        self.assertEqual(server.resets(), [ErrorCodes.CANCEL])

    def test_connectionLost(self) -> None:
        """
        A lost connection fails the call and what waits to be sent.
        """
        server = Server(INITIAL_WINDOW_SIZE=0)
        sending: list[Failure] = []
        server.call.send(b"stuck").addErrback(sending.append)
        server.client.connectionLost(Failure(ConnectionLost("cable cut")))
        why = str(server.failure())
        self.assertTrue(why.startswith("the connection to the server was lost: "), why)
        self.assertIn("cable cut", why)
        sending[0].trap(CallCancelled)


class FlowControlTests(SynchronousTestCase):
    def test_sendWaitsForWindow(self) -> None:
        """
        What the server's window does not take waits, and its Deferred
        fires only once a WINDOW_UPDATE let all of it go.
        """
        server = Server(INITIAL_WINDOW_SIZE=10)
        sent: list[object] = []
        server.call.send(b"x" * 100).addCallback(sent.append)
        server.pump()
        self.assertEqual(sent, [])
        got = sum(
            e.flow_controlled_length or 0
            for e in server.events
            if isinstance(e, h2.events.DataReceived)
        )
        self.assertEqual(got, 10)
        server.h2.increment_flow_control_window(1000, stream_id=1)
        server.pump()
        self.assertEqual(sent, [None])

    def test_pausedTransportHoldsData(self) -> None:
        """
        While the transport pauses the protocol, nothing more is sent.
        """
        server = Server()
        server.client.pauseProducing()
        sent: list[object] = []
        server.call.send(b"later").addCallback(sent.append)
        server.pump()
        self.assertEqual(sent, [])
        server.client.resumeProducing()
        server.pump()
        self.assertEqual(sent, [None])

    def test_receiveWindowReopenedAsTaken(self) -> None:
        """
        The call's window is the largest message and its prefix; it is
        reopened only when the caller takes what came.
        """
        server = Server(Limits(maxMessageBytes=95))
        server.h2.send_headers(1, OK_HEADERS)
        server.h2.send_data(1, frameMessage(b"m" * 95))
        server.pump()
        self.assertEqual(server.h2.local_flow_control_window(1), 0)
        server.call.receive()
        server.pump()
        self.assertEqual(server.h2.local_flow_control_window(1), 100)
