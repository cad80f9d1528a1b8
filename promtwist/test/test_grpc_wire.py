"""
Tests for L{promtwist.grpc.status} and L{promtwist.grpc.messages}: the
encodings gRPC fixes, and its length-prefixed messages.
"""

from __future__ import annotations

import gzip
import struct

from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc.messages import MessageReader, frameMessage
from promtwist.grpc.status import (
    GrpcError,
    StatusCode,
    decodeMessage,
    encodeMessage,
    parseTimeout,
)


class GrpcMessageTests(SynchronousTestCase):
    def test_printableAsciiUnchanged(self) -> None:
        self.assertEqual(encodeMessage("no such path: app1"), b"no such path: app1")

    def test_percentAndNonAsciiEncoded(self) -> None:
        self.assertEqual(encodeMessage("100% ok\n"), b"100%25 ok%0A")
        self.assertEqual(encodeMessage("café"), b"caf%C3%A9")

    def test_roundTrip(self) -> None:
        text = "ünïcode 50% \t\x7f end"
        self.assertEqual(decodeMessage(encodeMessage(text)), text)

    def test_undecodableKept(self) -> None:
        self.assertEqual(decodeMessage(b"bad %FF byte"), "bad \ufffd byte")


class TimeoutTests(SynchronousTestCase):
    def test_units(self) -> None:
        self.assertEqual(parseTimeout(b"2H"), 7200.0)
        self.assertEqual(parseTimeout(b"3M"), 180.0)
        self.assertEqual(parseTimeout(b"5S"), 5.0)
        self.assertAlmostEqual(parseTimeout(b"250m"), 0.25)
        self.assertAlmostEqual(parseTimeout(b"99999999u"), 99.999999)
        self.assertAlmostEqual(parseTimeout(b"1000000n"), 0.001)

    def test_malformed(self) -> None:
        for value in (b"", b"5", b"S", b"123456789S", b"5s", b"-1S", b"1.5S", b"5 S"):
            error = self.assertRaises(GrpcError, parseTimeout, value)
            self.assertEqual(error.code, StatusCode.INTERNAL)
            self.assertIn("malformed grpc-timeout", error.message)


def _compressed(body: bytes) -> bytes:
    data = gzip.compress(body)
    return struct.pack(">BI", 1, len(data)) + data


class MessageReaderTests(SynchronousTestCase):
    def test_frame(self) -> None:
        self.assertEqual(frameMessage(b"abc"), b"\x00\x00\x00\x00\x03abc")

    def test_splitAnywhere(self) -> None:
        """
        Messages come out whole however DATA splits them, an empty one
        included.
        """
        wire = frameMessage(b"first") + frameMessage(b"") + frameMessage(b"third!")
        for cut in range(len(wire) + 1):
            reader = MessageReader(100, b"identity")
            out = reader.feed(wire[:cut]) + reader.feed(wire[cut:])
            self.assertEqual([m.payload() for m in out], [b"first", b"", b"third!"])
            self.assertEqual(reader.buffered, 0)
            reader.finish()

    def test_tooLargeFromPrefix(self) -> None:
        """
        A message over the limit is refused from its prefix alone, before
        its bytes are held.
        """
        reader = MessageReader(10, b"identity")
        error = self.assertRaises(GrpcError, reader.feed, struct.pack(">BI", 0, 11))
        self.assertEqual(error.code, StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(error.message, "message of 11 bytes exceeds the 10-byte limit")

    def test_badFlag(self) -> None:
        reader = MessageReader(10, b"identity")
        error = self.assertRaises(GrpcError, reader.feed, b"\x02\x00\x00\x00\x00")
        self.assertEqual(error.code, StatusCode.INTERNAL)
        self.assertIn("flag 2", error.message)

    def test_gzip(self) -> None:
        reader = MessageReader(100, b"gzip")
        messages = reader.feed(_compressed(b"zipped") + frameMessage(b"plain"))
        self.assertEqual([m.compressed for m in messages], [True, False])
        self.assertEqual([m.payload() for m in messages], [b"zipped", b"plain"])

    def test_compressedWithoutEncoding(self) -> None:
        reader = MessageReader(100, b"identity")
        error = self.assertRaises(GrpcError, reader.feed, _compressed(b"zipped"))
        self.assertEqual(error.code, StatusCode.INTERNAL)
        self.assertIn("without grpc-encoding", error.message)

    def test_gzipBomb(self) -> None:
        """
        A small message that inflates past the limit is refused, and only
        the limit's worth of it is ever inflated.
        """
        bomb = _compressed(b"\0" * 10_000_000)
        self.assertLess(len(bomb), 20_000)
        reader = MessageReader(100_000, b"gzip")
        [message] = reader.feed(bomb)
        self.assertEqual(message.body, bomb[5:])
        error = self.assertRaises(GrpcError, message.payload)
        self.assertEqual(error.code, StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("more than the 100000-byte limit", error.message)

    def test_corruptGzip(self) -> None:
        reader = MessageReader(100, b"gzip")
        [message] = reader.feed(b"\x01\x00\x00\x00\x04junk")
        error = self.assertRaises(GrpcError, message.payload)
        self.assertEqual(error.code, StatusCode.INTERNAL)
        self.assertIn("corrupt gzip message", error.message)

    def test_truncatedGzip(self) -> None:
        data = gzip.compress(b"x" * 1000)[:-6]
        reader = MessageReader(10_000, b"gzip")
        [message] = reader.feed(struct.pack(">BI", 1, len(data)) + data)
        error = self.assertRaises(GrpcError, message.payload)
        self.assertIn("not one whole gzip member", error.message)

    def test_endsInsideMessage(self) -> None:
        reader = MessageReader(100, b"identity")
        self.assertEqual(reader.feed(frameMessage(b"whole")[:4]), [])
        self.assertEqual(reader.buffered, 4)
        error = self.assertRaises(GrpcError, reader.finish)
        self.assertEqual(error.code, StatusCode.INTERNAL)
        self.assertIn("stream ended inside a message", error.message)
