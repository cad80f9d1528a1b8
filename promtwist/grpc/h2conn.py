# -*- test-case-name: promtwist.test.test_grpc_connection,promtwist.test.test_grpc_client -*-
"""
What both ends of promtwist's gRPC do alike with one HTTP/2 connection
through C{h2}: the server (L{promtwist.grpc.connection}) and the client
(L{promtwist.grpc.client}) differ in their streams and calls, not in this.

L{H2Protocol} owns the C{H2Connection}, the transport's backpressure in
both directions, the flood bounds on frames that carry no call, the one
timer a connection runs at a time, and the close that aborts a peer that
does not read its GOAWAY. Its subclass handles the events that concern
calls and says how it ends a connection (L{H2Protocol._goAway}).
"""

from __future__ import annotations

import enum
from abc import ABCMeta, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from promtwist.grpc.limits import Limits, RateBound

#: DATA a stream has queued: each piece with the Deferred it fires once
#: all of it has gone.
Outbound = deque[tuple[memoryview, Deferred[None]]]


class ConnectionState(enum.Enum):
    """
    A connection's life: C{HANDSHAKE} until the peer's first SETTINGS
    (bounded by C{handshakeSeconds}); C{OPEN}; C{GONE} once it is closing
    or lost: nothing more is read or sent.
    """

    HANDSHAKE = "handshake"
    OPEN = "open"
    GONE = "gone"


