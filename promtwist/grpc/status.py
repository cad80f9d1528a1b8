# -*- test-case-name: promtwist.test.test_grpc_wire -*-
"""
gRPC's status codes, the error a handler raises to end its call with one,
and the two header values whose encodings the gRPC-over-HTTP/2 spec fixes:
C{grpc-message} (percent-encoded UTF-8) and C{grpc-timeout}.
"""

from __future__ import annotations

import enum
import re
from urllib.parse import unquote_to_bytes


class StatusCode(enum.IntEnum):
    """
    The status codes of gRPC's C{grpc-status} trailer.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """
    Ends a call with C{code} and C{message} in its trailers: raised (or
    failed with) by a handler for an answer the client should see, and by
    the transport for a request it refuses.
    """

    def __init__(self, code: StatusCode, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name


# What grpc-message may carry unescaped: printable ASCII except '%'.
_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def encodeMessage(message: str) -> bytes:
    """
    C{message} as a C{grpc-message} value: its UTF-8 bytes, with every byte
    outside printable ASCII, and C{%} itself, written as C{%XX}.
    """
    return b"".join(
        bytes((byte,)) if byte in _UNRESERVED else b"%%%02X" % (byte,)
        for byte in message.encode("utf-8")
    )


def decodeMessage(value: bytes) -> str:
    """
    The text of a C{grpc-message} value. The spec asks a receiver to keep
    what does not decode rather than fail, hence C{replace}.
    """
    return unquote_to_bytes(value).decode("utf-8", "replace")


_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {
    b"H": 3600.0,
    b"M": 60.0,
    b"S": 1.0,
    b"m": 1e-3,
    b"u": 1e-6,
    b"n": 1e-9,
}


def parseTimeout(value: bytes) -> float:
    """
    The seconds a C{grpc-timeout} value allows: at most eight digits and one
    unit (C{H M S m u n}).

    @raise GrpcError: (C{INTERNAL}, as grpc-java answers) for any other
        value, naming it.
    """
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        shown = value[:20].decode("ascii", "replace")
        raise GrpcError(StatusCode.INTERNAL, f"malformed grpc-timeout {shown!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
