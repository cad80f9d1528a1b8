"""
The gRPC transport against a real client: grpcio (grpc-core, the C
implementation) on loopback, calling the test service C{test.Echo} and two
of upstream's C{ProxyService} methods with their generated messages.

grpcio runs its own threads: every call here is one of its futures, whose
completion is handed back to the reactor with C{callFromThread}, or, for
a response stream, iterated in the reactor's thread pool; the reactor
never waits on grpcio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import grpc
from hpack import Encoder
from hyperframe.frame import SettingsFrame
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, IReactorSSL, IReactorThreads
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.grpc.call import ServerCall
from promtwist.grpc.connection import GrpcServerFactory, GrpcServerProtocol
from promtwist.grpc.limits import Limits
from promtwist.grpc.service import Method, unary
from promtwist.test.certs import certificates
from promtwist.test.grpcpeer import PREFACE, EchoService, headersFrame, requestHeaders, reset
from promtwist.test.helpers import RawClient, eventually

_threads = cast(IReactorThreads, reactor)


def _fromFuture(future: Any) -> Deferred[Any]:
    """
    A Deferred in the reactor for a grpcio future completed in grpcio's
    threads.
    """
    result: Deferred[Any] = Deferred()

    def done(f: Any) -> None:
        try:
            value = f.result()
        except Exception as e:  # noqa: BLE001  # grpc.RpcError and its kin
            _threads.callFromThread(result.errback, Failure(e))
        else:
            _threads.callFromThread(result.callback, value)

    future.add_done_callback(done)
    return result


class _TrackedProtocol(GrpcServerProtocol):
    """
    Notes what it received and when it is lost, so a test can wait for
    its server side to close (trial's clean-reactor check) and measure
    what came over the wire.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lost: Deferred[None] = Deferred()
        self.bytesReceived = 0

    def dataReceived(self, data: bytes) -> None:
        self.bytesReceived += len(data)
        super().dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost()
        self.lost.callback(None)


class _TrackedFactory(GrpcServerFactory):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.protocols: list[_TrackedProtocol] = []

    def buildProtocol(self, addr: object) -> _TrackedProtocol:
        protocol = _TrackedProtocol(self.methods, self.limits, self.clock)
        self.protocols.append(protocol)
        return protocol


def _connectAgent(request: Any, call: ServerCall[Any, Any]) -> Any:
    call.addInitialMetadata("agent-id", "1")
    return pb.Empty()


def _registerPath(
    request: pb.RegisterPathRequest, call: ServerCall[Any, Any]
) -> pb.RegisterPathResponse:
    token = call.get("agent-token")
    return pb.RegisterPathResponse(
        valid=token == "s3cret",
        reason=f"{request.agent_id}:{request.path}:{request.labels}",
        path_count=1,
        path_id=-1 if token != "s3cret" else 0,
    )


def _upstreamMethods() -> list[Method]:
    return [
        unary(
            "/ProxyService/connectAgent",
            _connectAgent,
            pb.Empty.FromString,
            pb.Empty.SerializeToString,
        ),
        unary(
            "/ProxyService/registerPath",
            _registerPath,
            pb.RegisterPathRequest.FromString,
            pb.RegisterPathResponse.SerializeToString,
        ),
    ]


def _same(data: bytes) -> bytes:
    return data


class _Loopback(TestCase):
    timeout = 30
    limits: Limits | None = None

    def setUp(self) -> None:
        self.service = EchoService()
        self.factory = _TrackedFactory(
            self.service.methods() + _upstreamMethods(), self.limits, reactor
        )
        self.port = self.listen()
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        self.address = f"127.0.0.1:{address.port}"
        self.channel = self.makeChannel()
        # Last in, first out: the channel is closed, then the server side
        # waited for, then the port closed.
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self._serverSidesClosed)
        self.addCleanup(self.channel.close)

    def listen(self) -> IListeningPort:
        port: IListeningPort = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        return port

    def makeChannel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    async def _serverSidesClosed(self) -> None:
        for protocol in self.factory.protocols:
            await protocol.lost

    def call(self, method: str, request: bytes, **kw: Any) -> Deferred[Any]:
        stub = self.channel.unary_unary(
            method, request_serializer=_same, response_deserializer=_same
        )
        kw.setdefault("timeout", 10)
        return _fromFuture(stub.future(request, **kw))


