"""
Tests for L{promtwist.grpc.tunnel.CallTransport}: a byte stream in a
call's messages, with the call's flow control as backpressure both ways.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from promtwist.grpc.tunnel import BUFFER_BYTES, RUN_BYTES, CallTransport


class FakeCall:
    """
    A call whose sends wait until the test says they went, and whose
    messages the test delivers.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Deferred[None]]] = []
        self.receiving: Deferred[bytes | None] | None = None
        self.finished = 0
        self.resets: list[str] = []

    def send(self, message: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.sent.append((message, d))
        return d

    def receive(self) -> Deferred[bytes | None]:
        assert self.receiving is None
        self.receiving = Deferred(lambda _: setattr(self, "receiving", None))
        return self.receiving

    def deliver(self, message: bytes | None) -> None:
        receiving, self.receiving = self.receiving, None
        assert receiving is not None
        receiving.callback(message)

    def flush(self) -> None:
        sent, self.sent = self.sent, []
        for _, d in sent:
            d.callback(None)


@implementer(IPushProducer)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: list[Failure] = []
        self.pauses = 0
        self.resumes = 0

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost.append(reason)

    def pauseProducing(self) -> None:
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.resumes += 1

    def stopProducing(self) -> None:
        pass


class TunnelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.call = FakeCall()
        self.connection = StringTransport()
        self.transport = CallTransport(
            self.call,
            self.connection,  # type: ignore[arg-type]
            self.finish,
            self.call.resets.append,
            self.clock,
        )
        self.protocol = Recorder()
        self.transport.start(self.protocol)
        self.transport.registerProducer(self.protocol, True)

    def finish(self) -> None:
        self.call.finished += 1

    def test_bytesBothWays(self) -> None:
        """
        Each message received is bytes for the protocol; what it writes
        goes in runs of at most RUN_BYTES.
        """
        self.call.deliver(b"abc")
        self.call.deliver(b"def")
        self.assertEqual(self.protocol.data, b"abcdef")
        self.transport.writeSequence([b"x" * RUN_BYTES, b"y"])
        self.assertEqual([len(m) for m, _ in self.call.sent], [RUN_BYTES, 1])
        self.assertEqual(self.transport.getPeer(), self.connection.getPeer())

    def test_writeBackpressure(self) -> None:
        """
        More than BUFFER_BYTES not yet taken pauses the protocol; all of it
        taken resumes it.
        """
        self.transport.write(b"x" * BUFFER_BYTES)
        self.assertEqual(self.protocol.pauses, 0)
        self.transport.write(b"y")
        self.assertEqual(self.protocol.pauses, 1)
        self.transport.write(b"z")
        self.assertEqual(self.protocol.pauses, 1)
        self.call.flush()
        self.assertEqual(self.protocol.resumes, 1)

    def test_readBackpressure(self) -> None:
        """
        While the protocol pauses the transport, no message is taken from
        the call (whose window then stays shut); resuming takes the next.
        """
        self.transport.pauseProducing()
        self.call.deliver(b"one")
        self.assertIsNone(self.call.receiving)
        self.transport.resumeProducing()
        self.assertIsNotNone(self.call.receiving)
        self.assertEqual(self.protocol.data, b"one")

    def test_loseConnectionWaitsForSends(self) -> None:
        """
        loseConnection ends the call well once what was written has gone;
        the protocol's connection is lost on the next turn, cleanly.
        """
        self.transport.write(b"last words")
        self.transport.loseConnection()
        self.assertEqual(self.call.finished, 0)
        self.transport.write(b"dropped")
        self.assertEqual(len(self.call.sent), 1)
        self.call.flush()
        self.assertEqual(self.call.finished, 1)
        self.assertEqual(self.protocol.lost, [])
        self.clock.advance(0)
        [reason] = self.protocol.lost
        reason.trap(ConnectionDone)

    def test_peerHalfClose(self) -> None:
        """
        The peer ending its half is the end: the call ends well.
        """
        self.call.deliver(None)
        self.assertEqual(self.call.finished, 1)
        self.clock.advance(0)
        self.protocol.lost[0].trap(ConnectionDone)

    def test_abort(self) -> None:
        """
        abortConnection resets the call at once; nothing more is read.
        """
        self.transport.abortConnection()
        self.assertEqual(self.call.resets, ["the link was aborted"])
        self.assertIsNone(self.call.receiving)
        self.transport.abortConnection()
        self.assertEqual(len(self.call.resets), 1)
        self.clock.advance(0)
        [reason] = self.protocol.lost
        reason.trap(ConnectionLost)

    def test_callEnded(self) -> None:
        """
        A call that went away from under the protocol is its connection
        lost, for the call's reason; a failed receive too.
        """
        self.transport.callEnded(Failure(ConnectionLost("reset by the peer")))
        self.clock.advance(0)
        [reason] = self.protocol.lost
        self.assertIn("reset by the peer", reason.getErrorMessage())

    def test_receiveFails(self) -> None:
        receiving = self.call.receiving
        assert receiving is not None
        self.call.receiving = None
        receiving.errback(ConnectionLost("gone"))
        self.clock.advance(0)
        self.assertEqual(len(self.protocol.lost), 1)

    def test_plainIsNotTLS(self) -> None:
        self.assertFalse(ISSLTransport.providedBy(self.transport))
