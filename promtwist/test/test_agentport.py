"""
L{promtwist.proxy.agentport}: the agent port tells a connection's protocol
from its first bytes before either protocol admits it, hands HTTP/2 to the
gRPC server under its own caps, and every other connection to the native
link, as before.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import ProxySettings
from promtwist.grpc import proxy_service_pb2 as pb
from promtwist.grpc.connection import GrpcRefusal, GrpcServerProtocol
from promtwist.grpc.messages import frameMessage
from promtwist.grpc.status import StatusCode
from promtwist.protocol.framing import encodeFrame
from promtwist.protocol.promtwist_pb2 import Frame, Hello
from promtwist.proxy.agentport import GRPC_OFF, AgentPortProtocol
from promtwist.proxy.build import AgentSide, buildAgentSide
from promtwist.proxy.link import AgentLink
from promtwist.test.grpcpeer import PREFACE, RawPeer, data
from promtwist.test.test_link import TCPStringTransport

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
_PATH_MAP_SIZE = b"/ProxyService/pathMapSize"


class _PortCase(SynchronousTestCase):
    def side(self, **settings: object) -> AgentSide:
        self.clock = Clock()
        side = buildAgentSide(ProxySettings(**settings), self.clock)  # type: ignore[arg-type]
        return side

    def connect(self, side: AgentSide) -> tuple[AgentPortProtocol, TCPStringTransport]:
        protocol = side.port.buildProtocol(_PEER)
        transport = TCPStringTransport(peerAddress=_PEER)
        protocol.makeConnection(transport)
        assert isinstance(protocol, AgentPortProtocol)
        return protocol, transport

    def grpcPeer(self, side: AgentSide) -> tuple[AgentPortProtocol, RawPeer]:
        """
        A raw HTTP/2 client on a new agent-port connection (preface and
        SETTINGS sent).
        """
        protocol, transport = self.connect(side)
        return protocol, RawPeer((), clock=self.clock, over=(protocol, transport))


class DetectionTests(_PortCase):
    def test_undecidedUntilItSends(self) -> None:
        """
        Until it sends, a connection is neither protocol's: it holds no
        handshake place and is written nothing.
        """
        side = self.side()
        protocol, transport = self.connect(side)
        self.assertIsNone(protocol.active)
        self.assertEqual((side.links.pending, side.links.links), (set(), set()))
        self.assertEqual(len(side.port.undecided), 1)
        self.assertEqual(transport.value(), b"")

    def test_http2GoesToGrpc(self) -> None:
        """
        HTTP/2's preface: the gRPC server answers with its SETTINGS; the
        native link never saw the connection.
        """
        side = self.side()
        protocol, transport = self.connect(side)
        protocol.dataReceived(PREFACE)
        self.assertIsInstance(protocol.active, GrpcServerProtocol)
        self.assertEqual((side.links.pending, side.links.links), (set(), set()))
        self.assertEqual(len(side.port.undecided), 0)
        written = transport.value()
        # A SETTINGS frame: type 4 on stream 0.
        self.assertEqual(written[3:5], b"\x04\x00")
        self.assertFalse(transport.disconnecting)

    def test_prefaceInPieces(self) -> None:
        """
        The preface's first bytes one at a time: nothing is decided, or
        given to anyone, until they can only be HTTP/2's.
        """
        side = self.side()
        protocol, transport = self.connect(side)
        for byte in PREFACE[:3]:
            protocol.dataReceived(bytes([byte]))
            self.assertIsNone(protocol.active)
        protocol.dataReceived(PREFACE[3:])
        self.assertIsInstance(protocol.active, GrpcServerProtocol)
        self.assertEqual(transport.value()[3:5], b"\x04\x00")

    def test_http11PostStaysNative(self) -> None:
        """
        HTTP/1.1's POST begins with P too: it is the native link's, which
        closes it (and logs that this is the agent port).
        """
        protocol, transport = self.connect(self.side())
        protocol.dataReceived(b"POST /metrics HTTP/1.1\r\n\r\n")
        self.assertIsInstance(protocol.active, AgentLink)
        self.assertTrue(transport.disconnecting)

    def test_nativeStaysNative(self) -> None:
        """
        A native Hello is the native link's, admitted then: it is answered
        as before.
        """
        side = self.side()
        protocol, transport = self.connect(side)
        hello = Frame(hello=Hello(agent_name="a", protocol_version=1))
        protocol.dataReceived(encodeFrame(hello))
        self.assertIsInstance(protocol.active, AgentLink)
        self.assertNotEqual(transport.value(), b"")

    def test_undecidedInTime(self) -> None:
        """
        A connection that sends nothing is aborted at
        C{proxy.internal.handshakeTimeoutSecs}, and its place freed.
        """
        side = self.side(handshake_timeout_secs=3.0)
        _, transport = self.connect(side)
        self.clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(side.port.undecided), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_undecidedCapped(self) -> None:
        """
        Undecided connections are capped by what the two protocols admit
        together; one over is closed unanswered, its metric counted.
        """
        side = self.side(
            max_pending_handshakes=1,
            max_pending_handshakes_per_address=1,
            max_waiting_handshakes=0,
            max_unauthenticated_grpc_connections=1,
            max_unauthenticated_grpc_connections_per_address=2,
        )
        self.connect(side)
        self.connect(side)
        protocol = side.port.buildProtocol(_PEER)
        transport = TCPStringTransport(peerAddress=_PEER)
        protocol.makeConnection(transport)
        self.assertNotIsInstance(protocol, AgentPortProtocol)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_connectionLostBeforeAnyByte(self) -> None:
        """
        A connection lost before it sent anything frees its place and its
        timer.
        """
        side = self.side()
        protocol, _ = self.connect(side)
        protocol.connectionLost()
        self.assertEqual(len(side.port.undecided), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_grpcOff(self) -> None:
        """
        With gRPC agents off, an HTTP/2 client's call is answered
        UNAVAILABLE with a reason naming prometheus-proxy agents and the
        setting, and the connection goes with GOAWAY.
        """
        side = self.side(agent_grpc_enabled=False)
        self.assertIsNone(side.grpc)
        protocol, peer = self.grpcPeer(side)
        self.assertIsInstance(protocol.active, GrpcRefusal)
        peer.request(1, _PATH_MAP_SIZE)
        answer = peer.answer(1)
        self.assertEqual(answer.status, StatusCode.UNAVAILABLE.value)
        self.assertEqual(answer.message, GRPC_OFF.encode())
        self.assertIn(b"prometheus-proxy agent", answer.message or b"")
        self.assertIn(b"proxy.agent.grpcEnabled = false", answer.message or b"")
        self.assertIsNotNone(peer.goAway)
        self.assertTrue(peer.transport.disconnecting)


class GrpcAdmissionTests(_PortCase):
    """
    gRPC connections have caps of their own, not the native handshake's;
    one must make an authenticated call within the handshake timeout.
    """

    def test_nativeCapsDoNotCountGrpc(self) -> None:
        """
        More gRPC connections at once from one address than the native
        per-address handshake share (a front end's burst, the reviewer's
        C{t_nginx_burst.py}): each is served HTTP/2, none is sent a native
        Reject.
        """
        side = self.side(max_pending_handshakes_per_address=2)
        # Accepted together, before any sent its preface (nginx's burst).
        connections = [self.connect(side) for _ in range(5)]
        for protocol, transport in connections:
            protocol.dataReceived(PREFACE)
            self.assertIsInstance(protocol.active, GrpcServerProtocol)
            self.assertEqual(transport.value()[3:5], b"\x04\x00")
        self.assertEqual(side.port.grpcAdmission.open, 5)

    def test_unauthenticatedPerAddress(self) -> None:
        """
        Beyond C{maxUnauthenticatedGrpcConnectionsPerAddress} from one
        address, a connection's call is refused UNAVAILABLE naming the
        setting.
        """
        side = self.side(max_unauthenticated_grpc_connections_per_address=2)
        self.grpcPeer(side)
        self.grpcPeer(side)
        protocol, peer = self.grpcPeer(side)
        self.assertIsInstance(protocol.active, GrpcRefusal)
        peer.request(1, _PATH_MAP_SIZE)
        answer = peer.answer(1)
        self.assertEqual(answer.status, StatusCode.UNAVAILABLE.value)
        self.assertIn(
            b"proxy.internal.maxUnauthenticatedGrpcConnectionsPerAddress", answer.message or b""
        )
        self.assertEqual(side.port.grpcAdmission.open, 2)

    def test_refusalBoundedInTime(self) -> None:
        """
        A refused connection that sends no call is closed with GOAWAY
        within a second.
        """
        side = self.side(max_unauthenticated_grpc_connections=1)
        self.grpcPeer(side)
        _, peer = self.grpcPeer(side)
        self.clock.advance(1)
        peer.read()
        self.assertIsNotNone(peer.goAway)
        self.assertTrue(peer.transport.disconnecting)

    def test_totalCap(self) -> None:
        """
        At C{maxGrpcConnections}, a further connection is refused naming it.
        """
        side = self.side(max_grpc_connections=1)
        self.grpcPeer(side)
        _, peer = self.grpcPeer(side)
        peer.request(1, _PATH_MAP_SIZE)
        self.assertIn(b"proxy.internal.maxGrpcConnections", peer.answer(1).message or b"")

    def test_authenticatedCallProves(self) -> None:
        """
        A call with a valid token proves its connection: it no longer
        counts as unauthenticated, and the handshake timeout no longer
        applies to it.
        """
        side = self.side(agent_token="s3cret", max_unauthenticated_grpc_connections_per_address=1)
        protocol, peer = self.grpcPeer(side)
        peer.request(
            1,
            _PATH_MAP_SIZE,
            [pb.PathMapSizeRequest().SerializeToString()],
            extra=[(b"agent-token", b"s3cret")],
        )
        self.assertEqual(peer.answer(1).status, StatusCode.OK.value)
        self.assertEqual(len(side.port.grpcAdmission.unauthenticated), 0)
        second, _ = self.grpcPeer(side)
        self.assertIsInstance(second.active, GrpcServerProtocol)
        self.clock.advance(side.links.settings.handshake_timeout_secs)
        peer.read()
        self.assertIsNone(peer.goAway)
        protocol.connectionLost()
        self.assertEqual(side.port.grpcAdmission.open, 1)

    def test_unauthenticatedClosedInTime(self) -> None:
        """
        A connection whose calls carry no valid token is refused each call
        at its HEADERS (what it sends on the stream is not held), and is
        closed at the handshake timeout however busy it keeps.
        """
        side = self.side(agent_token="s3cret")
        protocol, peer = self.grpcPeer(side)
        peer.request(1, b"/ProxyService/sendHeartBeat", None)
        self.assertEqual(peer.answer(1).status, StatusCode.UNAUTHENTICATED.value)
        # All but the last byte of a large message: nothing is buffered.
        message = frameMessage(b"x" * 60000)[:-1]
        peer.send(*(data(1, message[i : i + 16384]) for i in range(0, len(message), 16384)))
        active = protocol.active
        assert isinstance(active, GrpcServerProtocol)
        self.assertEqual(active._streams, {})
        self.clock.advance(side.links.settings.handshake_timeout_secs - 1)
        peer.request(3, _PATH_MAP_SIZE, None)
        peer.read()
        self.assertIsNone(peer.goAway)
        self.clock.advance(1)
        peer.read()
        assert peer.goAway is not None
        self.assertIn(b"no authenticated call within 10 s", peer.goAway.additional_data)
        self.assertTrue(peer.transport.disconnecting)
        protocol.connectionLost()
        self.assertEqual(side.port.grpcAdmission.open, 0)
        self.assertEqual(len(side.port.grpcAdmission.unauthenticated), 0)
