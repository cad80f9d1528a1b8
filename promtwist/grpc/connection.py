# -*- test-case-name: promtwist.test.test_grpc_connection,promtwist.test.test_grpc_interop -*-
"""
A gRPC server connection: HTTP/2 through C{h2}'s sans-IO state machine,
driven by C{dataReceived} in the reactor, with no thread and no second
event loop.

The protocol owns the C{H2Connection} and every byte in and out. It
checks each request's headers before any handler runs, gives the stream a
L{ServerCall}, and carries the call's messages both ways under flow
control:

  - in: a stream's receive window is reopened only as its handler takes
    the messages (L{ServerCall.messagesReceived}), so a handler that does
    not read stops its client;
  - out: DATA leaves only within the client's windows, and not at all
    while the transport asks its producer (this protocol) to pause; nor is
    anything read from a client meanwhile, so a client that does not read
    cannot make the server answer without bound.

Bad input costs the least it can: a bad request gets its stream's status
(or an HTTP status, for one that is not gRPC at all); a breach of HTTP/2
itself or of a flood bound costs the connection, with a GOAWAY whose debug
data says why. Nothing a client sends raises out of C{dataReceived}.

With C{Limits.authenticateSeconds} set, a connection must prove who it is
in time: a call whose method's C{authorize} admits it at its HEADERS
proves the connection (L{GrpcServerProtocol.whenProven} fires); one that
has not within that long is closed, whatever it holds open. Connection
closes a client can cause are logged at a bounded rate, one budget for the
server (L{GrpcServerFactory.warnings}).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.addresses import peerName
from promtwist.grpc.call import (
    CallCancelled,
    Headers,
    Metadata,
    MetadataValue,
    ServerCall,
    trailersOnly,
)
from promtwist.grpc.context import ConnectionContext, ContextFactory
from promtwist.grpc.h2conn import ConnectionState, H2Protocol, Outbound
from promtwist.grpc.limits import Limits, RateBound
from promtwist.grpc.messages import ACCEPTED_ENCODINGS, MessageReader
from promtwist.grpc.service import Method
from promtwist.grpc.status import GrpcError, StatusCode, parseTimeout
from promtwist.logs import RepeatedWarnings


class MessageBudget(Protocol):
    """
    The server's bytes of unfinished messages, shared by source: each
    connection may hold up to its window of them, so without a shared bound
    many connections of one client would hold gigabytes. A message is
    charged its declared size when its prefix arrives, before its bytes are
    held, and given back when it is whole or its stream ends.
    """

    def sourceOf(self, call: ServerCall[Any, Any]) -> str:
        """
        Whom C{call}'s messages are charged to.
        """

    def take(self, size: int, source: str) -> str | None:
        """
        Hold C{size} bytes for C{source}, or say why not (naming the
        setting).
        """

    def give(self, size: int, source: str) -> None:
        """
        Bytes taken before for C{source} are no longer held.
        """


# Request headers that are HTTP/2's or gRPC's own, never custom metadata.
_RESERVED = frozenset(
    {b"content-type", b"te", b"user-agent", b"host", b"content-length", b"accept-encoding"}
)
_CONTENT_TYPES = (b"application/grpc", b"application/grpc+proto")


@dataclass
class _Outbound:
    """
    What a stream has queued to send: DATA with the Deferred each piece
    fires, then, last, its trailers.
    """

    data: Outbound = field(default_factory=Outbound)
    trailers: Headers | None = None


@dataclass
class _Stream:
    """
    @ivar oneRequest: whether the method takes one request (unary,
        server-streaming): the client owes it until it half-closes.
    @ivar requestDue: when the client's one request must be whole, or
        L{None} when it owes none.
    @ivar messageDue: when the message it began must be whole, or L{None}.
    @ivar charged: the declared bytes of the unfinished message charged to
        the server's L{MessageBudget}, to C{source}.
    """

    call: ServerCall[Any, Any]
    reader: MessageReader
    oneRequest: bool = False
    halfClosed: bool = False
    requestDue: float | None = None
    messageDue: float | None = None
    charged: int = 0
    source: str = ""
    outbound: _Outbound = field(default_factory=_Outbound)


def _dues(stream: _Stream) -> list[float]:
    """
    When what C{stream}'s client owes is due.
    """
    return [due for due in (stream.requestDue, stream.messageDue) if due is not None]


class GrpcServerProtocol(H2Protocol):
    """
    One client's HTTP/2 connection to a set of gRPC L{Method}s.

    Its L{ConnectionState} is C{GONE} once either end sent GOAWAY: h2
    closes its connection state on a GOAWAY either way, so the calls still
    open then cannot be answered: they are cancelled.
    """

    _log = Logger()

    #: The connection's context, made in L{connectionMade}.
    context: ConnectionContext
    #: Fires when a call is first admitted by its method's C{authorize}.
    whenProven: Deferred[None]

    def __init__(
        self,
        methods: dict[str, Method],
        limits: Limits,
        clock: IReactorTime,
        contexts: ContextFactory = ConnectionContext,
        budget: MessageBudget | None = None,
    ) -> None:
        super().__init__(limits, clock, clientSide=False)
        self._methods = methods
        self._budget = budget
        self._contexts = contexts
        self._streams: dict[int, _Stream] = {}
        self._resets = RateBound(limits.maxResetsPerWindow, limits.floodWindowSeconds, clock)
        self.whenProven = Deferred()
        self._proofTimer: IDelayedCall | None = None
        self._owedTimer: IDelayedCall | None = None
        # Who waits for the connection to be lost; None once it is.
        self._lost: list[Deferred[None]] | None = []

    @property
    def proven(self) -> bool:
        """
        Whether a call on this connection was admitted by its method's
        C{authorize}.
        """
        return self.whenProven.called

    # -- Connection life -------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.context = self._contexts(self.transport)
        if isinstance(self.factory, GrpcServerFactory):
            self.factory.connections.add(self)
        self._openConnection(self._limits.maxConcurrentStreams)
        self._flush()
        self._setTimer(self._limits.handshakeSeconds, self._handshakeExpired)
        if self._limits.authenticateSeconds is not None:
            self._proofTimer = self._clock.callLater(
                self._limits.authenticateSeconds, self._proofExpired
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = ConnectionState.GONE
        self._cancelTimer()
        self._cancelProofTimer()
        self._cancelOwedTimer()
        waiting, self._lost = self._lost, None
        for lost in waiting or ():
            lost.callback(None)
        self._abandonAll("the connection was lost")
        self.context.connectionLost()
        if isinstance(self.factory, GrpcServerFactory):
            self.factory.connections.discard(self)

    def close(self, reason: str) -> Deferred[None]:
        """
        End the connection for C{reason} (the server is stopping): the calls
        still open end C{UNAVAILABLE} with it (as far as flow control lets
        their trailers go now: h2 answers nothing after a GOAWAY), then
        GOAWAY C{NO_ERROR} with it as debug data.

        @return: fires once the connection is closed, what was written
            having gone or, for a client that does not read it, after
            C{closeSeconds}.
        """
        lost = self.whenLost()
        for stream in list(self._streams.values()):
            stream.call.fail(GrpcError(StatusCode.UNAVAILABLE, reason))
        self._goAway(ErrorCodes.NO_ERROR, reason)
        return lost

    def whenLost(self) -> Deferred[None]:
        """
        A Deferred that fires when the connection is lost.
        """
        lost: Deferred[None] = Deferred()
        if self._lost is None:
            lost.callback(None)
        else:
            self._lost.append(lost)
        return lost

    # -- Events ----------------------------------------------------------------

    def _eventReceived(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._requestReceived(event)
        elif isinstance(event, h2.events.DataReceived):
            self._dataReceived(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._streamEnded(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._streamReset(event)
        elif isinstance(event, h2.events.WindowUpdated):
            self._windowUpdated(event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self._trailersReceived(event)

    def _requestReceived(self, event: h2.events.RequestReceived) -> None:
        streamId = event.stream_id
        assert streamId is not None
        self._cancelTimer()  # not idle while a call is open
        headers = event.headers or []
        try:
            method, metadata, deadline, encoding = self._checkRequest(headers)
        except _NotGrpc as refusal:
            self._refuse(streamId, [(b":status", refusal.status)])
            return
        except GrpcError as error:
            self._refuse(streamId, trailersOnly(error.code, error.message))
            return
        assert self.transport is not None
        call: ServerCall[Any, Any] = ServerCall(
            self,
            streamId,
            method.path,
            metadata,
            deadline,
            self.transport.getPeer(),
            method.decode,
            method.encode,
            self._clock,
            self.context,
        )
        if method.authorize is not None:
            try:
                call.authority = method.authorize(call)
            except GrpcError as error:
                # Refused before anything it sends is read: its DATA is
                # dropped as a finished stream's is.
                self._refuse(streamId, trailersOnly(error.code, error.message))
                return
            if call.authority is not None:
                # None: undecided at the headers; the handler may prove it.
                self._proved()
        stream = _Stream(
            call,
            MessageReader(self._limits.maxMessageBytes, encoding),
            oneRequest=method.kind in ("unary", "server-streaming"),
        )
        self._streams[streamId] = stream
        self._owing(stream)
        call.start(method.run)

    def _checkRequest(
        self, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[Method, Metadata, float | None, bytes]:
        """
        The method a request calls, its metadata, deadline and message
        encoding.

        @raise _NotGrpc: for a request that is not gRPC (wrong method or
            content type): it gets a plain HTTP status.
        @raise GrpcError: for a gRPC request the server refuses.
        """
        fields: dict[bytes, bytes] = {}
        metadata: list[tuple[str, MetadataValue]] = []
        for name, value in headers:
            if name.startswith(b":") or name.startswith(b"grpc-") or name in _RESERVED:
                fields.setdefault(name, value)
                continue
            key = name.decode("latin-1")
            if key.endswith("-bin"):
                try:
                    # Senders may leave the padding out.
                    padded = value + b"=" * (-len(value) % 4)
                    metadata.append((key, base64.b64decode(padded, validate=True)))
                except binascii.Error:
                    raise GrpcError(StatusCode.INTERNAL, f"metadata {key} is not base64") from None
            else:
                metadata.append((key, value.decode("latin-1")))
        if fields.get(b":method") != b"POST":
            raise _NotGrpc(b"405")
        contentType = fields.get(b"content-type", b"")
        if contentType.split(b";")[0].strip() not in _CONTENT_TYPES:
            raise _NotGrpc(b"415")
        if fields.get(b"te") != b"trailers":
            raise GrpcError(StatusCode.INTERNAL, "te: trailers is required")
        path = fields.get(b":path", b"").decode("latin-1")
        method = self._methods.get(path)
        if method is None:
            raise GrpcError(StatusCode.UNIMPLEMENTED, f"unknown method {path[:200]}")
        encoding = fields.get(b"grpc-encoding", b"identity")
        if encoding not in ACCEPTED_ENCODINGS:
            shown = encoding[:40].decode("latin-1")
            raise GrpcError(StatusCode.UNIMPLEMENTED, f"grpc-encoding {shown} is not supported")
        timeout = fields.get(b"grpc-timeout")
        deadline = None if timeout is None else self._clock.seconds() + parseTimeout(timeout)
        return method, tuple(metadata), deadline, encoding

    def _dataReceived(self, event: h2.events.DataReceived) -> None:
        streamId = event.stream_id
        assert streamId is not None
        size = event.flow_controlled_length or 0
        data = event.data or b""
        if not data and not event.stream_ended:
            self._emptyFrame()
        stream = self._streams.get(streamId)
        if stream is None or stream.outbound.trailers is not None:
            # Answered already: what it still sends is read and dropped.
            self._acknowledge(streamId, size)
            return
        before = stream.reader.buffered
        try:
            messages = stream.reader.feed(data)
        except GrpcError as error:
            self._acknowledge(streamId, size + before)
            stream.call.fail(error)
            return
        # Padding is dropped at once; the bytes of whole messages are
        # acknowledged as the handler takes them; those of the message
        # still arriving when it is whole.
        self._acknowledge(streamId, size - len(data))
        self._owing(stream)
        stream.call.messagesReceived(messages, before + len(data) - stream.reader.buffered)
        refused = self._charge(stream)
        if refused is not None:
            stream.call.fail(GrpcError(StatusCode.RESOURCE_EXHAUSTED, refused))

    def _streamEnded(self, streamId: int | None) -> None:
        stream = self._streams.get(streamId or 0)
        if stream is None:
            return
        try:
            stream.reader.finish()
        except GrpcError as error:
            stream.call.fail(error)
            return
        stream.halfClosed = True
        self._owing(stream)
        stream.call.halfClosed()

    def _trailersReceived(self, event: h2.events.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is not None:
            stream.call.fail(GrpcError(StatusCode.INTERNAL, "a gRPC request has no trailers"))

    def _streamReset(self, event: h2.events.StreamReset) -> None:
        stream = self._forget(event.stream_id or 0)
        if self._resets.exceeded():
            self._goAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
        if stream is not None:
            self._abandon(stream, f"the client reset the stream ({event.error_code!s})")
            self._streamGone()

    def _windowUpdated(self, streamId: int | None) -> None:
        for each in [streamId] if streamId else list(self._streams):
            self._pump(each)

    def _handshakeDone(self) -> None:
        # The preface and the client's first SETTINGS: the connection is
        # idle until its first request.
        self._setTimer(self._limits.idleSeconds, self._idleExpired)

    def _remoteSettingsChanged(self, event: h2.events.RemoteSettingsChanged) -> None:
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._windowUpdated(None)

    def _pumpAll(self) -> None:
        for streamId in list(self._streams):
            self._pump(streamId)

    def _describeBreach(self, error: h2.exceptions.ProtocolError) -> str:
        return f"HTTP/2 error: {error}"

    # -- StreamCarrier: what calls send ------------------------------------------

    # Calls send from callbacks outside dataReceived too, so each of these
    # flushes what it made h2 write.

    def sendHeaders(self, streamId: int, headers: Headers) -> None:
        if streamId in self._streams and self._writable(streamId):
            self._h2.send_headers(streamId, headers)
            self._flush()

    def sendData(self, streamId: int, data: bytes) -> Deferred[None]:
        sent: Deferred[None] = Deferred()
        stream = self._streams.get(streamId)
        if stream is None:
            sent.errback(CallCancelled(f"stream {streamId} is gone"))
            return sent
        stream.outbound.data.append((memoryview(data), sent))
        self._pump(streamId)
        self._flush()
        return sent

    def sendTrailers(self, streamId: int, trailers: Headers) -> None:
        stream = self._streams.get(streamId)
        if stream is None:
            return
        stream.outbound.trailers = trailers
        self._pump(streamId)
        self._flush()

    def acknowledge(self, streamId: int, size: int) -> None:
        self._acknowledge(streamId, size)
        self._flush()

    def proved(self) -> None:
        self._proved()

    def resetStream(self, streamId: int) -> None:
        stream = self._forget(streamId)
        if self._writable(streamId):
            self._h2.reset_stream(streamId, ErrorCodes.CANCEL)
        if stream is not None:
            self._abandon(stream, "the server reset the stream")
            self._streamGone()
        self._flush()

    # -- Inside ----------------------------------------------------------------

    def _pump(self, streamId: int) -> None:
        """
        Send what stream C{streamId} has queued, as far as its window, the
        connection's window and the transport allow.
        """
        stream = self._streams.get(streamId)
        if stream is None or not self._writable(streamId):
            return
        outbound = stream.outbound
        sent = self._sendQueued(streamId, outbound.data)
        if outbound.trailers is not None and not outbound.data:
            self._h2.send_headers(streamId, outbound.trailers, end_stream=True)
            self._forget(streamId)
            self._resetIfOpen(streamId)
            self._streamGone()
        # Fired last, so that what their callbacks send pumps afresh.
        for whenSent in sent:
            whenSent.callback(None)

    def _refuse(self, streamId: int, headers: Headers) -> None:
        if self._writable(streamId):
            self._h2.send_headers(streamId, headers, end_stream=True)
            self._resetIfOpen(streamId)
        self._streamGone()

    def _writable(self, streamId: int) -> bool:
        """
        Whether h2 lets the server send on C{streamId}. h2 handles a whole
        read before its events are dispatched, so a stream the client
        reset later in that read is closed already while its earlier
        events are handled; its StreamReset event, which comes next,
        cleans it up.
        """
        stream = self._h2.streams.get(streamId)
        return not self._gone and stream is not None and not stream.closed

    def _resetIfOpen(self, streamId: int) -> None:
        """
        The answer on C{streamId} is complete: if the client has not
        half-closed (as h2 knows, which may be ahead of the events handled
        so far), reset the stream with NO_ERROR so it sends no more.
        """
        stream = self._h2.streams.get(streamId)
        if stream is not None and not stream.closed:
            self._h2.reset_stream(streamId, ErrorCodes.NO_ERROR)

    def _acknowledge(self, streamId: int, size: int) -> None:
        # For a stream that is gone, h2 reopens the connection's window only.
        if size and not self._gone:
            self._h2.acknowledge_received_data(size, streamId)

    def _forget(self, streamId: int) -> _Stream | None:
        """
        Stream C{streamId} is done: give the connection's window back what
        is left of an unfinished message. (Its call gives back what its
        handler did not take.)
        """
        stream = self._streams.pop(streamId, None)
        if stream is not None:
            self._acknowledge(streamId, stream.reader.buffered)
            self._uncharge(stream)
        return stream

    def _charge(self, stream: _Stream) -> str | None:
        """
        Charge the message C{stream} is receiving, if it began one, to the
        server's budget in place of the one charged before; why not, when
        the budget refuses it.
        """
        owed = stream.reader.owed
        if self._budget is None or owed == stream.charged:
            return None
        self._uncharge(stream)
        if not owed:
            return None
        if not stream.source:
            stream.source = self._budget.sourceOf(stream.call)
        refused = self._budget.take(owed, stream.source)
        if refused is None:
            stream.charged = owed
        return refused

    def _uncharge(self, stream: _Stream) -> None:
        charged, stream.charged = stream.charged, 0
        if charged and self._budget is not None:
            self._budget.give(charged, stream.source)

    def _abandon(self, stream: _Stream, why: str) -> None:
        # The call first, so that its handler is cancelled rather than
        # failed by the sends below.
        stream.call.abort(why)
        outbound = stream.outbound
        while outbound.data:
            _, whenSent = outbound.data.popleft()
            if not whenSent.called:
                whenSent.errback(CallCancelled(why))

    def _streamGone(self) -> None:
        if not self._streams and not self._gone:
            self._setTimer(self._limits.idleSeconds, self._idleExpired)

    def _goAway(self, code: ErrorCodes | int, reason: str) -> None:
        """
        End the connection for C{reason}: GOAWAY with it as debug data,
        every call abandoned, and the transport aborted if the client does
        not read the GOAWAY within C{closeSeconds}.
        """
        if self._gone:
            return
        if code == ErrorCodes.NO_ERROR:
            # The server's own decision (idle, stopping): routine.
            self._log.debug(
                "gRPC connection from {peer} closed: {reason}",
                peer=peerName(self.transport),
                reason=reason,
            )
        else:
            self._warnings().warn(
                "gRPC connection closed",
                "gRPC connection from {peer} closed: {reason}",
                peer=peerName(self.transport),
                reason=reason,
            )
        self._state = ConnectionState.GONE
        # h2 may have queued a GOAWAY of its own (without a reason) for
        # the error it raised: ours replaces it.
        self._h2.clear_outbound_data_buffer()
        self._h2.close_connection(
            error_code=code,
            additional_data=reason.encode("utf-8")[:256],
            last_stream_id=self._h2.highest_inbound_stream_id,
        )
        self._abandonAll(reason)
        self._closeTransport()

    def _wentAway(self, event: h2.events.ConnectionTerminated) -> None:
        """
        The client sent GOAWAY: it closes the connection, whose open calls
        are cancelled.
        """
        self._state = ConnectionState.GONE
        self._abandonAll(f"the client went away ({event.error_code!s})")
        self._closeTransport()

    def _abandonAll(self, why: str) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._abandon(stream, why)

    def _handshakeExpired(self) -> None:
        self._timer = None
        self._warnings().warn(
            "gRPC handshake timeout",
            "gRPC connection from {peer} aborted: no HTTP/2 preface within {seconds} s",
            peer=peerName(self.transport),
            seconds=self._limits.handshakeSeconds,
        )
        self._abort()

    # -- Requests owed ---------------------------------------------------------

    # A call open is activity, so the idle timer does not run; but one that
    # waits for bytes the client does not send is not. A message begun must
    # be whole within messageSeconds of its first byte (its bytes come at
    # line speed, and it holds up to a window of the server's memory till
    # then); a unary call's one request within idleSeconds of its headers.
    # Otherwise the call fails. One timer, for the earliest due, checks
    # them all.

    def _owing(self, stream: _Stream) -> None:
        now = self._clock.seconds()
        if not stream.oneRequest or stream.halfClosed:
            stream.requestDue = None
        elif stream.requestDue is None:
            stream.requestDue = now + self._limits.idleSeconds
        if not stream.reader.buffered:
            stream.messageDue = None
        elif stream.messageDue is None:
            stream.messageDue = now + self._limits.messageSeconds
        due = min(_dues(stream), default=None)
        timer = self._owedTimer
        if due is not None and (timer is None or timer.getTime() > due):
            self._cancelOwedTimer()
            self._owedTimer = self._clock.callLater(due - now, self._owedExpired)

    def _owedExpired(self) -> None:
        self._owedTimer = None
        if self._gone:
            return
        now = self._clock.seconds()
        limits = self._limits
        pending: list[float] = []
        for stream in list(self._streams.values()):
            if stream.requestDue is not None and stream.requestDue <= now:
                what = f"the request did not arrive whole within {limits.idleSeconds:g} s"
            elif stream.messageDue is not None and stream.messageDue <= now:
                what = f"the message begun did not arrive whole within {limits.messageSeconds:g} s"
            else:
                pending += _dues(stream)
                continue
            stream.requestDue = stream.messageDue = None
            stream.call.fail(GrpcError(StatusCode.DEADLINE_EXCEEDED, what))
        self._flush()
        if pending:
            self._owedTimer = self._clock.callLater(min(pending) - now, self._owedExpired)

    def _cancelOwedTimer(self) -> None:
        timer, self._owedTimer = self._owedTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _proved(self) -> None:
        if not self.whenProven.called:
            self._cancelProofTimer()
            self.whenProven.callback(None)

    def _proofExpired(self) -> None:
        self._proofTimer = None
        self._goAway(
            ErrorCodes.ENHANCE_YOUR_CALM,
            f"no authenticated call within {self._limits.authenticateSeconds:g} s"
            " of connecting (a token or client certificate is required)",
        )

    def _cancelProofTimer(self) -> None:
        timer, self._proofTimer = self._proofTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _warnings(self) -> RepeatedWarnings:
        """
        The server's one budget of warnings clients can make it log: a
        client may open any number of connections.
        """
        if isinstance(self.factory, GrpcServerFactory):
            return self.factory.warnings
        return RepeatedWarnings(self._log, self._clock)

    def _idleExpired(self) -> None:
        self._timer = None
        self._goAway(ErrorCodes.NO_ERROR, f"idle for {self._limits.idleSeconds:g} s")


class _NotGrpc(Exception):
    """
    A request that is not gRPC at all, answered with HTTP C{status}.
    """

    def __init__(self, status: bytes) -> None:
        super().__init__(status)
        self.status = status


class GrpcServerFactory(ServerFactory):
    """
    Serves C{methods} on every connection, within C{limits}.
    """

    def __init__(
        self,
        methods: Iterable[Method],
        limits: Limits | None = None,
        reactor: IReactorTime | None = None,
        contexts: ContextFactory = ConnectionContext,
        budget: MessageBudget | None = None,
    ) -> None:
        """
        @param contexts: makes each connection's L{ConnectionContext}.
        @param budget: what every connection's unfinished messages are
            charged to; L{None}: only each connection's window bounds them.
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        assert reactor is not None
        self.clock: IReactorTime = reactor
        self.limits = limits if limits is not None else Limits()
        self.methods = {method.path: method for method in methods}
        self.contexts = contexts
        self.budget = budget
        #: The connections open now.
        self.connections: set[GrpcServerProtocol] = set()
        #: What clients can make it log, at a bounded rate.
        self.warnings = RepeatedWarnings(GrpcServerProtocol._log, reactor)

    def buildProtocol(self, addr: object) -> GrpcServerProtocol:
        protocol = GrpcServerProtocol(
            self.methods, self.limits, self.clock, self.contexts, self.budget
        )
        protocol.factory = self
        return protocol

    def closeAll(self, reason: str) -> Deferred[None]:
        """
        End every open connection for C{reason} (see
        L{GrpcServerProtocol.close}).

        @return: fires once they are all closed (within C{closeSeconds}),
            so that a server stopping its reactor lets their last statuses
            and GOAWAYs go first.
        """
        closing = [protocol.close(reason) for protocol in list(self.connections)]
        return gatherResults(closing).addCallback(lambda _: None)


