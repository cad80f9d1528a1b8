"""
A raw HTTP/2 client for the gRPC transport's tests: it writes whatever
frames a test builds (hostile ones included) straight into a
L{GrpcServerProtocol} on a L{StringTransport} and a L{Clock}, and parses
what the server writes back frame by frame. No socket, no real time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from h2.errors import ErrorCodes
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from promtwist.grpc.call import ServerCall
from promtwist.grpc.connection import GrpcServerFactory, GrpcServerProtocol, MessageBudget
from promtwist.grpc.context import ConnectionContext, ContextFactory
from promtwist.grpc.limits import Limits
from promtwist.grpc.messages import frameMessage
from promtwist.grpc.service import (
    Method,
    bidirectional,
    clientStreaming,
    serverStreaming,
    unary,
)
from promtwist.grpc.status import GrpcError, StatusCode

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Answer:
    """
    What the server sent on one stream.
    """

    headers: list[dict[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int | None:
        """
        The grpc-status of the last header block, if it has one.
        """
        for block in reversed(self.headers):
            if b"grpc-status" in block:
                return int(block[b"grpc-status"])
        return None

    @property
    def message(self) -> bytes | None:
        return self.headers[-1].get(b"grpc-message") if self.headers else None

    def messages(self) -> list[bytes]:
        out, rest = [], self.data
        while rest:
            length = int.from_bytes(rest[1:5], "big")
            out.append(rest[5 : 5 + length])
            rest = rest[5 + length :]
        return out


class RawPeer:
    """
    One client connection, connected on construction (preface and an
    empty SETTINGS sent).

    @ivar goAway: the server's GOAWAY, once it sent one.
    """

    def __init__(
        self,
        methods: Iterable[Method],
        limits: Limits | None = None,
        clock: Clock | None = None,
        preface: bool = True,
        contexts: ContextFactory = ConnectionContext,
        over: tuple[IProtocol, StringTransport] | None = None,
        budget: MessageBudget | None = None,
    ) -> None:
        """
        @param over: a protocol already connected to a transport, to be the
            server instead of one serving C{methods} (the agent port's).
        @param budget: the server's budget of unfinished messages.
        """
        self.clock = clock or Clock()
        if over is None:
            self.protocol: GrpcServerProtocol = GrpcServerFactory(
                methods, limits, self.clock, contexts, budget
            ).buildProtocol(None)
            self.transport = StringTransport()
            self.protocol.makeConnection(self.transport)
            self.wire: IProtocol = self.protocol
        else:
            self.wire, self.transport = over
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.answers: dict[int, Answer] = {}
        self.frames: list[Frame] = []
        self.goAway: GoAwayFrame | None = None
        self.serverSettings: dict[int, int] = {}
        self._unparsed = b""
        if preface:
            self.send(PREFACE, SettingsFrame(0))

    def send(self, *frames: Frame | bytes) -> None:
        self.wire.dataReceived(
            b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
        )
        self.read()

    def read(self) -> None:
        """
        Parse what the server wrote since the last read.
        """
        self._unparsed += self.transport.value()
        self.transport.clear()
        while len(self._unparsed) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._unparsed[:9]))
            if len(self._unparsed) < 9 + length:
                break
            frame.parse_body(memoryview(self._unparsed[9 : 9 + length]))
            self._unparsed = self._unparsed[9 + length :]
            self._received(frame)

    def _received(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, GoAwayFrame):
            self.goAway = frame
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.serverSettings.update(frame.settings)
        elif isinstance(frame, HeadersFrame):
            answer = self.answers.setdefault(frame.stream_id, Answer())
            answer.headers.append(dict(self.decoder.decode(frame.data, raw=True)))
            answer.ended = answer.ended or "END_STREAM" in frame.flags
        elif isinstance(frame, DataFrame):
            answer = self.answers.setdefault(frame.stream_id, Answer())
            answer.data += frame.data
            answer.ended = answer.ended or "END_STREAM" in frame.flags
        elif isinstance(frame, RstStreamFrame):
            self.answers.setdefault(frame.stream_id, Answer()).reset = frame.error_code

    def headers(
        self,
        streamId: int,
        headers: Sequence[tuple[bytes, bytes]],
        end: bool = False,
    ) -> HeadersFrame:
        return headersFrame(self.encoder, streamId, headers, end)

    def request(
        self,
        streamId: int,
        path: bytes = b"/test.Echo/unary",
        messages: Sequence[bytes] | None = (b"hello",),
        extra: Sequence[tuple[bytes, bytes]] = (),
        base: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """
        Send a gRPC request on C{streamId} (L{requestHeaders} for C{path}
        unless C{base} says otherwise, then C{extra}); with C{messages}
        L{None} the stream is left open after the headers.
        """
        if base is None:
            base = requestHeaders(path)
        frames: list[Frame] = [self.headers(streamId, [*base, *extra])]
        if messages is not None:
            frames.append(data(streamId, b"".join(frameMessage(m) for m in messages), end=True))
        self.send(*frames)

    def answer(self, streamId: int) -> Answer:
        return self.answers.get(streamId, Answer())

    @property
    def goAwayReason(self) -> tuple[int, bytes] | None:
        if self.goAway is None:
            return None
        return self.goAway.error_code, self.goAway.additional_data


def requestHeaders(
    path: bytes = b"/test.Echo/unary", **changes: bytes
) -> list[tuple[bytes, bytes]]:
    """
    The headers of a gRPC request for C{path}; C{changes} replaces some
    (C{content_type} for C{content-type}, and so on; an empty value drops
    the header).
    """
    fields = {
        b":method": b"POST",
        b":scheme": b"http",
        b":path": path,
        b":authority": b"localhost",
        b"content-type": b"application/grpc",
        b"te": b"trailers",
    }
    for key, value in changes.items():
        fields[key.replace("_", "-").encode()] = value
    return [(k, v) for k, v in fields.items() if v]


def headersFrame(
    encoder: Encoder, streamId: int, headers: Sequence[tuple[bytes, bytes]], end: bool = False
) -> HeadersFrame:
    frame = HeadersFrame(streamId, encoder.encode(headers))
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    return frame


def reset(streamId: int, code: int = ErrorCodes.CANCEL) -> RstStreamFrame:
    frame = RstStreamFrame(streamId)
    frame.error_code = code
    return frame


def data(streamId: int, payload: bytes, end: bool = False) -> DataFrame:
    frame = DataFrame(streamId, payload)
    if end:
        frame.flags.add("END_STREAM")
    return frame


def windowUpdate(streamId: int, increment: int) -> WindowUpdateFrame:
    frame = WindowUpdateFrame(streamId)
    frame.window_increment = increment
    return frame


def continuation(streamId: int, block: bytes, last: bool) -> ContinuationFrame:
    frame = ContinuationFrame(streamId, block)
    if last:
        frame.flags.add("END_HEADERS")
    return frame


def _same(data: bytes) -> bytes:
    return data


class EchoService:
    """
    The test service C{test.Echo}, on raw bytes, one method of each kind:

      - C{unary}: answers its request; C{fail:CODE:text} fails with that
        status instead;
      - C{metadata}: answers the request's metadata as C{key=value} lines,
        and sends C{agent-id: 7} in its response headers, as upstream's
        proxy does;
      - C{hold}: never answers (until cancelled, which it notes);
      - C{count}: server-streaming, C{N} answers for a request C{N};
      - C{collect}: client-streaming, answers its requests joined by C{,};
      - C{chat}: bidirectional, answers each request as it comes.

    @ivar cancelled: the paths of calls whose handler was cancelled.
    @ivar held: the calls C{hold} holds.
    """

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.held: list[ServerCall[bytes, bytes]] = []

    def methods(self) -> list[Method]:
        return [
            unary("/test.Echo/unary", self.unary, _same, _same),
            unary("/test.Echo/metadata", self.metadata, _same, _same),
            unary("/test.Echo/hold", self.hold, _same, _same),
            serverStreaming("/test.Echo/count", self.count, _same, _same),
            clientStreaming("/test.Echo/collect", self.collect, _same, _same),
            bidirectional("/test.Echo/chat", self.chat, _same, _same),
        ]

    def unary(self, request: bytes, call: ServerCall[bytes, bytes]) -> bytes:
        if request.startswith(b"fail:"):
            _, code, text = request.split(b":", 2)
            raise GrpcError(StatusCode(int(code)), text.decode())
        return request

    def metadata(self, request: bytes, call: ServerCall[bytes, bytes]) -> bytes:
        call.addInitialMetadata("agent-id", "7")
        return b"".join(f"{key}={value!r}\n".encode() for key, value in call.metadata)

    def hold(self, request: bytes, call: ServerCall[bytes, bytes]) -> Deferred[bytes]:
        self.held.append(call)
        return Deferred(lambda _: self.cancelled.append(call.method))

    def count(self, request: bytes, call: ServerCall[bytes, bytes]) -> Deferred[None]:
        async def send() -> None:
            try:
                for i in range(int(request)):
                    await call.send(b"%d" % i)
            except CancelledError:
                self.cancelled.append(call.method)
                raise

        return Deferred.fromCoroutine(send())

    async def _collect(self, call: ServerCall[bytes, bytes]) -> bytes:
        parts = []
        while (part := await call.receive()) is not None:
            parts.append(part)
        return b",".join(parts)

    def collect(self, call: ServerCall[bytes, bytes]) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self._collect(call))

    async def _chat(self, call: ServerCall[bytes, bytes]) -> None:
        while (part := await call.receive()) is not None:
            await call.send(b"re: " + part)

    def chat(self, call: ServerCall[bytes, bytes]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._chat(call))
