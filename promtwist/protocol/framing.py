# -*- test-case-name: promtwist.test.test_framing -*-
"""
Length-prefixed protobuf frames on a byte stream.

A frame is a 4-byte unsigned big-endian length followed by that many bytes of
one serialised L{Frame}. Anything wrong on the wire (a length above the limit,
bytes that do not decode, a frame with nothing in it) is a protocol error: it
is logged with what was wrong, and that one connection is aborted. Nothing
else in the process is affected.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod

from google.protobuf.message import DecodeError
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from promtwist.logs import observer
from promtwist.protocol.promtwist_pb2 import Frame
from promtwist.sendnow import PENDING

DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
_PREFIX = struct.Struct("!I")


class ProtocolError(Exception):
    """
    The peer sent something the protocol does not allow.
    """


class FrameTooLarge(Exception):
    """
    We were about to send a frame larger than the peer accepts: a bug on this
    side, since bodies are always chunked below the limit.
    """


class FrameReceiver(Int32StringReceiver, ABC):
    """
    Turns the byte stream into L{Frame} messages and back.

    Subclasses implement L{frameReceived}. C{MAX_LENGTH} bounds what we accept;
    L{peerMaxFrameBytes} bounds what we send.

    @ivar peerMaxFrameBytes: the largest frame the peer said it accepts.
    """

    _log = Logger(observer=observer)
    # Set by makeConnection; a stream connection, so it can be aborted.
    transport: ITCPTransport
    MAX_LENGTH = DEFAULT_MAX_FRAME_BYTES
    peerMaxFrameBytes = DEFAULT_MAX_FRAME_BYTES

    def stringReceived(self, data: bytes) -> None:
        frame = Frame()
        try:
            frame.ParseFromString(data)
        except DecodeError as e:
            self.protocolError(f"undecodable frame of {len(data)} bytes ({e})")
            return
        if frame.WhichOneof("kind") is None:
            self.protocolError(f"frame of {len(data)} bytes carries no message")
            return
        try:
            self.frameReceived(frame)
        except ProtocolError as e:
            self.protocolError(str(e))
        except Exception:  # noqa: BLE001
            # The buck stops here: a bug handling one frame costs this
            # connection, logged with its traceback, and nothing else.
            self._log.failure("error handling a {kind} frame", kind=frame.WhichOneof("kind"))
            self.protocolError(f"internal error handling a {frame.WhichOneof('kind')} frame")

    @abstractmethod
    def frameReceived(self, frame: Frame) -> None:
        """
        Handle one decoded frame. Raise L{ProtocolError} to drop the connection.
        """

    def sendFrame(self, frame: Frame) -> None:
        """
        Serialise and write one frame, refusing to exceed the peer's limit.
        """
        data = frame.SerializeToString()
        if len(data) > self.peerMaxFrameBytes:
            raise FrameTooLarge(
                f"{frame.WhichOneof('kind')} frame of {len(data)} bytes exceeds "
                f"the peer's limit of {self.peerMaxFrameBytes}"
            )
        # writeSequence avoids copying the payload just to prepend 4 bytes.
        self.transport.writeSequence([_PREFIX.pack(len(data)), data])
        PENDING.wrote(self.transport)

    def lengthLimitExceeded(self, length: int) -> None:
        self.protocolError(f"frame length {length} exceeds the limit of {self.MAX_LENGTH} bytes")

    @abstractmethod
    def protocolError(self, why: str) -> None:
        """
        The peer broke the protocol (C{why} says how): the link's owner says
        so and closes the connection. Nothing more of what is buffered from
        this peer may be handled.
        """


# The first bytes of what a misdirected peer sends or answers: an HTTP
# request or response line, and TLS records (handshake, alert, data).
_HTTP_STARTS = frozenset(
    {b"HTTP", b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI "}
)
_TLS_RECORDS = frozenset({b"\x16\x03", b"\x15\x03", b"\x17\x03"})


def spokenProtocol(length: int) -> str | None:
    """
    The protocol a peer more likely speaks when a frame length is absurd:
    C{"HTTP"} when its 4 bytes spell the start of an HTTP message ("HTTP"
    is 1213486160), C{"TLS"} when they start a TLS record (0x16 0x03 for a
    ClientHello), else L{None}.
    """
    prefix = _PREFIX.pack(length)
    if prefix in _HTTP_STARTS:
        return "HTTP"
    if prefix[:2] in _TLS_RECORDS:
        return "TLS"
    return None


def encodeFrame(frame: Frame) -> bytes:
    """
    One frame as it travels: length prefix and message, for a writer that
    is not a L{FrameReceiver}.
    """
    data = frame.SerializeToString()
    return _PREFIX.pack(len(data)) + data
