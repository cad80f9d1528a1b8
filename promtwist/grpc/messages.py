# -*- test-case-name: promtwist.test.test_grpc_wire -*-
"""
gRPC's length-prefixed messages on one stream's DATA: a 1-byte compressed
flag, a 4-byte big-endian length, then that many bytes, compressed with the
stream's C{grpc-encoding} when the flag is 1.

Only C{gzip} is decoded (what grpc-java and grpcio send when a client asks
for compression; an unmodified prometheus-proxy agent asks for none).
Messages promtwist sends are never compressed, which every client accepts.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from promtwist.grpc.status import GrpcError, StatusCode

_PREFIX = struct.Struct(">BI")

#: The message encodings this transport decodes, for C{grpc-accept-encoding}.
ACCEPTED_ENCODINGS = (b"identity", b"gzip")


def frameMessage(message: bytes) -> bytes:
    """
    C{message} with its uncompressed prefix, ready for DATA frames.
    """
    return _PREFIX.pack(0, len(message)) + message


def _gunzip(data: bytes, limit: int) -> bytes:
    """
    Decompress one gzip message, stopping as soon as it passes C{limit}
    bytes, so a small bomb costs at most C{limit} bytes of memory.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as e:
        raise GrpcError(StatusCode.INTERNAL, f"corrupt gzip message: {e}") from None
    if len(out) > limit:
        raise GrpcError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"gzip message decompresses to more than the {limit}-byte limit",
        )
    if not inflater.eof or inflater.unused_data:
        raise GrpcError(StatusCode.INTERNAL, "corrupt gzip message: not one whole gzip member")
    return out


@dataclass(frozen=True)
class Message:
    """
    One message as it came, compressed or not: what a stream holds until
    its handler takes it, so that what it holds is bounded by its window,
    not by what its messages decompress to.
    """

    body: bytes
    compressed: bool
    limit: int

    def payload(self) -> bytes:
        """
        The message's bytes, decompressed.

        @raise GrpcError: C{RESOURCE_EXHAUSTED} past the limit, C{INTERNAL}
            for a corrupt gzip member.
        """
        return _gunzip(self.body, self.limit) if self.compressed else self.body


class MessageReader:
    """
    Splits one stream's DATA into whole messages.

    @ivar buffered: how many bytes of an unfinished message it holds.
    """

    def __init__(self, maxMessageBytes: int, encoding: bytes) -> None:
        """
        @param maxMessageBytes: the largest message, on the wire and
            decompressed, that this stream accepts.
        @param encoding: the stream's C{grpc-encoding} (C{identity} when it
            sent none); it must be one of L{ACCEPTED_ENCODINGS}.
        """
        self._max = maxMessageBytes
        self._encoding = encoding
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def owed(self) -> int:
        """
        The size, prefix included, that the unfinished message declares
        once its prefix is here; 0 before, and between messages.
        """
        if len(self._buffer) < _PREFIX.size:
            return 0
        _, length = _PREFIX.unpack_from(self._buffer)
        return int(_PREFIX.size + length)

    def feed(self, data: bytes) -> list[Message]:
        """
        Take the next DATA payload; return the messages it completes
        (decompressed only when taken, L{Message.payload}).

        @raise GrpcError: C{RESOURCE_EXHAUSTED} for a message over the
            limit (found from its prefix, before its bytes are held), or
            C{INTERNAL} for a compressed message on an identity stream or
            an unknown flag.
        """
        self._buffer += data
        messages = []
        while len(self._buffer) >= _PREFIX.size:
            flag, length = _PREFIX.unpack_from(self._buffer)
            if flag not in (0, 1):
                raise GrpcError(
                    StatusCode.INTERNAL, f"message compressed flag {flag} is not 0 or 1"
                )
            if length > self._max:
                raise GrpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes exceeds the {self._max}-byte limit",
                )
            end = _PREFIX.size + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_PREFIX.size : end])
            del self._buffer[:end]
            if flag and self._encoding == b"identity":
                raise GrpcError(
                    StatusCode.INTERNAL, "compressed message on a stream without grpc-encoding"
                )
            messages.append(Message(body, bool(flag), self._max))
        return messages

    def finish(self) -> None:
        """
        The client half-closed its side.

        @raise GrpcError: C{INTERNAL} when it stopped inside a message.
        """
        if self._buffer:
            raise GrpcError(
                StatusCode.INTERNAL,
                f"stream ended inside a message ({len(self._buffer)} bytes of it sent)",
            )