@implementer(IPushProducer)
class H2Protocol(Protocol, metaclass=ABCMeta):
    """
    One HTTP/2 connection, either end, within L{Limits}.

    A subclass implements the abstract L{_eventReceived},
    L{_handshakeDone}, L{_remoteSettingsChanged}, L{_pumpAll},
    L{_describeBreach}, L{_wentAway} and L{_goAway}.

    @cvar _fromPeer: what the flood bounds' GOAWAY debug data adds to name
        the peer (the server's are read by the client that flooded, which
        knows who it is).
    """

    transport: ITCPTransport | None
    _fromPeer = ""

    def __init__(self, limits: Limits, clock: IReactorTime, clientSide: bool) -> None:
        self._limits = limits
        self._clock = clock
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=clientSide, header_encoding=None)
        )
        self._state = ConnectionState.HANDSHAKE
        self._paused = False
        # What the peer sent while paused, and whether its socket is.
        self._unread = b""
        self._socketPaused = False
        self._timer: IDelayedCall | None = None
        self._pings = RateBound(limits.maxPingsPerWindow, limits.floodWindowSeconds, clock)
        self._settings = RateBound(limits.maxSettingsPerWindow, limits.floodWindowSeconds, clock)
        self._empties = RateBound(limits.maxEmptyFramesPerWindow, limits.floodWindowSeconds, clock)

    @property
    def _gone(self) -> bool:
        return self._state is ConnectionState.GONE

    # -- Opening -----------------------------------------------------------------

    def _openConnection(self, maxConcurrentStreams: int) -> None:
        """
        Become the transport's producer, and queue the preface and SETTINGS
        that hold the peer to C{Limits}, the peer opening at most
        C{maxConcurrentStreams} streams.
        """
        assert self.transport is not None
        cast(IConsumer, self.transport).registerProducer(self, True)
        limits = self._limits
        self._h2.local_settings = h2.settings.Settings(
            client=self._h2.config.client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: maxConcurrentStreams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.maxHeaderListBytes,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.maxFrameBytes,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.streamWindowBytes,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self._h2.initiate_connection()
        # HTTP/2 opens the connection's window at 64 KiB; SETTINGS cannot
        # change that, a WINDOW_UPDATE does.
        opening = limits.connectionWindowBytes - self._h2.inbound_flow_control_window
        if opening > 0:
            self._h2.increment_flow_control_window(opening)
        # h2 holds a header block to its own default (64 KiB) until the
        # peer acknowledges our SETTINGS; hold it to ours from the start.
        self._h2.decoder.max_header_list_size = limits.maxHeaderListBytes
        self._h2.max_inbound_frame_size = limits.maxFrameBytes

    # -- Reading -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return
        if self._paused:
            # What a peer that does not read sends waits, and its socket is
            # no longer read, so at most one read waits. (Not at once in
            # pauseProducing: TLS pauses its producer for what is written
            # before its handshake completes, and must read the socket to
            # complete it.)
            self._unread += data
            if not self._socketPaused and self.transport is not None:
                self._socketPaused = True
                cast(IPushProducer, self.transport).pauseProducing()
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._goAway(e.error_code or ErrorCodes.PROTOCOL_ERROR, self._describeBreach(e))
            return
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                # h2 has closed the connection for what came before this
                # read's GOAWAY too: nothing of it can be answered.
                self._wentAway(event)
                return
        for event in events:
            if self._gone:
                break
            self._dispatch(event)
        self._flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.PingReceived):
            if self._pings.exceeded():
                self._goAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many PINGs" + self._fromPeer)
        elif isinstance(event, h2.events.UnknownFrameReceived):
            self._emptyFrame()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if self._state is ConnectionState.HANDSHAKE:
                self._state = ConnectionState.OPEN
                self._handshakeDone()
            elif self._settings.exceeded():
                self._goAway(
                    ErrorCodes.ENHANCE_YOUR_CALM, "too many SETTINGS frames" + self._fromPeer
                )
                return
            self._remoteSettingsChanged(event)
        else:
            self._eventReceived(event)

    def _emptyFrame(self) -> None:
        """
        Count a frame that carries nothing (an empty DATA frame that does
        not end its stream, a frame of an unknown type).
        """
        if self._empties.exceeded():
            self._goAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many empty frames" + self._fromPeer)

    # -- IPushProducer: the transport's backpressure on what we send ------------

    def pauseProducing(self) -> None:
        # The peer does not read what we write: send no more DATA, and
        # (from its next bytes, in dataReceived) read no more of what it
        # sends either, since much of HTTP/2 (PING, SETTINGS, frames on
        # closed streams) makes this end write an answer.
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        unread, self._unread = self._unread, b""
        if unread:
            self.dataReceived(unread)
        # The socket is read again only once what waited is handled and
        # the peer still reads.
        if self._socketPaused and not self._paused and self.transport is not None:
            self._socketPaused = False
            cast(IPushProducer, self.transport).resumeProducing()
        self._pumpAll()
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True

    # -- Sending -----------------------------------------------------------------

    def _sendQueued(self, streamId: int, outbound: Outbound) -> list[Deferred[None]]:
        """
        Send what C{outbound} holds for stream C{streamId}, as far as its
        window, the connection's window and the transport allow.

        @return: the Deferreds of the pieces that went whole, for the
            caller to fire once it is done with the stream (so that what
            their callbacks send pumps afresh).
        """
        sent: list[Deferred[None]] = []
        while outbound and not self._paused:
            view, whenSent = outbound[0]
            window = min(
                self._h2.local_flow_control_window(streamId), self._h2.max_outbound_frame_size
            )
            if window <= 0:
                break
            self._h2.send_data(streamId, view[:window].tobytes())
            if len(view) > window:
                outbound[0] = (view[window:], whenSent)
            else:
                outbound.popleft()
                sent.append(whenSent)
        return sent

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- Closing -----------------------------------------------------------------

    def _closeTransport(self) -> None:
        """
        Close once what is written has gone, or abort after C{closeSeconds}
        if the peer does not read it.
        """
        self._flush()
        assert self.transport is not None
        # A transport with a producer waits for it before closing (TLS
        # never closes); nothing more is produced.
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()
        self._setTimer(self._limits.closeSeconds, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()

    # -- The timer -----------------------------------------------------------------

    def _setTimer(self, seconds: float, then: Callable[[], None]) -> None:
        self._cancelTimer()
        self._timer = self._clock.callLater(seconds, then)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- What a subclass does --------------------------------------------------------

    @abstractmethod
    def _eventReceived(self, event: h2.events.Event) -> None:
        """
        Handle an event of the calls (a PING, a frame of an unknown type or
        SETTINGS are handled here).
        """

    @abstractmethod
    def _handshakeDone(self) -> None:
        """
        The peer's first SETTINGS came: the connection is C{OPEN}.
        """

    @abstractmethod
    def _remoteSettingsChanged(self, event: h2.events.RemoteSettingsChanged) -> None:
        """
        The peer's SETTINGS (within the flood bound) took effect: its
        windows may have grown.
        """

    @abstractmethod
    def _pumpAll(self) -> None:
        """
        The transport takes more: send what every stream has queued.
        """

    @abstractmethod
    def _describeBreach(self, error: h2.exceptions.ProtocolError) -> str:
        """
        The GOAWAY debug data for the peer's breach of HTTP/2, C{error}.
        """

    @abstractmethod
    def _wentAway(self, event: h2.events.ConnectionTerminated) -> None:
        """
        The peer sent GOAWAY: h2 has closed the connection.
        """

    @abstractmethod
    def _goAway(self, code: ErrorCodes | int, reason: str) -> None:
        """
        End the connection for C{reason}: GOAWAY C{code} with it as debug
        data, then L{_closeTransport}.
        """
