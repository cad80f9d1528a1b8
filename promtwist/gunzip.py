# -*- test-case-name: promtwist.test.test_gunzip -*-
"""
Streaming gzip decoding for bodies the proxy must pass on decompressed.

RFC 1952 lets a gzip body hold several members one after another, and a
client inflating it must inflate them all: one C{zlib.decompressobj} stops at
the end of the first member and leaves the rest in C{unused_data}, which is
how every member after the first used to be lost while Prometheus got a 200.

So L{Gunzip} starts a new decoder for every member, tells the start of a new
member (the gzip magic C{1f 8b}) from trailing garbage, notices a body that
ends inside a member, and bounds the inflated size over all members together
without ever inflating more than one byte past the limit.
"""

from __future__ import annotations

import zlib

from promtwist.config.settings import MiB

MAGIC = b"\x1f\x8b"
# The setting the inflated-size limit comes from, named in its error.
LIMIT_SETTING = "proxy.internal.maxUnzippedContentSizeMBytes"
# How many bytes of trailing garbage an error shows, in hex.
SHOWN_GARBAGE = 8


class GunzipError(Exception):
    """
    A gzip body could not be passed on decompressed.

    @ivar status: what Prometheus sees (502 for a broken body, 413 for one
        over the limit).
    @ivar type: the outcome type the scrape is counted under.
    """

    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = kind


def _invalid(reason: str) -> GunzipError:
    return GunzipError(f"invalid gzip body: {reason}", 502, "invalid_gzip")


class Gunzip:
    """
    Inflate one gzip body fed in pieces of any size: call L{feed} with each
    piece as it arrives, then L{finish} at the end of the body.

    Either raises L{GunzipError} at the first byte that makes the body
    unusable (so a broken or oversized body costs no more reading than it
    took to find out); after that the decoder is not used again.

    @ivar members: the gzip members started so far.
    @ivar inflated: the bytes inflated so far, over all members.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most bytes the whole body may inflate to.
        """
        self.limit = limit
        self.members = 0
        self.inflated = 0
        # The member being inflated; None between members (and before the
        # first), where the next bytes must be the gzip magic.
        self._member: zlib._Decompress | None = None
        # The first byte of what may be a magic, split from the second by a
        # piece boundary.
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """
        Inflate the next piece of the body.

        @return: the bytes it inflates to (possibly none yet).
        @raise GunzipError: the body is not valid gzip, or inflates past the
            limit.
        """
        out: list[bytes] = []
        while data:
            if self._member is None:
                data = self._startMember(self._pending + data)
                if self._member is None:
                    break
            member = self._member
            try:
                # One byte past what is left tells "over the limit" from
                # "exactly at it"; zlib never produces more than asked.
                piece = member.decompress(data, self.limit - self.inflated + 1)
            except zlib.error as e:
                raise _invalid(f"member {self.members}: {e}") from e
            self.inflated += len(piece)
            if self.inflated > self.limit:
                raise GunzipError(
                    f"decompressed body exceeds {self.limit / MiB:g} MiB ({LIMIT_SETTING})",
                    413,
                    "payload_too_large",
                )
            out.append(piece)
            if member.eof:
                data = member.unused_data
                self._member = None
            else:
                data = b""
        return b"".join(out)

    def finish(self) -> bytes:
        """
        The body ended: check that it ended between members.

        @return: what is left to pass on, which is nothing: every byte fed
            was inflated at once. It is returned so that a caller can write
            what C{finish} gives as it writes what L{feed} gives.
        @raise GunzipError: the body held no member, ended inside one, or
            ended with the first byte of something that is not a member.
        """
        if self._member is not None:
            raise _invalid(
                f"truncated: the body ends inside member {self.members}"
                f" after {self.inflated} inflated bytes"
            )
        if self._pending:
            raise self._garbage(self._pending)
        if not self.members:
            raise _invalid("truncated: the body is empty, with no gzip member")
        return b""

    def _startMember(self, data: bytes) -> bytes:
        """
        Start the next member if C{data} opens with the gzip magic; keep a
        lone first byte of it for the next piece.

        @return: the bytes for the new member's decoder.
        """
        self._pending = b""
        if not data.startswith(MAGIC[: len(data)]):
            raise self._garbage(data)
        if len(data) < len(MAGIC):
            self._pending = data
            return b""
        self._member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self.members += 1
        return data

    def _garbage(self, data: bytes) -> GunzipError:
        shown = data[:SHOWN_GARBAGE].hex(" ")
        more = " ..." if len(data) > SHOWN_GARBAGE else ""
        if not self.members:
            return _invalid(f"it does not start with the gzip magic 1f 8b but with {shown}{more}")
        return _invalid(
            f"trailing garbage after member {self.members}"
            f" (starting {shown}{more}; {len(data)} byte(s) seen)"
        )
