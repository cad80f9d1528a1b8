# -*- test-case-name: promtwist.test.test_grpc_connection -*-
"""
What one HTTP/2 connection to the gRPC port may cost, safe by default.

The flood bounds answer HTTP/2's known denial-of-service classes: each
counts one kind of frame that makes the server work but carries no request
(a stream reset, a PING, a SETTINGS, an empty DATA frame) and ends the
connection with GOAWAY C{ENHANCE_YOUR_CALM} when a client sends more of
them in one window than any honest client does.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


@dataclass(frozen=True)
class Limits:
    """
    @ivar maxConcurrentStreams: calls open at once on one connection
        (advertised as C{SETTINGS_MAX_CONCURRENT_STREAMS}).
    @ivar maxHeaderListBytes: a request's headers, decoded, as HPACK
        counts them (C{SETTINGS_MAX_HEADER_LIST_SIZE}); gRPC's usual 8 KiB.
    @ivar maxMessageBytes: one message, received or decompressed; grpc-java
        and grpcio's 4 MiB default, which upstream never raises. Each
        stream's receive window (C{SETTINGS_INITIAL_WINDOW_SIZE}) is this
        plus its 5-byte prefix: a stream holds at most one window of
        messages its handler has not taken, and any message it may send
        fits.
    @ivar maxFrameBytes: the largest frame a client may send
        (C{SETTINGS_MAX_FRAME_SIZE}); HTTP/2's minimum and default.
    @ivar connectionWindowBytes: the connection's receive window: all that
        its streams together may have sent that their handlers have not
        taken, which bounds what one connection makes the server hold (with
        the decompressed message being read). Several streams' worth, so
        one slow handler does not stop its neighbours.
    @ivar handshakeSeconds: from accepting the connection (the TLS
        handshake included) to the client's preface and SETTINGS.
    @ivar authenticateSeconds: when set, a connection must make a call that
        its method's C{authorize} admits within this long of being accepted
        (L{promtwist.grpc.service}), or it is closed with GOAWAY whatever it
        is doing: what an unauthenticated client may hold, a header block it
        never finishes included. L{None}: connections need not prove
        anything.
    @ivar idleSeconds: a connection with no call open is closed with GOAWAY
        after this long; a unary or server-streaming call whose one request
        the client owes fails C{DEADLINE_EXCEEDED} when it is not whole
        this long after the headers.
    @ivar messageSeconds: a message begun fails its call
        C{DEADLINE_EXCEEDED} when it is not whole this long after its first
        byte. Its bytes come at line speed, and until it is whole it holds
        up to a stream's window of the server's memory: 60 s brings the
        largest message at 600 kbit/s.
    @ivar floodWindowSeconds: the window the four flood bounds count in.
    @ivar maxResetsPerWindow: streams the client resets (rapid reset,
        CVE-2023-44487).
    @ivar maxPingsPerWindow: PINGs (each costs an answer).
    @ivar maxSettingsPerWindow: SETTINGS frames (each costs an ACK).
    @ivar maxEmptyFramesPerWindow: DATA frames with no payload that do not
        end their stream, and frames of unknown types.
    @ivar closeSeconds: how long a connection closed with GOAWAY may take
        to read it before it is aborted.
    """

    maxConcurrentStreams: int = 100
    maxHeaderListBytes: int = 8192
    maxMessageBytes: int = 4 * 1024 * 1024
    maxFrameBytes: int = 16384
    connectionWindowBytes: int = 16 * 1024 * 1024
    handshakeSeconds: float = 10.0
    authenticateSeconds: float | None = None
    idleSeconds: float = 300.0
    messageSeconds: float = 60.0
    floodWindowSeconds: float = 10.0
    maxResetsPerWindow: int = 200
    maxPingsPerWindow: int = 100
    maxSettingsPerWindow: int = 50
    maxEmptyFramesPerWindow: int = 200
    closeSeconds: float = 5.0

    @property
    def streamWindowBytes(self) -> int:
        return self.maxMessageBytes + 5

    def __post_init__(self) -> None:
        # A message the connection's window cannot take would never arrive.
        if self.connectionWindowBytes < self.streamWindowBytes:
            raise ValueError(
                f"connectionWindowBytes ({self.connectionWindowBytes}) is smaller than"
                f" one stream's window, maxMessageBytes + 5 ({self.streamWindowBytes})"
            )


class RateBound:
    """
    Counts events in fixed windows of C{seconds} on C{clock}: constant
    memory and time per event, which is what a bound on a flood needs.
    """

    def __init__(self, limit: int, seconds: float, clock: IReactorTime) -> None:
        self._limit = limit
        self._seconds = seconds
        self._clock = clock
        self._start = clock.seconds()
        self._count = 0

    def exceeded(self) -> bool:
        """
        Count one event; whether the current window now holds more than
        the limit.
        """
        now = self._clock.seconds()
        if now - self._start >= self._seconds:
            self._start = now
            self._count = 0
        self._count += 1
        return self._count > self._limit