class GrpcioTests(_Loopback):
    async def test_unary(self) -> None:
        self.assertEqual(await self.call("/test.Echo/unary", b"hello"), b"hello")

    async def test_status(self) -> None:
        """
        A handler's status and percent-encoded message reach the client
        decoded.
        """
        failure = await self.assertFailure(
            self.call("/test.Echo/unary", "fail:7:agent 42 — not yours (100%)".encode()),
            grpc.RpcError,
        )
        self.assertEqual(failure.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(failure.details(), "agent 42 — not yours (100%)")

    async def test_unknownMethod(self) -> None:
        failure = await self.assertFailure(
            self.call("/io.prometheus.ProxyService/connectAgent", b""), grpc.RpcError
        )
        self.assertEqual(failure.code(), grpc.StatusCode.UNIMPLEMENTED)

    async def test_metadata(self) -> None:
        """
        Custom metadata (text and binary) reaches the handler; the
        handler's initial metadata reaches the client.
        """
        stub = self.channel.unary_unary(
            "/test.Echo/metadata", request_serializer=_same, response_deserializer=_same
        )
        future = stub.future(
            b"", timeout=10, metadata=(("agent-token", "s3cret"), ("blob-bin", b"\x00\x01\xff"))
        )
        answer = await _fromFuture(future)
        self.assertIn(b"agent-token='s3cret'\n", answer)
        self.assertIn(b"blob-bin=b'\\x00\\x01\\xff'\n", answer)
        self.assertIn(("agent-id", "7"), future.initial_metadata())

    async def test_serverStreaming(self) -> None:
        stub = self.channel.unary_stream(
            "/test.Echo/count", request_serializer=_same, response_deserializer=_same
        )
        responses: Iterator[bytes] = stub(b"1000", timeout=10)
        received = await deferToThread(list, responses)
        self.assertEqual(received, [b"%d" % i for i in range(1000)])

    async def test_clientStreaming(self) -> None:
        stub = self.channel.stream_unary(
            "/test.Echo/collect", request_serializer=_same, response_deserializer=_same
        )
        parts = [b"part%d" % i for i in range(50)]
        self.assertEqual(await _fromFuture(stub.future(iter(parts), timeout=10)), b",".join(parts))

    async def test_bidirectional(self) -> None:
        stub = self.channel.stream_stream(
            "/test.Echo/chat", request_serializer=_same, response_deserializer=_same
        )
        responses = stub(iter([b"a", b"b", b"c"]), timeout=10)
        self.assertEqual(await deferToThread(list, responses), [b"re: a", b"re: b", b"re: c"])

    async def test_largeMessages(self) -> None:
        """
        Messages bigger than a frame and than the client's first window
        go both ways under flow control.
        """
        body = bytes(range(256)) * 12_000  # 3 MB, under the 4 MiB limit
        self.assertEqual(await self.call("/test.Echo/unary", body), body)

    async def test_gzip(self) -> None:
        """
        A gzip-compressed request (C{grpc-encoding: gzip}) is decoded: 1 MiB
        of zeros costs the wire a few kilobytes.
        """
        body = b"\0" * (1024 * 1024)
        answer = await self.call("/test.Echo/unary", body, compression=grpc.Compression.Gzip)
        self.assertEqual(answer, body)
        self.assertLess(self.factory.protocols[0].bytesReceived, 64 * 1024)

    async def test_deadline(self) -> None:
        """
        A call past its deadline fails at the client with
        C{DEADLINE_EXCEEDED}, and its handler is cancelled.
        """
        failure = await self.assertFailure(
            self.call("/test.Echo/hold", b"", timeout=0.3), grpc.RpcError
        )
        self.assertEqual(failure.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        await eventually(self, lambda: self.service.cancelled == ["/test.Echo/hold"], "cancelled")
        self.assertEqual(len(self.service.held), 1)
        self.assertIsNotNone(self.service.held[0].deadline)

    async def test_cancel(self) -> None:
        """
        A client that cancels its call resets the stream; the handler is
        cancelled.
        """
        stub = self.channel.unary_unary(
            "/test.Echo/hold", request_serializer=_same, response_deserializer=_same
        )
        future = stub.future(b"", timeout=10)
        answer = _fromFuture(future)
        await eventually(self, lambda: bool(self.service.held), "the call arrived")
        future.cancel()
        await self.assertFailure(answer, grpc.FutureCancelledError)
        await eventually(self, lambda: self.service.cancelled == ["/test.Echo/hold"], "cancelled")

    async def test_upstreamMessages(self) -> None:
        """
        Upstream's generated messages, on upstream's wire names (no
        package): C{agent-id} read from C{connectAgent}'s headers, the
        token sent as metadata on C{registerPath}.
        """
        connect = self.channel.unary_unary(
            "/ProxyService/connectAgent",
            request_serializer=pb.Empty.SerializeToString,
            response_deserializer=pb.Empty.FromString,
        )
        future = connect.future(pb.Empty(), timeout=10)
        await _fromFuture(future)
        self.assertIn(("agent-id", "1"), future.initial_metadata())
        register = self.channel.unary_unary(
            "/ProxyService/registerPath",
            request_serializer=pb.RegisterPathRequest.SerializeToString,
            response_deserializer=pb.RegisterPathResponse.FromString,
        )
        request = pb.RegisterPathRequest(agent_id="1", path="app1_metrics", labels="{}")
        answer = await _fromFuture(
            register.future(request, timeout=10, metadata=(("agent-token", "s3cret"),))
        )
        self.assertEqual(
            (answer.valid, answer.reason, answer.path_id), (True, "1:app1_metrics:{}", 0)
        )


class TLSTests(_Loopback):
    """
    TLS with ALPN C{h2}, as grpcio (and grpc-java) require.
    """

    def listen(self) -> IListeningPort:
        self.certs = certificates(self)
        with open(self.certs.server.cert, "rb") as c, open(self.certs.server.key, "rb") as k:
            pair = PrivateCertificate.loadPEM(c.read() + k.read())
        options = CertificateOptions(
            privateKey=pair.privateKey.original,
            certificate=pair.original,
            acceptableProtocols=[b"h2"],
        )
        port: IListeningPort = cast(IReactorSSL, reactor).listenSSL(
            0, self.factory, options, interface="127.0.0.1"
        )
        return port

    def makeChannel(self) -> grpc.Channel:
        with open(self.certs.ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(
            self.address, credentials, options=(("grpc.ssl_target_name_override", "localhost"),)
        )

    async def test_unary(self) -> None:
        self.assertEqual(await self.call("/test.Echo/unary", b"over TLS"), b"over TLS")
        transport = self.factory.protocols[0].transport
        assert transport is not None
        self.assertEqual(transport.negotiatedProtocol, b"h2")  # type: ignore[attr-defined]


class HostileNeighbourTests(_Loopback):
    """
    A hostile connection costs only itself: grpcio is served beside it.
    """

    limits = Limits(maxResetsPerWindow=20)

    async def _raw(self, data: bytes) -> RawClient:
        client = RawClient()
        host, port = self.address.split(":")
        await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), client)
        client.send(data)
        await client.closed
        return client

    async def test_notHTTP2(self) -> None:
        """
        promtwist's own framing or HTTP/1.1 on the gRPC port: GOAWAY
        PROTOCOL_ERROR, then closed.
        """
        client = await self._raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"Invalid HTTP/2 preamble", client.received)
        self.assertEqual(await self.call("/test.Echo/unary", b"still here"), b"still here")

    async def test_rapidReset(self) -> None:
        encoder = Encoder()
        frames = [PREFACE, SettingsFrame(0).serialize()]
        headers = requestHeaders(b"/test.Echo/hold")
        for streamId in range(1, 101, 2):
            frames += [
                headersFrame(encoder, streamId, headers).serialize(),
                reset(streamId).serialize(),
            ]
        client = await self._raw(b"".join(frames))
        self.assertIn(b"too many stream resets", client.received)
        self.assertEqual(await self.call("/test.Echo/unary", b"still here"), b"still here")