class GrpcRefusal(TwistedProtocol):
    """
    An HTTP/2 connection the server will not serve, for C{reason}: the
    first call on it ends at once C{UNAVAILABLE} with the reason (what a
    gRPC client reports and retries), then the connection goes with GOAWAY
    carrying it too; one that sends no call within C{seconds} gets the
    GOAWAY alone. Nothing else it sends is looked at.
    """

    def __init__(self, reason: str, clock: IReactorTime, seconds: float = 1.0) -> None:
        self.reason = reason
        self._clock = clock
        self._seconds = seconds
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._h2.initiate_connection()
        self._write()
        self._timer = self._clock.callLater(self._seconds, self._close)

    def dataReceived(self, data: bytes) -> None:
        if self._timer is None:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id:
                self._h2.send_headers(
                    event.stream_id,
                    trailersOnly(StatusCode.UNAVAILABLE, self.reason),
                    end_stream=True,
                )
                self._close()
                return
        self._write()

    def _close(self) -> None:
        self._cancelTimer()
        self._h2.close_connection(
            error_code=ErrorCodes.NO_ERROR,
            additional_data=self.reason.encode("utf-8")[:256],
            last_stream_id=self._h2.highest_inbound_stream_id,
        )
        self._write()
        assert self.transport is not None
        self.transport.loseConnection()

    def _write(self) -> None:
        assert self.transport is not None
        self.transport.write(self._h2.data_to_send())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
