# -*- test-case-name: promtwist.test.test_client -*-
"""
A thin HTTP/1.1 client for scrape targets: one GET at a time per
connection, parsed by httptools (llhttp, strict about request smuggling),
over a keep-alive pool of connections per target origin.

It does what a scrape needs and nothing more, because twisted.web's client
(endpoint construction, URI parsing and IDNA per request, its pool and
dispatcher) was most of the agent's CPU per scrape. The request bytes come
from the caller, built mostly once per configured path (see
L{promtwist.agent.fetch.Target}); the answer goes to an L{IResponseReceiver}
as a head, body bytes, and one ending.

Bounds: the caller's deadline (it stops the exchange), the endpoint's
connect timeout, and L{MAX_HEAD_BYTES} for a response head. Anything llhttp
refuses (both Content-Length and chunked, bad chunk sizes, a bad status
line...) fails the exchange with a one-line reason and the connection is
discarded: it is reused only after a complete, well-formed, keep-alive
answer with nothing after it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol as TypingProtocol
from typing import cast

import httptools
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from promtwist.logs import clip
from promtwist.sendnow import PENDING, sendsOnReturn

# A response head longer than this (status line and fields) is refused:
# a real one is a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
# What twisted.web's HTTPConnectionPool kept an idle connection for.
IDLE_TIMEOUT_SECS = 240.0


@dataclass(frozen=True)
class Origin:
    """
    Where a request goes; connections are pooled per origin.

    @ivar host: the host to connect to (IDNA-encoded, no brackets for IPv6).
    """

    scheme: str
    host: str
    port: int


@dataclass
class Head:
    """
    A response head: only the fields a scrape uses are kept.

    @ivar length: the declared Content-Length, or -1.
    """

    status: int
    phrase: str
    contentType: str = ""
    contentEncoding: str = ""
    length: int = -1
    # Framed by the connection closing: no Content-Length, not chunked.
    untilClose: bool = True


class IResponseReceiver(TypingProtocol):
    """
    Where an exchange delivers its response: L{responseHead} once, then
    L{responseData} any number of times, then exactly one of
    L{responseEnded} or L{responseFailed}. A failure can come at any
    point, including before any head.
    """

    def responseHead(self, head: Head) -> None: ...

    def responseData(self, data: bytes) -> None: ...

    def responseEnded(self) -> None: ...

    def responseFailed(self, reason: str) -> None: ...


class _State(Enum):
    IDLE = auto()  # in the pool, or just connected
    WAITING = auto()  # request sent, nothing received
    HEAD = auto()  # some of the response head received
    BODY = auto()
    DONE = auto()  # closed, or discarded


def describeConnectFailure(failure: Failure) -> str:
    """
    A short cause for a connection that could not be made, without a
    traceback.
    """
    value = failure.value
    if isinstance(value, netError.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, netError.DNSLookupError):
        return "host name lookup failed"
    if isinstance(value, (netError.TimeoutError, netError.TCPTimedOutError)):
        return "connect timed out"
    return failure.getErrorMessage() or type(value).__name__


class _OutOfTurn(Exception):
    """
    A target began a second answer to one request.
    """


class HTTP11ClientProtocol(Protocol):
    """
    One connection to a target: sends one request at a time and parses its
    answer, an explicit state machine (L{_State}).

    httptools calls the C{on_*} methods from inside L{dataReceived}; the
    frames they make the scrape send leave when it returns (L{sendsOnReturn}),
    and a request written here leaves when the link's read that asked for
    it returns.
    """

    def __init__(self, pool: TargetPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.state = _State.IDLE
        self.exchange: Exchange | None = None
        # Whether this connection served an answer before this exchange: a
        # failure before anything arrives then may be a stale connection.
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._head: Head | None = None
        self._headBytes = 0
        self._keepAlive = False
        self._complete = False
        self._idleTimer: IDelayedCall | None = None
        self._lostWaiters: list[Deferred[None]] = []

    # Driving.

    def send(self, exchange: Exchange) -> None:
        """
        Send C{exchange}'s request on this idle connection.
        """
        self.exchange = exchange
        exchange.connection = self
        self.state = _State.WAITING
        self._head = None
        self._headBytes = 0
        self._complete = False
        assert self.transport is not None
        self.transport.write(exchange.request)
        PENDING.wrote(self.transport)

    def abort(self) -> None:
        """
        Drop the connection at once, whatever it was doing.
        """
        self.state = _State.DONE
        self.exchange = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def whenLost(self) -> Deferred[None]:
        """
        A new Deferred that fires when this connection is closed.
        """
        waiter: Deferred[None] = Deferred()
        self._lostWaiters.append(waiter)
        return waiter

    def idle(self, timer: IDelayedCall) -> None:
        self._idleTimer = timer
        self.state = _State.IDLE

    def unidle(self) -> None:
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None

    # From the network.

    @sendsOnReturn
    def dataReceived(self, data: bytes) -> None:
        if self.state is _State.IDLE:
            # Nothing was asked: a target talking out of turn is not to be
            # trusted with the next request.
            self.pool.discard(self)
            return
        if self.state is _State.DONE:
            return
        if self.state is _State.WAITING:
            self.state = _State.HEAD
        if self.state is _State.HEAD:
            # httptools keeps a field until it is whole: what it holds is
            # bounded here, one read past the limit at most.
            self._headBytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _OutOfTurn):
                raise
            # A second answer after the whole first one: the first stands,
            # the connection is not to be trusted with another request.
            self._keepAlive = False
        except httptools.HttpParserUpgrade:
            return self._failed("switched protocols (HTTP upgrade), which a scrape cannot follow")
        except httptools.HttpParserError as e:
            return self._failed(f"sent an invalid HTTP response: {clip(str(e))}")
        if self.state is _State.HEAD and self._headBytes > MAX_HEAD_BYTES:
            return self._failed(f"sent a response head of more than {MAX_HEAD_BYTES} bytes")
        if self._complete and self.state is _State.BODY:
            self._finished()

    def connectionLost(self, reason: Failure = Failure(netError.ConnectionDone())) -> None:
        state, self.state = self.state, _State.DONE
        self.unidle()
        exchange, self.exchange = self.exchange, None
        self.pool.lost(self)
        waiters, self._lostWaiters = self._lostWaiters, []
        for waiter in waiters:
            waiter.callback(None)
        if exchange is None:
            return
        if state is _State.WAITING and self.reused:
            # Closed before any answer on a connection that sat in the pool:
            # most likely the target's idle timeout, and the request was not
            # processed. Once, on a fresh connection.
            return self.pool.retry(exchange)
        head = self._head
        if state is _State.BODY and head is not None and head.untilClose:
            return exchange.ended()
        clean = reason.check(netError.ConnectionDone) is not None
        detail = clip(reason.getErrorMessage())
        if state is _State.WAITING:
            cause = "closed the connection before answering" if clean else detail
        elif state is _State.HEAD:
            cause = "closed the connection in the middle of the response head"
            cause += "" if clean else f": {detail}"
        else:
            cause = "the connection closed" if clean else detail
        exchange.failed(cause)

    def _failed(self, reason: str) -> None:
        exchange = self.exchange
        self.pool.discard(self)
        if exchange is not None:
            exchange.failed(reason)

    def _finished(self) -> None:
        """
        A whole answer arrived: the connection goes back to the pool if the
        target lets it live, else it is closed.
        """
        exchange, self.exchange = self.exchange, None
        if self._keepAlive:
            self.pool.release(self)
        else:
            self.pool.discard(self)
        if exchange is not None:
            exchange.ended()

    # httptools' callbacks.

    def on_message_begin(self) -> None:
        if self._complete:
            raise _OutOfTurn()

    def on_status(self, status: bytes) -> None:
        self._head = Head(status=0, phrase=status.decode("latin-1"))

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        assert head is not None
        lower = name.lower()
        if lower == b"content-type":
            head.contentType = head.contentType or value.decode("latin-1")
        elif lower == b"content-encoding":
            head.contentEncoding = head.contentEncoding or value.decode("latin-1")
        elif lower == b"content-length":
            # llhttp refuses a bad or repeated one, before or after this.
            head.length = int(value) if value.isdigit() else -1
            head.untilClose = False
        elif lower == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
            head.untilClose = False

    def on_headers_complete(self) -> None:
        head = self._head
        assert head is not None
        head.status = self._parser.get_status_code()
        if 100 <= head.status < 200:
            # Interim (100 Continue, 103 Early Hints): the answer follows.
            self._head = None
            self._headBytes = 0
            return
        self._keepAlive = self._parser.should_keep_alive()
        self.state = _State.BODY
        if head.status in (204, 304):
            head.untilClose = False
        exchange = self.exchange
        if exchange is not None:
            exchange.receiver.responseHead(head)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.receiver.responseData(body)

    def on_message_complete(self) -> None:
        if self.state is _State.BODY:
            self._complete = True


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: TargetPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin

    def buildProtocol(self, addr: object) -> HTTP11ClientProtocol:
        return HTTP11ClientProtocol(self.pool, self.origin)


@dataclass(eq=False)
class Exchange:
    """
    One request and its answer, on whatever connection the pool finds for
    it. Its owner pauses, resumes or stops it; stopping drops its
    connection (or its connection attempt) and says nothing more to the
    receiver.
    """

    pool: TargetPool
    origin: Origin
    request: bytes
    receiver: IResponseReceiver
    connection: HTTP11ClientProtocol | None = None
    connecting: Deferred[HTTP11ClientProtocol] | None = None
    retried: bool = False
    stopped: bool = False
    paused: bool = False
    _expiry: IDelayedCall | None = None

    def expireIn(self, seconds: float) -> None:
        """
        Stop in C{seconds} if the answer has not ended by then: for a body
        read after its scrape ended, which the scrape's deadline no longer
        bounds.
        """
        self._expiry = self.pool.clock.callLater(max(0.0, seconds), self.stopProducing)

    def ended(self) -> None:
        self._unexpire()
        self.receiver.responseEnded()

    def failed(self, reason: str) -> None:
        self._unexpire()
        self.receiver.responseFailed(reason)

    def _unexpire(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def pauseProducing(self) -> None:
        self.paused = True
        transport = self._transport()
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        transport = self._transport()
        if transport is not None:
            transport.resumeProducing()

    def _transport(self) -> IPushProducer | None:
        """
        The transport of this exchange's connection while it serves this
        exchange: not one that went back to the pool.
        """
        connection = self.connection
        if connection is None or connection.exchange is not self:
            return None
        return cast(IPushProducer, connection.transport)

    def stopProducing(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._unexpire()
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        connection, self.connection = self.connection, None
        if connection is not None and connection.exchange is self:
            connection.exchange = None
            self.pool.discard(connection)


class TargetPool:
    """
    Keep-alive connections per target origin, as twisted.web's
    C{HTTPConnectionPool(persistent=True)} kept them: at most
    C{maxIdlePerOrigin} idle connections per origin, each closed after
    C{idleTimeout} seconds unused.

    @ivar endpointFor: makes the endpoint for an origin; it is asked once
        per origin (the endpoint is kept), so TLS options and host name
        checks are not rebuilt per scrape.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpointFor: Callable[[Origin], IStreamClientEndpoint],
        maxIdlePerOrigin: int,
        idleTimeout: float = IDLE_TIMEOUT_SECS,
    ) -> None:
        self.clock = clock
        self.endpointFor = endpointFor
        self.maxIdlePerOrigin = maxIdlePerOrigin
        self.idleTimeout = idleTimeout
        # Bounded: origins come and go with reloads and discovery.
        self._reach = functools.lru_cache(maxsize=4096)(self._makeReach)
        self._idle: dict[Origin, list[HTTP11ClientProtocol]] = {}

    def request(self, origin: Origin, request: bytes, receiver: IResponseReceiver) -> Exchange:
        """
        Send C{request} (a whole HTTP/1.1 GET, head only) to C{origin}: on
        an idle connection if there is one, else on a new one.
        """
        exchange = Exchange(self, origin, request, receiver)
        idle = self._idle.get(origin)
        if idle:
            connection = idle.pop()
            connection.unidle()
            connection.send(exchange)
        else:
            self._connect(exchange)
        return exchange

    def retry(self, exchange: Exchange) -> None:
        """
        A reused connection closed before any answer: send the request once
        more on a fresh connection; a second such failure is reported.
        """
        exchange.connection = None
        if exchange.stopped:
            return
        if exchange.retried:
            return exchange.failed("closed the connection before answering")
        exchange.retried = True
        self._connect(exchange)

    def _connect(self, exchange: Exchange) -> None:
        endpoint, factory = self._reach(exchange.origin)
        connecting: Deferred[HTTP11ClientProtocol] = endpoint.connect(factory)  # type: ignore[assignment]
        exchange.connecting = connecting
        connecting.addCallbacks(
            self._connected, self._notConnected, callbackArgs=(exchange,), errbackArgs=(exchange,)
        )

    def _makeReach(self, origin: Origin) -> tuple[IStreamClientEndpoint, _ConnectionFactory]:
        return self.endpointFor(origin), _ConnectionFactory(self, origin)

    def _connected(self, connection: HTTP11ClientProtocol, exchange: Exchange) -> None:
        exchange.connecting = None
        if exchange.stopped:
            return self.release(connection)
        connection.send(exchange)
        if exchange.paused and connection.transport is not None:
            connection.transport.pauseProducing()  # type: ignore[attr-defined]

    def _notConnected(self, failure: Failure, exchange: Exchange) -> None:
        exchange.connecting = None
        if exchange.stopped or failure.check(CancelledError):
            return
        exchange.failed(describeConnectFailure(failure))

    def release(self, connection: HTTP11ClientProtocol) -> None:
        """
        Keep an idle connection for the next request to its origin, unless
        enough are kept already.
        """
        idle = self._idle.setdefault(connection.origin, [])
        transport = connection.transport
        if len(idle) >= self.maxIdlePerOrigin or transport is None:
            return self.discard(connection)
        transport.resumeProducing()  # type: ignore[attr-defined]
        connection.reused = True
        idle.append(connection)
        connection.idle(self.clock.callLater(self.idleTimeout, self.discard, connection))

    def discard(self, connection: HTTP11ClientProtocol) -> None:
        """
        Close a connection that is not to be reused.
        """
        self._forget(connection)
        connection.abort()

    def lost(self, connection: HTTP11ClientProtocol) -> None:
        self._forget(connection)

    def _forget(self, connection: HTTP11ClientProtocol) -> None:
        connection.unidle()
        idle = self._idle.get(connection.origin)
        if idle is not None and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.origin]

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close every idle connection; fires when they are closed.
        """
        closing = [connection.whenLost() for idle in self._idle.values() for connection in idle]
        for connection in [c for idle in list(self._idle.values()) for c in idle]:
            self.discard(connection)
        return gatherResults(closing).addCallback(lambda _: None)
