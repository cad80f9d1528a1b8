"""
L{promtwist.proxy.agentport}: the agent port hands a connection whose
first byte begins HTTP/2's preface to the gRPC server, and every other to
the native link, as before.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import ProxySettings
from promtwist.grpc.connection import GrpcServerProtocol
from promtwist.protocol.framing import encodeFrame
from promtwist.protocol.promtwist_pb2 import Frame, Hello
from promtwist.proxy.agentport import AgentPortProtocol
from promtwist.proxy.build import AgentSide, buildAgentSide
from promtwist.proxy.link import AgentLink
from promtwist.test.grpcpeer import PREFACE
from promtwist.test.test_link import TCPStringTransport

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class DetectionTests(SynchronousTestCase):
    def connect(
        self, **settings: object
    ) -> tuple[AgentSide, AgentPortProtocol, TCPStringTransport]:
        self.clock = Clock()
        side = buildAgentSide(ProxySettings(**settings), self.clock)  # type: ignore[arg-type]
        protocol = side.port.buildProtocol(_PEER)
        transport = TCPStringTransport(peerAddress=_PEER)
        protocol.makeConnection(transport)
        return side, protocol, transport

    def test_acceptedAsNative(self) -> None:
        """
        Until it sends, a connection is a native link holding a handshake
        place, as every agent-port connection did.
        """
        side, protocol, transport = self.connect()
        self.assertIsInstance(protocol.active, AgentLink)
        self.assertEqual(len(side.links.pending), 1)
        self.assertEqual(transport.value(), b"")

    def test_http2GoesToGrpc(self) -> None:
        """
        HTTP/2's preface: the native link lets go (its handshake place and
        timer freed, nothing written) and the gRPC server answers with its
        SETTINGS.
        """
        side, protocol, transport = self.connect()
        protocol.dataReceived(PREFACE)
        self.assertIsInstance(protocol.active, GrpcServerProtocol)
        self.assertEqual((side.links.pending, side.links.links), (set(), set()))
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 10.0)
        written = transport.value()
        # A SETTINGS frame: type 4 on stream 0.
        self.assertEqual(written[3:5], b"\x04\x00")
        self.assertFalse(transport.disconnecting)

    def test_prefaceInPieces(self) -> None:
        """
        The preface's first bytes one at a time: nothing is decided, or
        given to anyone, until they can only be HTTP/2's.
        """
        _, protocol, transport = self.connect()
        for byte in PREFACE[:3]:
            protocol.dataReceived(bytes([byte]))
            self.assertIsInstance(protocol.active, AgentLink)
        protocol.dataReceived(PREFACE[3:])
        self.assertIsInstance(protocol.active, GrpcServerProtocol)
        self.assertEqual(transport.value()[3:5], b"\x04\x00")

    def test_http11PostStaysNative(self) -> None:
        """
        HTTP/1.1's POST begins with P too: it is the native link's, which
        closes it (and logs that this is the agent port).
        """
        _, protocol, transport = self.connect()
        protocol.dataReceived(b"POST /metrics HTTP/1.1\r\n\r\n")
        self.assertIsInstance(protocol.active, AgentLink)
        self.assertTrue(transport.disconnecting)

    def test_nativeStaysNative(self) -> None:
        """
        A native Hello is the native link's: it is answered as before.
        """
        _, protocol, transport = self.connect()
        hello = Frame(hello=Hello(agent_name="a", protocol_version=1))
        protocol.dataReceived(encodeFrame(hello))
        self.assertIsInstance(protocol.active, AgentLink)
        self.assertNotEqual(transport.value(), b"")

    def test_grpcOff(self) -> None:
        """
        With gRPC agents off, HTTP/2 is the native link's too, which
        refuses it as the frame length it reads.
        """
        side, protocol, transport = self.connect(agent_grpc_enabled=False)
        self.assertIsNone(side.grpc)
        protocol.dataReceived(PREFACE)
        self.assertIsInstance(protocol.active, AgentLink)
        self.assertTrue(transport.disconnecting)

    def test_connectionLostBeforeAnyByte(self) -> None:
        """
        A connection lost before it sent anything is the native link's to
        count and forget.
        """
        side, protocol, _ = self.connect()
        protocol.connectionLost()
        self.assertEqual((side.links.pending, side.links.links), (set(), set()))
