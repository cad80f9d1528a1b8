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
connect timeout, L{MAX_HEAD_BYTES} for a response head and
L{MAX_FRAMING_BYTES} for what a chunked body carries between body bytes
(chunk extensions, trailer fields). Anything llhttp refuses (both
Content-Length and chunked, bad chunk sizes, a bad status line...), a
transfer coding other than C{chunked} and a status outside 100-599 fail the
exchange with a one-line reason and the connection is aborted: it is reused
only after a complete, well-formed, keep-alive answer with nothing after it.
A connection that is not reused but did nothing wrong is closed cleanly
(FIN, TLS close_notify), within L{CLOSE_TIMEOUT_SECS}.
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
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.logs import clip, observer
from promtwist.sendnow import PENDING, sendsOnReturn

# A response head longer than this (status line and fields) is refused:
# a real one is a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
# What a chunked body may carry between two runs of body bytes: chunk size
# lines with their extensions, and the trailer fields after the last chunk.
# twisted.web refused trailers past 64 KiB too (its _maxTrailerHeadersSize).
MAX_FRAMING_BYTES = 64 * 1024
# How long a clean close may take before the connection is aborted: a
# target that does not read leaves a TLS close_notify or a FIN unsent.
CLOSE_TIMEOUT_SECS = 5.0
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

    @ivar length: the body's length as declared (0 for 204 and 304,
        whatever they declare), or -1.
    @ivar untilClose: framed by the connection closing: no Content-Length,
        not chunked, not a 204 or 304.
    """

    status: int
    phrase: str
    contentType: str = ""
    contentEncoding: str = ""
    length: int = -1
    untilClose: bool = True


class IResponseReceiver(TypingProtocol):
    """
    Where an exchange delivers its response: L{responseHead} once, then
    L{responseData} any number of times, then exactly one of
    L{responseEnded}, L{responseFailed} (the target's fault) or
    L{responseBug} (ours). A failure can come at any point, including
    before any head.
    """

    def responseHead(self, head: Head) -> None: ...

    def responseData(self, data: bytes) -> None: ...

    def responseEnded(self) -> None: ...

    def responseFailed(self, reason: str) -> None: ...

    def responseBug(self, failure: Failure) -> None:
        """
        A bug of the agent's own broke the exchange: C{failure} has its
        traceback. Like L{responseFailed}, the last call.
        """


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


class _Refused(Exception):
    """
    A response llhttp accepts but a scrape does not: the message says what
    the target sent, in a few words.
    """


class HTTP11ClientProtocol(Protocol):
    """
    One connection to a target: sends one request at a time and parses its
    answer, an explicit state machine (L{_State}).

    httptools calls the C{on_*} methods from inside L{dataReceived}; the
    frames they make the scrape send leave when it returns (L{sendsOnReturn}),
    and a request written here leaves when the link's read that asked for
    it returns. Whatever one of them raises stops there: a bug is logged
    and fails the exchange, and never reaches the reactor.
    """

    _log = Logger(observer=observer)

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
        # Bytes read in the body since the last body bytes: chunk framing
        # and trailers, bounded by MAX_FRAMING_BYTES.
        self._framingBytes = 0
        self._gotBody = False
        self._keepAlive = False
        self._complete = False
        self._idleTimer: IDelayedCall | None = None
        self._closeTimer: IDelayedCall | None = None
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
        self._framingBytes = 0
        self._complete = False
        assert self.transport is not None
        self.transport.write(exchange.request)
        PENDING.wrote(self.transport)

    def abort(self) -> None:
        """
        Drop the connection at once, whatever it was doing: for one that
        broke the protocol, or an exchange given up in the middle.
        """
        self.state = _State.DONE
        self.exchange = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> None:
        """
        Close a connection that did nothing wrong and has nothing in flight,
        cleanly (FIN, and TLS close_notify), and abort it if that takes more
        than L{CLOSE_TIMEOUT_SECS}.
        """
        if self.state is _State.DONE:
            return
        self.state = _State.DONE
        self.exchange = None
        if self.transport is not None:
            self._closeTimer = self.pool.clock.callLater(CLOSE_TIMEOUT_SECS, self.abort)
            self.transport.loseConnection()

    def whenLost(self) -> Deferred[None]:
        """
        A new Deferred that fires when this connection is closed.
        """
        waiter: Deferred[None] = Deferred()
        self._lostWaiters.append(waiter)
        return waiter

    def idle(self, timer: IDelayedCall) -> None:
        """
        The connection waits in the pool for a next request; C{timer} closes
        it if none comes (L{unidle} cancels it).
        """
        self._idleTimer = timer
        self.state = _State.IDLE

    def unidle(self) -> None:
        """
        The connection leaves the pool (for a request, or closing): its idle
        timer is cancelled.
        """
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
        # httptools keeps a field until it is whole (in the head, or in the
        # trailer): what it holds is bounded here, one read past the limit
        # at most.
        inBody = self.state is _State.BODY
        if not inBody:
            self._headBytes += len(data)
        self._gotBody = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Refused):
                return self._failed(str(cause))
            if not isinstance(cause, _OutOfTurn):
                return self._bug(Failure(cause) if cause is not None else Failure())
            # A second answer after the whole first one: the first stands,
            # the connection is not to be trusted with another request.
            return self._finished(trusted=False)
        except httptools.HttpParserUpgrade:
            return self._failed("switched protocols (HTTP upgrade), which a scrape cannot follow")
        except httptools.HttpParserError as e:
            return self._failed(f"sent an invalid HTTP response: {clip(str(e))}")
        except Exception:  # noqa: BLE001
            return self._bug(Failure())
        if self.state is _State.HEAD and self._headBytes > MAX_HEAD_BYTES:
            return self._failed(f"sent a response head of more than {MAX_HEAD_BYTES} bytes")
        if self.state is not _State.BODY:
            return
        if self._complete:
            return self._finished()
        # A read that ended the head counts for the head only.
        if self._gotBody or not inBody:
            self._framingBytes = 0
        else:
            self._framingBytes += len(data)
        if self._framingBytes > MAX_FRAMING_BYTES:
            self._failed(
                f"sent more than {MAX_FRAMING_BYTES} bytes of chunk extensions or trailer"
                " fields without body bytes"
            )

    def connectionLost(self, reason: Failure = Failure(netError.ConnectionDone())) -> None:
        state, self.state = self.state, _State.DONE
        self.unidle()
        if self._closeTimer is not None and self._closeTimer.active():
            self._closeTimer.cancel()
        self._closeTimer = None
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
        """
        The target broke the protocol: the connection is aborted and the
        exchange fails with C{reason}.
        """
        exchange = self.exchange
        self.pool.discard(self)
        if exchange is not None:
            exchange.failed(reason)

    def _bug(self, failure: Failure) -> None:
        """
        One of our own callbacks raised: the connection is aborted (its
        parser is in no known state), and the exchange's owner logs it and
        fails its scrape; with no exchange it is logged here.
        """
        exchange = self.exchange
        self.pool.discard(self)
        if exchange is not None:
            exchange.bug(failure)
        else:
            self._log.failure("parsing an answer from {origin} failed", failure, origin=self.origin)

    def _finished(self, trusted: bool = True) -> None:
        """
        A whole answer arrived: the connection goes back to the pool if the
        target lets it live, else it is closed; it is aborted if the target
        sent more than was asked (not C{trusted}).
        """
        exchange, self.exchange = self.exchange, None
        if not trusted:
            self.pool.discard(self)
        elif self._keepAlive:
            self.pool.release(self)
        else:
            self.pool.close(self)
        if exchange is not None:
            exchange.ended()

    # httptools' callbacks.

    def on_message_begin(self) -> None:
        if self._complete:
            raise _OutOfTurn()
        # Here, not in on_status: llhttp calls that only for a reason phrase,
        # and "HTTP/1.1 200" has none.
        self._head = Head(status=0, phrase="")

    def on_status(self, status: bytes) -> None:
        assert self._head is not None
        self._head.phrase = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        if self.state is not _State.HEAD or head is None:
            # A trailer field: it is not part of the head (a trailer's
            # Content-Type must not relabel the body), and not used.
            return
        lower = name.lower()
        if lower == b"content-type":
            head.contentType = head.contentType or value.decode("latin-1")
        elif lower == b"content-encoding":
            head.contentEncoding = head.contentEncoding or value.decode("latin-1")
        elif lower == b"content-length":
            # llhttp refuses a bad or repeated one, before or after this.
            number = value.strip()
            head.length = int(number) if number.isdigit() else -1
            head.untilClose = False
        elif lower == b"transfer-encoding":
            # Only chunked is decoded; anything else would pass on a body
            # still coded. llhttp accepts a chunked one in any case.
            if value.strip().lower() != b"chunked":
                raise _Refused(
                    f"sent Transfer-Encoding {clip(value.decode('latin-1'), 100)}:"
                    " only chunked is supported"
                )
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
        if not 200 <= head.status <= 599:
            raise _Refused(f"sent an invalid HTTP status {head.status} (not 100-599)")
        self._keepAlive = self._parser.should_keep_alive()
        self.state = _State.BODY
        if head.status in (204, 304):
            # No body, whatever Content-Length says (it describes what a GET
            # would have had).
            head.length = 0
            head.untilClose = False
        exchange = self.exchange
        if exchange is not None:
            exchange.receiver.responseHead(head)

    def on_body(self, body: bytes) -> None:
        self._gotBody = True
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
        bounds. Until then the pool stops it if it is closed.
        """
        self._expiry = self.pool.clock.callLater(max(0.0, seconds), self.stopProducing)
        self.pool.draining.add(self)

    def ended(self) -> None:
        self._unexpire()
        self.receiver.responseEnded()

    def failed(self, reason: str) -> None:
        self._unexpire()
        self.receiver.responseFailed(reason)

    def bug(self, failure: Failure) -> None:
        self._unexpire()
        self.receiver.responseBug(failure)

    def _unexpire(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self.pool.draining.discard(self)

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
        # After closeCachedConnections: no connection is kept any more.
        self.closed = False
        # The exchanges reading a body nobody waits for (see
        # Exchange.expireIn): closing the pool stops them.
        self.draining: set[Exchange] = set()
        # Connections closing cleanly, which closing the pool waits for.
        self._closing: set[HTTP11ClientProtocol] = set()

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
        transport = connection.transport
        if self.closed or transport is None:
            return self.close(connection)
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= self.maxIdlePerOrigin:
            return self.close(connection)
        transport.resumeProducing()  # type: ignore[attr-defined]
        connection.reused = True
        idle.append(connection)
        connection.idle(self.clock.callLater(self.idleTimeout, self.close, connection))

    def close(self, connection: HTTP11ClientProtocol) -> None:
        """
        Close a connection that did nothing wrong but is not to be reused,
        cleanly (L{HTTP11ClientProtocol.close}).
        """
        self._forget(connection)
        if connection.transport is not None and connection.state is not _State.DONE:
            self._closing.add(connection)
        connection.close()

    def discard(self, connection: HTTP11ClientProtocol) -> None:
        """
        Abort a connection that broke the protocol, or whose exchange was
        given up before its answer ended.
        """
        self._forget(connection)
        connection.abort()

    def lost(self, connection: HTTP11ClientProtocol) -> None:
        """
        C{connection} closed, whoever closed it: it is no longer kept.
        """
        self._closing.discard(connection)
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
        Close every idle connection, abort those reading a body nobody
        waits for, and keep none from now on; fires when they are closed
        (within L{CLOSE_TIMEOUT_SECS}: a close that takes longer is aborted).
        """
        self.closed = True
        idle = [connection for idle in self._idle.values() for connection in idle]
        draining = [e.connection for e in self.draining if e.connection is not None]
        closing = [c.whenLost() for c in idle + draining + list(self._closing)]
        for connection in idle:
            self.close(connection)
        for exchange in list(self.draining):
            exchange.stopProducing()
        return gatherResults(closing).addCallback(lambda _: None)
