# -*- test-case-name: promtwist.test.test_grpc_connection,promtwist.test.test_grpc_interop -*-
"""
One gRPC call as its handler sees it: the request's metadata and deadline,
messages to L{ServerCall.receive} and to L{ServerCall.send}, and the
initial metadata to add before the first response.

A call is owned by its connection (L{promtwist.grpc.connection}), which
feeds it what its stream receives and carries what it sends. The call owns
the handler's Deferred: it ends the call with the status that Deferred
gives, and cancels it when the client resets the stream, the connection
is lost or the deadline passes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.grpc.context import ConnectionContext
from promtwist.grpc.inbox import Inbox
from promtwist.grpc.messages import Message, frameMessage
from promtwist.grpc.status import GrpcError, StatusCode, encodeMessage

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: A metadata value: text, or bytes for a key ending in C{-bin}.
MetadataValue = str | bytes
Metadata = tuple[tuple[str, MetadataValue], ...]
Headers = list[tuple[bytes, bytes]]


class StreamCarrier(Protocol):
    """
    What a call needs from its connection: its stream's half of HTTP/2.
    """

    def sendHeaders(self, streamId: int, headers: Headers) -> None:
        """
        Send the response headers (C{:status} and initial metadata).
        """

    def sendData(self, streamId: int, data: bytes) -> Deferred[None]:
        """
        Queue DATA; the Deferred fires when flow control let all of it go.
        """

    def sendTrailers(self, streamId: int, trailers: Headers) -> None:
        """
        End the stream with C{trailers} (or a trailers-only response) once
        what is queued has gone.
        """

    def acknowledge(self, streamId: int, size: int) -> None:
        """
        Reopen C{size} bytes of the stream's receive window.
        """

    def resetStream(self, streamId: int) -> None:
        """
        End the stream at once with C{RST_STREAM CANCEL}: what is queued on
        it is dropped, and nothing more is sent or read on it.
        """

    def proved(self) -> None:
        """
        A call proved who the client is, later than its headers could (see
        L{ServerCall.prove}).
        """


# What every response starts with: the encodings promtwist decodes are
# advertised, though it sends none compressed.
_RESPONSE_HEADERS: Headers = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity,gzip"),
]


def statusTrailers(code: StatusCode, message: str) -> Headers:
    """
    The trailers that end a call with C{code} and C{message}.
    """
    trailers: Headers = [(b"grpc-status", b"%d" % code)]
    if message:
        trailers.append((b"grpc-message", encodeMessage(message)))
    return trailers


def trailersOnly(
    code: StatusCode, message: str, initialMetadata: Sequence[tuple[bytes, bytes]] = ()
) -> Headers:
    """
    A whole response in one header block, for a call that ends before it
    sends anything: gRPC's trailers-only form.
    """
    return [*_RESPONSE_HEADERS, *initialMetadata, *statusTrailers(code, message)]


class _State(enum.Enum):
    OPEN = "open"
    FINISHED = "finished"  # the trailers are queued
    CANCELLED = "cancelled"  # reset, lost or expired: nothing more is sent


class CallCancelled(CancelledError):
    """
    A call's stream went away: why is in C{args[0]}.
    """


_log = Logger(namespace="promtwist.grpc.call")


class ServerCall(Generic[Req, Resp]):
    """
    @ivar method: the path called, C{/Service/method}.
    @ivar metadata: the client's custom metadata, in order, keys in lower
        case; values of C{-bin} keys are bytes.
    @ivar deadline: when the client stops waiting (from C{grpc-timeout}),
        in the clock's seconds, or L{None}.
    @ivar peer: who called, as the transport says.
    @ivar context: the HTTP/2 connection's L{ConnectionContext}, shared by
        every call on it; its C{initialMetadata} goes in this call's
        response headers.
    @ivar authority: what the method's C{authorize} returned for this call
        (an identity), or L{None}.
    """

    def __init__(
        self,
        carrier: StreamCarrier,
        streamId: int,
        method: str,
        metadata: Metadata,
        deadline: float | None,
        peer: object,
        decode: Callable[[bytes], Req],
        encode: Callable[[Resp], bytes],
        clock: IReactorTime,
        context: ConnectionContext,
    ) -> None:
        self.method = method
        self.metadata = metadata
        self.deadline = deadline
        self.peer = peer
        self.context = context
        self.authority: object = None
        self._carrier = carrier
        self._streamId = streamId
        self._decode = decode
        self._encode = encode
        self._clock = clock
        self._state = _State.OPEN
        self._headersSent = False
        self._initialMetadata: Headers = []
        # Its window is given back as the handler takes the messages (or
        # the call ends): the backpressure a slow handler puts on its client.
        self._inbox: Inbox[Req] = Inbox(
            self, self._read, lambda size: carrier.acknowledge(streamId, size)
        )
        self._running: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<ServerCall {self.method} stream {self._streamId} {self._state.value}>"

    # -- What a handler uses -------------------------------------------------

    def prove(self) -> None:
        """
        This call proved who its client is, as its method's C{authorize}
        does at the headers (a native link's Hello inside the call, say):
        the connection counts as authenticated from now on.
        """
        self._carrier.proved()

    @property
    def transport(self) -> object:
        """
        The HTTP/2 connection's transport (TLS under TLS), for what the
        connection proves about its peer (a client certificate); a call
        sends nothing through it.
        """
        return self.context.transport

    def get(self, key: str) -> MetadataValue | None:
        """
        The first value of metadata C{key} (lower case), or L{None}.
        """
        for name, value in self.metadata:
            if name == key:
                return value
        return None

    def addInitialMetadata(self, key: str, value: str) -> None:
        """
        Send C{key: value} in the response headers (as upstream's proxy
        sends C{agent-id}).

        @raise RuntimeError: when the headers have already gone.
        """
        if self._headersSent:
            raise RuntimeError(f"{self!r}: response headers already sent")
        self._initialMetadata.append((key.encode("ascii"), value.encode("ascii")))

    @property
    def cancelled(self) -> bool:
        """
        Whether the stream went away (the client reset it, sent GOAWAY or
        lost the connection). A call past its deadline is not cancelled
        but finished, with C{DEADLINE_EXCEEDED}.
        """
        return self._state is _State.CANCELLED

    def receive(self) -> Deferred[Req | None]:
        """
        The client's next message, or L{None} once it has half-closed. One
        receive at a time.
        """
        over = self._state is not _State.OPEN
        return self._inbox.receive(
            CallCancelled(f"{self!r}: receive() after the call ended") if over else None
        )

    def send(self, message: Resp) -> Deferred[None]:
        """
        Send one response message (the headers first, if they have not
        gone). The Deferred fires when the client's window took all of it:
        a server-streaming handler that waits for it sends no faster than
        its client reads.
        """
        if self._state is not _State.OPEN:
            raise CallCancelled(f"{self!r}: send() after the call ended")
        self._sendHeaders()
        return self._carrier.sendData(self._streamId, frameMessage(self._encode(message)))

    def reset(self, why: str) -> None:
        """
        End the call at once, without a status: the stream is reset
        (C{CANCEL}), what is queued on it dropped, its handler cancelled.
        For a handler that gives up on its peer (one that stopped reading,
        say), since a status would wait behind what the peer does not read;
        the connection and its other calls go on.
        """
        if self._state is _State.CANCELLED:
            return
        # Cancelled first, so that its handler is not failed by the sends
        # the reset drops.
        self.abort(why)
        self._carrier.resetStream(self._streamId)

    # -- What the connection drives ------------------------------------------

    def start(self, run: Callable[[ServerCall[Req, Resp]], Deferred[None]]) -> None:
        """
        Run the method's handler (and the deadline's timer) on this call.
        """
        if self.deadline is not None:
            self._timer = self._clock.callLater(
                max(0.0, self.deadline - self._clock.seconds()), self._expired
            )
        running = maybeDeferred(run, self)
        self._running = running
        running.addCallbacks(self._succeeded, self._failed)

    def messagesReceived(self, messages: list[Message], size: int) -> None:
        """
        The stream's DATA completed C{messages}, which took C{size} bytes of
        its window.
        """
        self._inbox.add(messages, size)

    def halfClosed(self) -> None:
        """
        The client sent END_STREAM.
        """
        self._inbox.end(None)

    def fail(self, error: GrpcError) -> None:
        """
        End the call with C{error} (a bad message on its stream, say),
        cancelling the handler.
        """
        if self._state is _State.OPEN:
            self._finish(error.code, error.message)
            self._stopHandler()

    def abort(self, why: str) -> None:
        """
        The stream is gone (C{why}): send nothing more, cancel the handler.
        """
        if self._state is _State.CANCELLED:
            return
        self._state = _State.CANCELLED
        self._cancelTimer()
        self._inbox.end(Failure(CallCancelled(why)))
        self._stopHandler()

    # -- Inside ----------------------------------------------------------------

    def _read(self, message: Message) -> Deferred[Req]:
        try:
            raw = message.payload()
        except GrpcError as error:
            return fail(error)
        try:
            return succeed(self._decode(raw))
        except Exception:  # noqa: BLE001  # whatever the decoder raises is the client's fault
            # Failing the receive (not the call) lets the error reach the
            # handler's Deferred, which ends the call with it.
            return fail(
                GrpcError(StatusCode.INTERNAL, f"could not parse the request for {self.method}")
            )

    def _sendHeaders(self) -> None:
        if not self._headersSent:
            self._headersSent = True
            self._carrier.sendHeaders(
                self._streamId,
                [*_RESPONSE_HEADERS, *self._allInitialMetadata()],
            )

    def _allInitialMetadata(self) -> Headers:
        """
        The call's own initial metadata, then its connection's.
        """
        connection = [
            (key.encode("ascii"), value.encode("ascii"))
            for key, value in self.context.initialMetadata
        ]
        return [*self._initialMetadata, *connection]

    def _finish(self, code: StatusCode, message: str) -> None:
        self._state = _State.FINISHED
        self._cancelTimer()
        self._inbox.drop()
        if self._headersSent:
            self._carrier.sendTrailers(self._streamId, statusTrailers(code, message))
        else:
            # Trailers-only: the initial metadata goes with the status.
            self._headersSent = True
            self._carrier.sendTrailers(
                self._streamId, trailersOnly(code, message, self._allInitialMetadata())
            )

    def _succeeded(self, _: None) -> None:
        self._running = None
        if self._state is _State.OPEN:
            self._finish(StatusCode.OK, "")

    def _failed(self, failure: Failure) -> None:
        self._running = None
        if self._state is not _State.OPEN:
            # Cancelled or failed by us: the stream already has its answer.
            return
        if failure.check(GrpcError):
            error = failure.value
            assert isinstance(error, GrpcError)
            self._finish(error.code, error.message)
        else:
            _log.failure("gRPC handler for {method} failed", failure, method=self.method)
            self._finish(StatusCode.UNKNOWN, "the handler failed; the server logged why")

    def _expired(self) -> None:
        self._timer = None
        if self._state is _State.OPEN:
            self._finish(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            self._stopHandler()

    def _stopHandler(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.cancel()

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
