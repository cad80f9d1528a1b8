# -*- test-case-name: promtwist.test.test_grpc_client -*-
"""
A gRPC client connection that carries one call: HTTP/2 through C{h2}'s
sans-IO state machine, client side, driven by C{dataReceived} in the
reactor.

The connection exists for its call: it sends the preface, SETTINGS and the
call's request headers as soon as it is made, and it is closed (GOAWAY,
then the transport) as soon as the call ends, whichever end ends it. What
promtwist dials over it (the native agent link, L{promtwist.grpc.tunnel})
lives as long as that one call, which is what a front end that routes
gRPC calls (nginx C{grpc_pass}, an HTTP/2 load balancer) needs to see.

Flow control works both ways as on the server (L{promtwist.grpc.connection}):
the call's receive window is reopened only as its caller takes messages, so
a caller that stops reading stops the server; DATA leaves only within the
server's windows and not while the transport asks this protocol, its
producer, to pause, and nothing is read from a server meanwhile.

A server that breaks HTTP/2, floods (PINGs, SETTINGS, empty frames), sends
headers or a message over the limits, goes away or resets the call ends the
call with a L{CallFailed} that says which, and the connection with it.
Nothing the server sends raises out of C{dataReceived}.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from promtwist._version import __version__
from promtwist.grpc.call import CallCancelled, Headers
from promtwist.grpc.limits import Limits, RateBound
from promtwist.grpc.messages import Message, MessageReader, frameMessage
from promtwist.grpc.status import GrpcError, StatusCode, decodeMessage
from promtwist.tls import describeTLSFailure, usesTLS

_CONTENT_TYPES = (b"application/grpc", b"application/grpc+proto")

# Where h2 numbers the client's first stream.
_STREAM = 1


def _codeName(code: ErrorCodes | int | None) -> str:
    """
    An HTTP/2 error code as the spec names it (h2 gives an unknown one as
    a number).
    """
    return code.name if isinstance(code, ErrorCodes) else f"error code {code}"


class CallFailed(Exception):
    """
    A call ended without C{OK}: with the server's status (C{code}), or,
    with C{code} L{None}, because the HTTP/2 connection failed or the answer
    was not gRPC. C{str()} is the whole reason, for an operator.
    """

    def __init__(self, why: str, code: StatusCode | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.code = code

    def __str__(self) -> str:
        return self.why


@dataclass(frozen=True)
class CallRequest:
    """
    The one call a connection makes.

    @ivar path: the method, C{/Service/method}.
    @ivar authority: C{:authority}, the server's C{host:port} as dialled (a
        front end may route on it).
    @ivar metadata: custom metadata, text values only.
    """

    path: str
    authority: str
    metadata: tuple[tuple[str, str], ...] = ()

    def headers(self, scheme: bytes) -> Headers:
        return [
            (b":method", b"POST"),
            (b":scheme", scheme),
            (b":path", self.path.encode("ascii")),
            (b":authority", self.authority.encode("idna")),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", f"promtwist/{__version__.public()}".encode("ascii")),
            *((key.encode("ascii"), value.encode("latin-1")) for key, value in self.metadata),
        ]


class _CallState(enum.Enum):
    OPEN = "open"
    ENDED = "ended"  # the server's status came, or the call failed


class ClientCall:
    """
    The call as its caller sees it: messages to L{send} and to
    L{receive}, L{halfClose} when it has sent all, L{cancel} to give up,
    and L{whenDone} for the outcome.
    """

    def __init__(self, connection: GrpcClientProtocol, path: str) -> None:
        self.path = path
        self._connection = connection
        self._state = _CallState.OPEN
        self._outcome: Failure | None = None
        # Received and not yet taken, and the window bytes they hold
        # (acknowledged when the caller takes the last of them).
        self._inbox: deque[Message] = deque()
        self._held = 0
        self._waiting: Deferred[bytes | None] | None = None
        self._done: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<ClientCall {self.path} {self._state.value}>"

    # -- What the caller uses ------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._state is _CallState.ENDED

    def send(self, message: bytes) -> Deferred[None]:
        """
        Send one message; the Deferred fires when the server's windows took
        all of it, and fails if the call ends first.
        """
        if self.ended:
            return fail(CallCancelled(f"{self!r}: send() after the call ended"))
        return self._connection.sendData(frameMessage(message))

    def halfClose(self) -> None:
        """
        Nothing more to send: END_STREAM once what is queued has gone.
        """
        if not self.ended:
            self._connection.halfClose()

    def receive(self) -> Deferred[bytes | None]:
        """
        The server's next message; L{None} once it ended the call with
        C{OK} (after the messages that came before its status). Fails with
        L{CallFailed} when the call failed. One receive at a time.
        """
        if self._waiting is not None:
            raise RuntimeError(f"{self!r}: receive() while another is waiting")
        if self._inbox:
            return self._take()
        if self.ended:
            return succeed(None) if self._outcome is None else fail(self._outcome)
        waiting: Deferred[bytes | None] = Deferred(lambda d: self._stopWaiting(d))
        self._waiting = waiting
        return waiting

    def cancel(self, why: str) -> None:
        """
        Give up on the call: it is reset (C{CANCEL}) and the connection
        closed.
        """
        if not self.ended:
            self._connection.cancel(why)

    def whenDone(self) -> Deferred[None]:
        """
        A new Deferred that fires when the server ended the call with
        C{OK}, or fails with why the call ended otherwise.
        """
        if not self.ended:
            d: Deferred[None] = Deferred()
            self._done.append(d)
            return d
        return succeed(None) if self._outcome is None else fail(self._outcome)

    # -- What the connection drives ------------------------------------------

    def messagesReceived(self, messages: list[Message], size: int) -> None:
        self._inbox.extend(messages)
        self._held += size
        if self._waiting is not None and self._inbox:
            waiting, self._waiting = self._waiting, None
            self._take().chainDeferred(waiting)

    def end(self, outcome: Failure | None) -> None:
        """
        The call is over: with C{OK} (L{None}) or C{outcome}. A failed
        call's messages not yet taken are dropped.
        """
        if self.ended:
            return
        self._state = _CallState.ENDED
        self._outcome = outcome
        if outcome is not None:
            self._inbox.clear()
            self._release()
        if self._waiting is not None and not self._inbox:
            waiting, self._waiting = self._waiting, None
            if outcome is None:
                waiting.callback(None)
            else:
                waiting.errback(outcome)
        done, self._done = self._done, []
        for d in done:
            if outcome is None:
                d.callback(None)
            else:
                d.errback(outcome)

    # -- Inside ----------------------------------------------------------------

    def _take(self) -> Deferred[bytes | None]:
        message = self._inbox.popleft()
        if not self._inbox:
            self._release()
        try:
            return succeed(message.payload())
        except GrpcError as error:
            return fail(CallFailed(f"the server's message: {error.message}", error.code))

    def _release(self) -> None:
        if self._held:
            self._connection.acknowledge(self._held)
        self._held = 0

    def _stopWaiting(self, waiting: Deferred[bytes | None]) -> None:
        if self._waiting is waiting:
            self._waiting = None


class _State(enum.Enum):
    """
    The connection's life: C{HANDSHAKE} until the server's first SETTINGS
    (bounded by C{handshakeSeconds}, from the connection, the TLS handshake
    included); C{OPEN}; C{GONE} once the call ended or the connection is
    lost: nothing more is read or sent.
    """

    HANDSHAKE = "handshake"
    OPEN = "open"
    GONE = "gone"


@implementer(IPushProducer, IHandshakeListener)
class GrpcClientProtocol(Protocol):
    """
    One HTTP/2 connection to a gRPC server, for the call L{call}.
    """

    transport: ITCPTransport | None

    def __init__(self, request: CallRequest, limits: Limits, clock: IReactorTime) -> None:
        self.request = request
        self.call = ClientCall(self, request.path)
        self._limits = limits
        self._clock = clock
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._state = _State.HANDSHAKE
        self._reader = MessageReader(limits.maxMessageBytes, b"identity")
        self._response: dict[bytes, bytes] | None = None
        self._trailers: dict[bytes, bytes] | None = None
        self._outbound: deque[tuple[memoryview, Deferred[None]]] = deque()
        self._halfClosing = False
        self._endSent = False
        self._paused = False
        self._unread = b""
        self._socketPaused = False
        self._timer: IDelayedCall | None = None
        self._pings = RateBound(limits.maxPingsPerWindow, limits.floodWindowSeconds, clock)
        self._settings = RateBound(limits.maxSettingsPerWindow, limits.floodWindowSeconds, clock)
        self._empties = RateBound(limits.maxEmptyFramesPerWindow, limits.floodWindowSeconds, clock)

    @property
    def _gone(self) -> bool:
        return self._state is _State.GONE

    # -- Connection life -------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        cast(IConsumer, self.transport).registerProducer(self, True)
        limits = self._limits
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                # The server opens no streams (no push, no other calls).
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.maxHeaderListBytes,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.maxFrameBytes,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.streamWindowBytes,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self._h2.initiate_connection()
        opening = limits.connectionWindowBytes - self._h2.inbound_flow_control_window
        if opening > 0:
            self._h2.increment_flow_control_window(opening)
        # Held to our header limit from the start, not from the server's
        # acknowledgement of our SETTINGS.
        self._h2.decoder.max_header_list_size = limits.maxHeaderListBytes
        self._h2.max_inbound_frame_size = limits.maxFrameBytes
        scheme = b"https" if usesTLS(self.transport) else b"http"
        self._h2.send_headers(_STREAM, self.request.headers(scheme))
        self._flush()
        self._setTimer(limits.handshakeSeconds, self._handshakeExpired)

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return
        if self._paused:
            # As the server does: what a server sends while we cannot
            # write waits, and its socket is read no more.
            self._unread += data
            if not self._socketPaused and self.transport is not None:
                self._socketPaused = True
                cast(IPushProducer, self.transport).pauseProducing()
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._goAway(
                e.error_code or ErrorCodes.PROTOCOL_ERROR,
                f"the server broke HTTP/2: {e}",
            )
            return
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                self._serverWentAway(event)
                return
        for event in events:
            if self._gone:
                break
            self._dispatch(event)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = _State.GONE
        self._cancelTimer()
        cause = describeTLSFailure(reason) or reason.getErrorMessage()
        self._fail(f"the connection to the server was lost: {cause}")

    # -- IPushProducer ---------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        unread, self._unread = self._unread, b""
        if unread:
            self.dataReceived(unread)
        if self._socketPaused and not self._paused and self.transport is not None:
            self._socketPaused = False
            cast(IPushProducer, self.transport).resumeProducing()
        self._pump()
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True

    # -- Events ----------------------------------------------------------------

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (L{IHandshakeListener}): a server that
        did not agree to C{h2} by ALPN speaks something else, and the call
        ends here, saying so.
        """
        spoken = cast(INegotiated, self.transport).negotiatedProtocol
        if spoken == b"h2" or self._gone:
            return
        what = "no protocol" if spoken is None else repr(spoken.decode("ascii", "replace"))
        self._fail(
            f"the server answered {what} to TLS ALPN h2, so it is not an HTTP/2 (gRPC)"
            " endpoint: with agent.transport = grpc, dial a gRPC front end or a proxy"
            " port that serves gRPC"
        )
        self._close()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._responseReceived(event)
        elif isinstance(event, h2.events.DataReceived):
            self._dataReceived(event)
        elif isinstance(event, h2.events.TrailersReceived):
            self._trailers = dict(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            self._streamEnded()
        elif isinstance(event, h2.events.StreamReset):
            self._fail(f"the server reset the call ({_codeName(event.error_code)})")
            self._close()
        elif isinstance(event, h2.events.WindowUpdated):
            self._pump()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._remoteSettingsChanged()
        elif isinstance(event, h2.events.PingReceived):
            if self._pings.exceeded():
                self._goAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many PINGs from the server")
        elif isinstance(event, h2.events.UnknownFrameReceived):
            self._emptyFrame()

    def _responseReceived(self, event: h2.events.ResponseReceived) -> None:
        headers = dict(event.headers or [])
        self._response = headers
        status = headers.get(b":status", b"")
        contentType = headers.get(b"content-type", b"").split(b";")[0].strip()
        if status == b"200" and contentType in _CONTENT_TYPES:
            return
        shown = contentType[:60].decode("latin-1") or "none"
        self._fail(
            f"the server answered HTTP {status.decode('latin-1')[:3]} with content type"
            f" {shown}, not gRPC: a front end answers so when it does not route"
            f" {self.request.path} to the proxy (404) or cannot reach it (502, 503, 504)"
        )
        self._cancelStream()

    def _dataReceived(self, event: h2.events.DataReceived) -> None:
        size = event.flow_controlled_length or 0
        data = event.data or b""
        if not data and not event.stream_ended:
            self._emptyFrame()
            if self._gone:
                return
        if self.call.ended:
            self._h2.acknowledge_received_data(size, _STREAM)
            return
        before = self._reader.buffered
        try:
            messages = self._reader.feed(data)
        except GrpcError as error:
            self._fail(f"the server sent a bad message: {error.message}", error.code)
            self._cancelStream()
            return
        # Padding is acknowledged at once, messages as the caller takes them.
        if size > len(data):
            self._h2.acknowledge_received_data(size - len(data), _STREAM)
        self.call.messagesReceived(messages, before + len(data) - self._reader.buffered)

    def _streamEnded(self) -> None:
        """
        The server ended the call: its status is in its trailers, or, for a
        trailers-only answer, in its one header block.
        """
        status = self._trailers if self._trailers is not None else self._response or {}
        code = status.get(b"grpc-status")
        try:
            self._reader.finish()
        except GrpcError as error:
            self._fail(f"the server ended the call {error.message}", error.code)
        else:
            if code is None:
                self._fail("the server ended the call without a grpc-status")
            elif code == b"0":
                self.call.end(None)
            else:
                self._endWithStatus(code, status.get(b"grpc-message", b""))
        self._close()

    def _endWithStatus(self, code: bytes, message: bytes) -> None:
        try:
            known: StatusCode | None = StatusCode(int(code))
        except ValueError:
            known = None
        name = known.name if known is not None else f"status {code[:10].decode('latin-1')}"
        text = decodeMessage(message)[:500]
        self._fail(f"the server ended the call with {name}" + (f": {text}" if text else ""), known)

    def _remoteSettingsChanged(self) -> None:
        if self._state is _State.HANDSHAKE:
            self._state = _State.OPEN
            self._cancelTimer()
        elif self._settings.exceeded():
            self._goAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many SETTINGS frames from the server")
            return
        self._pump()

    def _emptyFrame(self) -> None:
        if self._empties.exceeded():
            self._goAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many empty frames from the server")

    # -- What the call sends ---------------------------------------------------

    def sendData(self, data: bytes) -> Deferred[None]:
        sent: Deferred[None] = Deferred()
        self._outbound.append((memoryview(data), sent))
        self._pump()
        self._flush()
        return sent

    def halfClose(self) -> None:
        self._halfClosing = True
        self._pump()
        self._flush()
        # The server answers a half-close with its status; one that does
        # not is not waited for without end.
        self._setTimer(self._limits.closeSeconds, self._statusExpired)

    def acknowledge(self, size: int) -> None:
        if not self._gone:
            self._h2.acknowledge_received_data(size, _STREAM)
            self._flush()

    def cancel(self, why: str) -> None:
        self._fail(why)
        self._cancelStream()

    # -- Inside ----------------------------------------------------------------

    def _pump(self) -> None:
        """
        Send what the call queued, as far as the windows and the transport
        allow; END_STREAM after the last of it once the call half-closed.
        """
        if self._gone or not self._writable():
            return
        sent: list[Deferred[None]] = []
        while self._outbound and not self._paused:
            view, whenSent = self._outbound[0]
            window = min(
                self._h2.local_flow_control_window(_STREAM), self._h2.max_outbound_frame_size
            )
            if window <= 0:
                break
            self._h2.send_data(_STREAM, view[:window].tobytes())
            if len(view) > window:
                self._outbound[0] = (view[window:], whenSent)
            else:
                self._outbound.popleft()
                sent.append(whenSent)
        if self._halfClosing and not self._outbound:
            self._endSent = True
            self._h2.end_stream(_STREAM)
        for whenSent in sent:
            whenSent.callback(None)

    def _writable(self) -> bool:
        stream = self._h2.streams.get(_STREAM)
        return stream is not None and not stream.closed and not self._endSent

    def _fail(self, why: str, code: StatusCode | None = None) -> None:
        """
        The call fails for C{why}: what it queued is dropped.
        """
        self._dropOutbound(why)
        self.call.end(Failure(CallFailed(why, code)))

    def _dropOutbound(self, why: str) -> None:
        outbound, self._outbound = self._outbound, deque()
        for _, whenSent in outbound:
            whenSent.errback(CallCancelled(why))

    def _cancelStream(self) -> None:
        """
        Reset the call (C{CANCEL}) if it is still open, then close.
        """
        stream = self._h2.streams.get(_STREAM)
        if stream is not None and not stream.closed:
            self._h2.reset_stream(_STREAM, ErrorCodes.CANCEL)
        self._close()

    def _goAway(self, code: ErrorCodes | int, reason: str) -> None:
        """
        End the connection for C{reason}: GOAWAY with it as debug data, the
        call failed with it.
        """
        if self._gone:
            return
        self._h2.clear_outbound_data_buffer()
        self._fail(reason)
        self._h2.close_connection(error_code=code, additional_data=reason.encode("utf-8")[:256])
        self._close(goAway=False)

    def _serverWentAway(self, event: h2.events.ConnectionTerminated) -> None:
        debug = (event.additional_data or b"")[:200].decode("utf-8", "replace")
        self._fail(
            f"the server closed the HTTP/2 connection (GOAWAY {_codeName(event.error_code)}"
            + (f": {debug}" if debug else "")
            + ")"
        )
        self._close(goAway=False)

    def _close(self, goAway: bool = True) -> None:
        """
        The call is over: GOAWAY (unless one was sent or received), then
        close once what is written has gone, or abort after
        C{closeSeconds} if the server does not read it.
        """
        if self._gone:
            return
        self._state = _State.GONE
        self._dropOutbound("the call is over")
        if goAway:
            self._h2.close_connection(error_code=ErrorCodes.NO_ERROR)
        self._flush()
        assert self.transport is not None
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()
        self._setTimer(self._limits.closeSeconds, self._abort)

    def _handshakeExpired(self) -> None:
        self._timer = None
        self._fail(
            f"no HTTP/2 SETTINGS from the server within {self._limits.handshakeSeconds:g} s"
            " of connecting: is this address an HTTP/2 (gRPC) endpoint?"
        )
        self._state = _State.GONE
        self._abort()

    def _statusExpired(self) -> None:
        self._timer = None
        self.cancel(
            f"the server did not end the call within {self._limits.closeSeconds:g} s"
            " of this end's half-close"
        )

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _setTimer(self, seconds: float, then: Callable[[], None]) -> None:
        self._cancelTimer()
        self._timer = self._clock.callLater(seconds, then)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
