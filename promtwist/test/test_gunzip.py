"""
Tests for L{promtwist.gunzip}.
"""

from __future__ import annotations

import gzip
import zlib

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import MiB
from promtwist.gunzip import Gunzip, GunzipError


def member(data: bytes) -> bytes:
    """
    One gzip member, always with the same header bytes (mtime 0).
    """
    return gzip.compress(data, mtime=0)


def inflate(body: bytes, pieces: list[bytes] | None = None, limit: int = MiB) -> bytes:
    """
    Inflate C{body}, fed as C{pieces} when given, through L{Gunzip}.
    """
    decoder = Gunzip(limit)
    out = b"".join(decoder.feed(piece) for piece in (pieces or [body]))
    return out + decoder.finish()


class GunzipTests(SynchronousTestCase):
    def assertInvalid(self, body: bytes, *fragments: str, pieces: list[bytes] | None = None) -> str:
        error = self.assertRaises(GunzipError, inflate, body, pieces)
        self.assertEqual((error.status, error.type), (502, "invalid_gzip"))
        message = str(error)
        self.assertTrue(message.startswith("invalid gzip body: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_singleMember(self) -> None:
        self.assertEqual(inflate(member(b"up 1\n" * 100)), b"up 1\n" * 100)

    def test_manyMembers(self) -> None:
        """
        Every member of a multi-member body is inflated, in order.
        """
        parts = [b"a 1\n", b"b 2\n" * 50, b"c 3\n"]
        decoder = Gunzip(MiB)
        self.assertEqual(decoder.feed(b"".join(member(p) for p in parts)), b"".join(parts))
        self.assertEqual(decoder.finish(), b"")
        self.assertEqual(decoder.members, 3)

    def test_emptyMembers(self) -> None:
        """
        Members that inflate to nothing are valid, between others or alone.
        """
        empty = member(b"")
        self.assertEqual(inflate(empty), b"")
        self.assertEqual(inflate(empty + member(b"x 1\n") + empty + empty), b"x 1\n")

    def test_splitAtEveryOffset(self) -> None:
        """
        However the body is cut into two or three pieces (inside a header, a
        trailer, or the magic between members), the result is the same.
        """
        parts = [b"first 1\n" * 3, b"", b"second 2\n"]
        body = b"".join(member(p) for p in parts)
        for i in range(len(body) + 1):
            self.assertEqual(inflate(body, [body[:i], body[i:]]), b"".join(parts), i)
        for i in range(0, len(body), 3):
            for j in range(i, len(body), 5):
                pieces = [body[:i], body[i:j], body[j:]]
                self.assertEqual(inflate(body, pieces), b"".join(parts), (i, j))

    def test_byteAtATime(self) -> None:
        body = member(b"a 1\n") + member(b"b 2\n")
        self.assertEqual(inflate(body, [body[i : i + 1] for i in range(len(body))]), b"a 1\nb 2\n")

    def test_trailingGarbage(self) -> None:
        """
        Bytes after a member that do not start another are an error naming
        the member they follow and what they start with.
        """
        body = member(b"a 1\n") + member(b"b 2\n") + b"this is not gzip!"
        self.assertInvalid(body, "trailing garbage after member 2", "74 68 69 73", "17 byte(s)")

    def test_trailingGarbageInALaterPiece(self) -> None:
        body = member(b"a 1\n")
        self.assertInvalid(body + b"\x00", "after member 1", pieces=[body, b"\x00"])

    def test_trailingPartialMagic(self) -> None:
        """
        A body ending in the first byte of the magic is garbage, not a member:
        found only at the end, since the next piece might have completed it.
        """
        body = member(b"a 1\n")
        decoder = Gunzip(MiB)
        self.assertEqual(decoder.feed(body + b"\x1f"), b"a 1\n")
        error = self.assertRaises(GunzipError, decoder.finish)
        self.assertIn("trailing garbage after member 1 (starting 1f; 1 byte(s) seen)", str(error))

    def test_partialMagicThenGarbage(self) -> None:
        """
        A first byte of the magic followed by anything but its second byte is
        garbage, whether the two arrive together or apart.
        """
        body = member(b"a 1\n")
        self.assertInvalid(body + b"\x1f\x8c", "trailing garbage after member 1", "1f 8c")
        self.assertInvalid(body + b"\x1f\x8c", "starting 1f 8c", pieces=[body + b"\x1f", b"\x8c"])

    def test_magicThenBadHeader(self) -> None:
        """
        Bytes that start like a member but are not one fail in that member.
        """
        body = member(b"a 1\n") + b"\x1f\x8b\x07\x00garbage"
        self.assertInvalid(body, "member 2:")

    def test_notGzipAtAll(self) -> None:
        self.assertInvalid(b"up 1\n", "does not start with the gzip magic 1f 8b but with 75 70")

    def test_garbageShownShort(self) -> None:
        message = self.assertInvalid(member(b"") + b"z" * 10_000)
        self.assertIn("7a 7a 7a 7a 7a 7a 7a 7a ...; 10000 byte(s) seen", message)
        self.assertLess(len(message), 200)

    def test_truncated(self) -> None:
        """
        A body that ends inside a member, anywhere in it, is truncated.
        """
        body = member(b"a 1\n") + member(b"b 2\n" * 20)
        second = len(member(b"a 1\n"))
        for cut in range(second + 2, len(body)):
            self.assertInvalid(body[:cut], "truncated", "inside member 2")
        self.assertInvalid(body[:5], "truncated", "inside member 1")

    def test_empty(self) -> None:
        self.assertInvalid(b"", "truncated", "no gzip member")

    def test_corruptData(self) -> None:
        """
        zlib's own reason is given, with the member it was found in.
        """
        body = bytearray(member(b"a 1\n") * 2)
        # The second member's first deflate block: final, of the reserved type.
        body[len(body) // 2 + 10] = 0b111
        self.assertInvalid(bytes(body), "member 2: ", "invalid block type")

    def test_corruptTrailer(self) -> None:
        """
        A member whose CRC does not match its data is invalid.
        """
        body = bytearray(member(b"a 1\n"))
        body[-8] ^= 0xFF
        self.assertInvalid(bytes(body), "member 1:")


class LimitTests(SynchronousTestCase):
    def assertTooLarge(self, error: GunzipError) -> None:
        self.assertEqual((error.status, error.type), (413, "payload_too_large"))
        self.assertIn("proxy.internal.maxUnzippedContentSizeMBytes", str(error))

    def test_atTheLimit(self) -> None:
        self.assertEqual(len(inflate(member(b"x" * 1000), limit=1000)), 1000)

    def test_bomb(self) -> None:
        """
        A body that inflates far past the limit costs only its error: the
        decoder never produces more than one byte past the limit.
        """
        bomb = member(b"\x00" * (16 * MiB))
        self.assertLess(len(bomb), 100_000)
        decoder = Gunzip(MiB)
        outputs: list[int] = []
        pieces = [bomb[i : i + 4096] for i in range(0, len(bomb), 4096)]

        def feedAll() -> None:
            for piece in pieces:
                outputs.append(len(decoder.feed(piece)))

        self.assertTooLarge(self.assertRaises(GunzipError, feedAll))
        self.assertEqual(decoder.inflated, MiB + 1)
        self.assertLessEqual(sum(outputs), MiB)
        self.assertIn("exceeds 1 MiB", str(self.assertRaises(GunzipError, inflate, bomb)))

    def test_bombInOnePiece(self) -> None:
        decoder = Gunzip(1000)
        self.assertTooLarge(
            self.assertRaises(GunzipError, decoder.feed, member(b"\x00" * (16 * MiB)))
        )
        self.assertEqual(decoder.inflated, 1001)

    def test_totalOverMembers(self) -> None:
        """
        The limit applies to all members together, not to each.
        """
        body = member(b"x" * 600) + member(b"y" * 600)
        self.assertTooLarge(self.assertRaises(GunzipError, inflate, body, None, 1000))
        self.assertEqual(len(inflate(body, limit=1200)), 1200)

    def test_manyEmptyMembersWithinLimit(self) -> None:
        body = member(b"") * 1000 + member(b"z" * 10)
        decoder = Gunzip(10)
        self.assertEqual(decoder.feed(body), b"z" * 10)
        decoder.finish()
        self.assertEqual(decoder.members, 1001)

    def test_rawDeflateIsNotGzip(self) -> None:
        """
        zlib-wrapped deflate is not gzip: refused at its first bytes.
        """
        error = self.assertRaises(GunzipError, inflate, zlib.compress(b"a 1\n"))
        self.assertIn("does not start with the gzip magic", str(error))
