"""
Tests for L{promtwist.protocol.framing}.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from promtwist.protocol.framing import FrameReceiver, FrameTooLarge
from promtwist.protocol.promtwist_pb2 import Frame, Ping, ScrapeChunk


class Recorder(FrameReceiver):
    """
    Keeps the frames it gets and the protocol errors it is told of; each
    error stops the parsing and drops the connection, as a link does.
    """

    MAX_LENGTH = 1024

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.errors: list[str] = []

    def frameReceived(self, frame: Frame) -> None:
        self.frames.append(frame)

    def protocolError(self, why: str) -> None:
        self.errors.append(why)
        self.paused = True
        self.transport.abortConnection()


def encode(frame: Frame) -> bytes:
    data = frame.SerializeToString()
    return struct.pack("!I", len(data)) + data


def connected() -> tuple[Recorder, StringTransport]:
    receiver = Recorder()
    transport = StringTransport()
    receiver.makeConnection(transport)
    return receiver, transport


class FramingTests(SynchronousTestCase):
    def test_splitAndMerged(self) -> None:
        """
        Frames cut at every possible byte, or several in one read, all
        arrive whole and in order.
        """
        frames = [Frame(ping=Ping(nonce=n)) for n in range(1, 6)]
        frames.append(Frame(scrape_chunk=ScrapeChunk(scrape_id=9, data=b"x" * 300, last=True)))
        stream = b"".join(encode(f) for f in frames)
        for step in (1, 2, 3, 7, 50, len(stream)):
            receiver, transport = connected()
            for i in range(0, len(stream), step):
                receiver.dataReceived(stream[i : i + step])
            self.assertEqual(receiver.frames, frames, f"step {step}")
            self.assertFalse(transport.disconnecting)

    def test_oversizedFrameAborts(self) -> None:
        """
        A length prefix above the limit (here 4 GiB - 1) aborts the
        connection at once, without waiting for the body, and logs why.
        """
        receiver, transport = connected()
        receiver.dataReceived(b"\xff\xff\xff\xff" + b"junk")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(receiver.frames, [])
        self.assertIn("exceeds the limit of 1024", "".join(receiver.errors))

    def test_garbageAborts(self) -> None:
        """
        Bytes that are not a protobuf Frame abort the connection; frames after
        the bad one in the same read are not processed.
        """
        receiver, transport = connected()
        garbage = b"\x07\x07\x07\x07\x07"
        receiver.dataReceived(
            struct.pack("!I", len(garbage)) + garbage + encode(Frame(ping=Ping(nonce=1)))
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(receiver.frames, [])
        self.assertIn("undecodable frame of 5 bytes", "".join(receiver.errors))

    def test_emptyFrameAborts(self) -> None:
        """
        A well-formed but empty Frame is refused too.
        """
        receiver, transport = connected()
        receiver.dataReceived(struct.pack("!I", 0))
        self.assertTrue(transport.disconnecting)
        self.assertIn("carries no message", "".join(receiver.errors))

    def test_handlerErrorCostsOnlyTheConnection(self) -> None:
        """
        An exception while handling a frame is logged and drops this
        connection; it does not escape into the reactor.
        """

        class Broken(Recorder):
            def frameReceived(self, frame: Frame) -> None:
                raise ZeroDivisionError("bug")

        receiver, transport = Broken(), StringTransport()
        receiver.makeConnection(transport)
        with capturedLogs() as events:
            receiver.dataReceived(encode(Frame(ping=Ping(nonce=1))))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(receiver.errors, ["internal error handling a ping frame"])
        self.assertIn("error handling a ping frame", logText(events))

    def test_sendFrame(self) -> None:
        """
        Sent frames carry the length prefix and decode back to the same frame.
        """
        receiver, transport = connected()
        frame = Frame(ping=Ping(nonce=42))
        receiver.sendFrame(frame)
        self.assertEqual(transport.value(), encode(frame))

    def test_sendTooLarge(self) -> None:
        """
        Sending more than the peer accepts is refused on this side.
        """
        receiver, transport = connected()
        receiver.peerMaxFrameBytes = 100
        self.assertRaises(
            FrameTooLarge, receiver.sendFrame, Frame(scrape_chunk=ScrapeChunk(data=b"x" * 200))
        )
        self.assertEqual(transport.value(), b"")


def logText(events: Sequence[LogEvent]) -> str:
    return "\n".join(formatEvent(e) for e in events)
