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
from dataclasses import dataclass
from typing import cast

import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, INegotiated, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from promtwist._version import __version__
from promtwist.grpc.call import CallCancelled, Headers
from promtwist.grpc.h2conn import ConnectionState, H2Protocol, Outbound
from promtwist.grpc.inbox import Inbox
from promtwist.grpc.limits import Limits
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
        # Its window is given back as the caller takes the messages.
        self._inbox: Inbox[bytes] = Inbox(self, self._read, connection.acknowledge)
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
        return self._inbox.receive()

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
        self._inbox.add(messages, size)

    def end(self, outcome: Failure | None) -> None:
        """
        The call is over: with C{OK} (L{None}) or C{outcome}. A failed
        call's messages not yet taken are dropped.
        """
        if self.ended:
            return
        self._state = _CallState.ENDED
        self._outcome = outcome
        self._inbox.end(outcome)
        done, self._done = self._done, []
        for d in done:
            if outcome is None:
                d.callback(None)
            else:
                d.errback(outcome)

    # -- Inside ----------------------------------------------------------------

    def _read(self, message: Message) -> Deferred[bytes]:
        try:
            return succeed(message.payload())
        except GrpcError as error:
            return fail(CallFailed(f"the server's message: {error.message}", error.code))


@implementer(IHandshakeListener)
class GrpcClientProtocol(H2Protocol):
    """
    One HTTP/2 connection to a gRPC server, for the call L{call}.

    Its L{ConnectionState} is C{GONE} once the call ended; its handshake
    bound runs from the connection, the TLS handshake included.
    """

    _fromPeer = " from the server"

    def __init__(self, request: CallRequest, limits: Limits, clock: IReactorTime) -> None:
        super().__init__(limits, clock, clientSide=True)
        self.request = request
        self.call = ClientCall(self, request.path)
        self._reader = MessageReader(limits.maxMessageBytes, b"identity")
        self._response: dict[bytes, bytes] | None = None
        self._trailers: dict[bytes, bytes] | None = None
        self._outbound = Outbound()
        self._halfClosing = False
        self._endSent = False

    # -- Connection life -------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        # The server opens no streams (no push, no other calls).
        self._openConnection(maxConcurrentStreams=0)
        scheme = b"https" if usesTLS(self.transport) else b"http"
        self._h2.send_headers(_STREAM, self.request.headers(scheme))
        self._flush()
        self._setTimer(self._limits.handshakeSeconds, self._handshakeExpired)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = ConnectionState.GONE
        self._cancelTimer()
        cause = describeTLSFailure(reason) or reason.getErrorMessage()
        self._fail(f"the connection to the server was lost: {cause}")

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

    def _eventReceived(self, event: h2.events.Event) -> None:
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

    def _handshakeDone(self) -> None:
        self._cancelTimer()

    def _remoteSettingsChanged(self, event: h2.events.RemoteSettingsChanged) -> None:
        self._pump()

    def _pumpAll(self) -> None:
        self._pump()

    def _describeBreach(self, error: h2.exceptions.ProtocolError) -> str:
        return f"the server broke HTTP/2: {error}"

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
        sent = self._sendQueued(_STREAM, self._outbound)
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
        outbound, self._outbound = self._outbound, Outbound()
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

    def _wentAway(self, event: h2.events.ConnectionTerminated) -> None:
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
        self._state = ConnectionState.GONE
        self._dropOutbound("the call is over")
        if goAway:
            self._h2.close_connection(error_code=ErrorCodes.NO_ERROR)
        self._closeTransport()

    def _handshakeExpired(self) -> None:
        self._timer = None
        self._fail(
            f"no HTTP/2 SETTINGS from the server within {self._limits.handshakeSeconds:g} s"
            " of connecting: is this address an HTTP/2 (gRPC) endpoint?"
        )
        self._state = ConnectionState.GONE
        self._abort()

    def _statusExpired(self) -> None:
        self._timer = None
        self.cancel(
            f"the server did not end the call within {self._limits.closeSeconds:g} s"
            " of this end's half-close"
        )
