# -*- test-case-name: promtwist.test.test_httpserver -*-
"""
The scrape port's HTTP/1.1 server: llhttp (through httptools) parses, a
thin protocol answers one request at a time, and nothing else runs per
request.

twisted.web's server machinery was most of the proxy's CPU per scrape: a
L{Request} with its header objects, resource traversal, a logging context
per read. The scrape port needs none of it: it answers C{GET} on a path,
streams a body through, and refuses everything else. So it has its own
small server, with every defence L{promtwist.webguard.HardenedChannel}
gives the other ports (the shared parts are in L{promtwist.httpguard}):

  - a request head (request line, headers, blank line) may take at most
    C{maxHeaderBytes}: a request line alone over it gets 414, a head over
    it 431;
  - a head must be complete C{headerTimeout} seconds after it started, or
    408. A head starts when the connection is made, and on a keep-alive
    connection with its first byte: waiting for that byte is the idle
    timeout's business, so Prometheus can keep a connection across scrape
    intervals longer than the deadline;
  - a request body is refused with 413 before a byte of it is read,
    unless the factory's L{BodyPolicy} takes one for that method and path
    (PushProx clients' C{POST /poll} and C{POST /push}): then it must
    declare a C{Content-Length} within the policy's limit (411 without
    one, 413 over it), pass the guard (checked on the head, before a byte
    of the body is read), and arrive whole within the head's deadline,
    which runs on until its last byte, or by the later deadline the
    factory's L{BodyDeadline} names for it then (408 otherwise), and fit in the
    port's L{BodyBudget} of body bytes in flight (503 otherwise); the
    request is answered only once the body is in, read into one buffer of
    the declared size (from L{MAPPED_BODY_BYTES} up an anonymous mapping,
    given back to the system when the request ends: freed heap memory
    would stay with the process);
  - clients outside the allowed networks are refused before a byte is
    read, the refusal logged at most once a minute per address;
  - a connection over the port's caps on open connections, in total and
    per source address (an IPv6 /64 is one source), is closed as soon as
    it is accepted, before a byte is read: no answer, no timer, and a few
    log lines a minute naming the address and the setting, then a count.
    The total is sized in the open-file limit beside the agent port's
    connections (L{promtwist.proxy.admission.scrapeConnections}), so that
    no host can exhaust the proxy's file descriptors through this port;
  - a silent connection closes after the idle timeout (which does not run
    while a request is being answered);
  - a client that pipelines requests and does not read the answers gets
    no further answer while the transport holds more than its buffer: the
    next request is parsed only once the transport has flushed, and
    nothing more is read meanwhile;
  - a malformed request gets 400 with llhttp's reason (a method llhttp
    does not know among them), a line ended by a bare LF 400 as soon as
    it arrives, a request line naming another protocol 400, another
    method than C{GET} and C{HEAD} 405, another well-formed HTTP version
    than 1.0 and 1.1 505, more than one C{Host} header 400 (RFC 9112
    section 3.2);
  - one empty line before a request line is ignored (RFC 9112 section
    2.2), a second gets 400; the bytes before a request line count toward
    its head's size and run in its deadline.

Each refusal closes the connection, aborting it if the client does not let
it close within L{ABORT_TIMEOUT} seconds.

A connection moves through L{ConnectionState}: C{HEAD} (reading a request
head) → C{ANSWERING} → C{IDLE} (keep-alive, waiting for the next head) or
C{HELD} (the client is not reading; pipelined bytes wait) → ..., and
C{CLOSING} once it is refused, timed out, or answered without keep-alive;
a request with a body it takes spends C{BODY} between C{HEAD} and
C{ANSWERING}.

Heads are cut out of the byte stream at their blank line and fed to llhttp
whole, one at a time. A request without a body ends with its head; one with
a body ends after exactly the declared bytes, counted here, so the bytes
after it are the next request's, parsed only once this one is answered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from mmap import mmap
from typing import cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from zope.interface import implementer

from promtwist import __version__
from promtwist.httpguard import (
    ABORT_TIMEOUT,
    AllowedNetworks,
    Refusal,
    bodyRefused,
    headTimedOut,
    headTooLarge,
)
from promtwist.logs import RepeatedWarnings, clip, observer
from promtwist.proxy.admission import AddressCaps, hostOf
from promtwist.proxy.answers import textAnswer
from promtwist.proxy.bodybudget import BodyBudget
from promtwist.proxy.exchange import READ_HEADERS, Exchange, RequestBody
from promtwist.sendnow import PENDING, sendsOnReturn

_log = Logger(observer=observer)

# Bytes read ahead while a request is answered before reading stops, as
# twisted.web's HTTPChannel does (its _optimisticEagerReadSize).
READ_AHEAD_BYTES = 0x4000
# The smallest body read into an anonymous mapping of its own. A mapping is
# given back to the system when its request ends, which the heap would not
# do for a large body, but it costs two system calls and a page fault per
# page: a poll's few bytes, or a push of a compressed answer, would spend
# more on them than on the rest of the request. Smaller bodies are read
# into the heap, whose small blocks are reused; the port's body budget
# bounds them as it bounds every body.
MAPPED_BODY_BYTES = 0x4000

_END_OF_HEAD = b"\r\n\r\n"
_SERVER = b"Server: promtwist/" + __version__.public().encode("ascii") + b"\r\n"
_STATUS_LINE = {b"1.1": b"HTTP/1.1 %d %s\r\n", b"1.0": b"HTTP/1.0 %d %s\r\n"}
_METHODS = frozenset({b"GET", b"HEAD"})
_VERSIONS = frozenset({b"1.0", b"1.1"})
_HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_LINE_ENDS = frozenset(b"\r\n")
_EMPTY_LINES = Refusal(
    400, b"Bad Request", "malformed request: more than one empty line before the request line"
)
_LENGTH_REQUIRED = Refusal(
    411, b"Length Required", "a request body here must declare its Content-Length"
)
_TWO_HOSTS = Refusal(400, b"Bad Request", "malformed request: more than one Host header")
_BARE_LF = Refusal(
    400, b"Bad Request", "malformed request: a line ends in LF alone; HTTP lines end in CRLF"
)
# Statuses whose answers have no body.
_NO_BODY = frozenset({204, 304})

Handler = Callable[[Exchange], None]
"""
Answers an admitted request: at once, or later through the exchange.
"""

BodyPolicy = Callable[[bytes, bytes], int | None]
"""
Given a request's method and path, the most body bytes the server takes for
it, or L{None} if it takes none (and refuses the method unless it is C{GET}
or C{HEAD}).
"""

BodyDeadline = Callable[[Exchange, bytes], float | None]
"""
Given a request whose body is not whole at the head's deadline, and the
start of that body that came (up to the factory's C{peekBytes}), the time
(on the factory's clock) until which its body may still come, if later:
a PushProx push may take as long as the scrape it answers has left.
"""

BodySource = Callable[[Exchange], "str | None"]
"""
The source a request's body is counted under in the port's L{BodyBudget}:
by default the host it comes from (L{hostOf}); L{None} for a body the
budget does not cover (one bounded by its own small limit).
"""

Guard = Callable[[Exchange], bool]
"""
Lets a request through (C{True}), or answers it itself (C{False}), before
the server routes it anywhere.
"""


@dataclass(frozen=True)
class RefusedRequest:
    """
    A request the server itself refused once its head was read: its body
    too large, undeclared, over the budget, or too slow.

    @ivar headers: the request headers the proxy reads.
    @ivar seconds: since its head was read.
    @ivar start: the start of its body that had come, up to the factory's
        C{peekBytes}: of a slow one, or of one over its limit what came
        with its head (which is refused at once, without waiting for more).
    """

    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    refusal: Refusal
    seconds: float
    start: bytes


Refused = Callable[[RefusedRequest], None]
"""
Told of each L{RefusedRequest}, so that what counts a path's answers counts
these too, and what waits on such a request learns why it will not come.
"""


class ConnectionState(Enum):
    HEAD = auto()
    BODY = auto()
    ANSWERING = auto()
    IDLE = auto()
    HELD = auto()
    CLOSING = auto()


class ScrapePortFactory(Factory):
    """
    Makes the scrape port's connections, refusing clients outside the
    allowed networks and those over its caps on open connections.

    @ivar handler: answers requests that passed the server's checks.
    @ivar guard: checks each request's credentials first, if set.
    @ivar allowed: the networks clients may connect from.
    @ivar bodies: which requests may carry a body, and how large.
    @ivar connections: the open connections, counted in total and per
        source against their caps; L{None} when unbounded.
    @ivar warnings: the refusals over those caps, logged a few a minute,
        then counted.
    """

    noisy = False

    def __init__(
        self,
        handler: Handler,
        *,
        maxHeaderBytes: int,
        headerTimeout: float,
        idleTimeout: float,
        allowedNetworks: Sequence[str] = (),
        guard: Guard | None = None,
        bodies: BodyPolicy | None = None,
        budget: BodyBudget | None = None,
        sourceOf: BodySource | None = None,
        bodyDeadline: BodyDeadline | None = None,
        refused: Refused | None = None,
        peekBytes: int = 0,
        connections: AddressCaps | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param maxHeaderBytes: the most bytes a request's line and headers
            may take, line endings included.
        @param headerTimeout: seconds from the start of a request until its
            head must be complete.
        @param idleTimeout: seconds a connection may wait for a request.
        @param allowedNetworks: CIDR networks clients may connect from;
            empty admits everyone.
        @param budget: bounds the body bytes all connections hold at once;
            unbounded without one.
        @param sourceOf: what a body counts against in C{budget}, asked
            after C{guard} let its request through.
        @param bodyDeadline: a later deadline for a body still arriving at
            the head's; none without one.
        @param peekBytes: how much of a refused body's start C{refused} is
            told of, so that it can tell what the body was.
        @param connections: caps the open connections; unbounded without.
        @param clock: the clock for every timeout; the global reactor by
            default.
        @raise ValueError: if a network is not valid.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.handler = handler
        self.guard = guard
        self.bodies = bodies
        self.budget = budget
        self.sourceOf = sourceOf or (lambda exchange: hostOf(exchange.client))
        self.bodyDeadline = bodyDeadline
        self.refused = refused
        self.peekBytes = peekBytes
        self.maxHeaderBytes = maxHeaderBytes
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.allowed = AllowedNetworks(allowedNetworks, clock)
        self.connections = connections
        self.warnings = RepeatedWarnings(_log, clock)

    def stopFactory(self) -> None:
        self.warnings.flush()

    def buildProtocol(self, addr: IAddress | None) -> ScrapePortConnection | None:
        if not self.allowed.admits(addr):
            return None
        host = hostOf(addr)
        connections = self.connections
        if connections is not None:
            refusal = connections.refusal(host)
            if refusal is not None:
                # Closed at once, unread: a refusal that waited for a
                # request, or for a TLS handshake to answer it through,
                # would hold the file it is refused to spare.
                self.warnings.warn(
                    "refused scrape-port connection",
                    "closing a scrape-port connection from {peer} unanswered: {why}",
                    peer=host or "?",
                    why=refusal[1],
                )
                return None
            connections.enter(host)
        return ScrapePortConnection(self, host)


_dateSecond = -1
_dateLine = b""


def _date(now: float) -> bytes:
    """
    The C{Date} header line, made once a second.
    """
    global _dateSecond, _dateLine
    second = int(now)
    if second != _dateSecond:
        _dateSecond = second
        _dateLine = b"Date: " + datetimeToString(second) + b"\r\n"
    return _dateLine


@implementer(IPushProducer)
class ScrapePortConnection(Protocol):
    """
    One client connection; see the module docstring.

    It is its transport's producer: the transport pauses it when its buffer
    fills, which pauses the answer's producer (the agent's stream) and
    holds pipelined requests.

    @ivar state: where the connection is in L{ConnectionState}.
    """

    def __init__(self, factory: ScrapePortFactory, host: str = "") -> None:
        self.factory = factory
        # The source the factory counts this connection under, and the caps
        # it is counted in until it is lost.
        self.host = host
        self._counted = factory.connections
        self.state = ConnectionState.HEAD
        self._parser = HttpRequestParser(self)
        # Bytes received and not yet parsed, from _offset on: part of a
        # head, or what a client pipelined while an answer was made. An
        # offset, so that a read of many heads is not copied once per head.
        self._pending = b""
        self._offset = 0
        self._reading = False
        self._readingPaused = False
        self._writePaused = False
        self._exchange: ServerExchange | None = None
        self._producer: IPushProducer | None = None
        self._deadline: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._forceClose: IDelayedCall | None = None
        # The request being parsed.
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._repeated: frozenset[bytes] = frozenset()
        self._keepAlive = False
        # A body being read (state BODY): its request, the buffer it is
        # read into, sized once from its Content-Length, and how much of it
        # has come. Its bytes are held in the factory's budget until the
        # request ends (_bodyHeld, counted under _bodySource).
        self._bodyOf: ServerExchange | None = None
        self._body: bytearray | mmap | None = None
        self._bodyRead = 0
        self._bodyHeld = 0
        self._bodySource: str | None = None
        # Whether the body's deadline is the later one bodyDeadline named.
        self._bodyExtended = False
        self._headAt = 0.0

    # The connection.

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        # Answers are written whole; Nagle would hold the tail of a body
        # behind Prometheus' delayed ACK, as twisted.web's channel knows.
        # TLS passes the call on to its TCP transport; a transport that is
        # not TCP has no Nagle.
        noDelay = getattr(transport, "setTcpNoDelay", None)
        if noDelay is not None:
            noDelay(True)
        cast(IConsumer, transport).registerProducer(self, True)
        clock = self.factory.clock
        self._idle = clock.callLater(self.factory.idleTimeout, self._idleTimedOut)
        self._deadline = clock.callLater(self.factory.headerTimeout, self._deadlinePassed)

    @sendsOnReturn
    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is ConnectionState.CLOSING:
            # Refused or closing: whatever else arrives is not a request.
            return
        if state is ConnectionState.BODY:
            self._keep(data)
            self._readBody()
            return
        if state is ConnectionState.ANSWERING or state is ConnectionState.HELD:
            self._keep(data)
            if len(self._pending) > READ_AHEAD_BYTES:
                self._pauseReading()
            return
        assert self._idle is not None
        self._idle.reset(self.factory.idleTimeout)
        if self._offset < len(self._pending):
            self._keep(data)
            data = self._pending
        self._readHeads(data, 0)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        connections, self._counted = self._counted, None
        if connections is not None:
            connections.leave(self.host)
        self.state = ConnectionState.CLOSING
        self._cancelTimers()
        self._bodyDone()
        exchange, self._exchange = self._exchange, None
        self._producer = None
        if exchange is not None:
            exchange.lost()

    # The transport's producer.

    def pauseProducing(self) -> None:
        self._writePaused = True
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._writePaused = False
        if self._producer is not None:
            self._producer.resumeProducing()
        if self.state is ConnectionState.HELD:
            # The client read what waited: take up what it pipelined.
            self._nextRequest()

    def stopProducing(self) -> None:
        # The transport is going; connectionLost follows and ends the answer.
        pass

    # Heads.

    def _readHeads(self, data: bytes, offset: int) -> None:
        """
        Answer the requests whose heads C{data} holds from C{offset} on,
        one at a time, while each is answered at once; keep the rest.

        One empty line may come before a request line (RFC 9112 section
        2.2); a second is refused, as twisted.web's channel refused it, so
        that empty lines cannot keep a connection busy for free. Whatever
        precedes a request line counts toward the head's size and runs in
        its deadline.
        """
        limit = self.factory.maxHeaderBytes
        self._reading = True
        try:
            size = len(data)
            while offset < size:
                start = offset + 2 if data.startswith(b"\r\n", offset) else offset
                if (
                    start < size
                    and data[start] in _LINE_ENDS
                    # (A CR alone may be the first half of the one allowed.)
                    and (start > offset or start + 1 < size or data[start] == 0x0A)
                ):
                    return self._refuse(_EMPTY_LINES)
                end = data.find(_END_OF_HEAD, start)
                if end < 0:
                    if size - offset > limit:
                        return self._refuse(
                            headTooLarge(data.find(b"\n", start, offset + limit) < 0, limit)
                        )
                    if data.count(b"\n", start) != data.count(b"\r\n", start):
                        # llhttp refuses a bare LF; the head would only wait
                        # for a CRLF CRLF that may never come.
                        return self._refuse(_BARE_LF)
                    self._pending = data
                    self._offset = offset
                    if self._deadline is None:
                        self._deadline = self.factory.clock.callLater(
                            self.factory.headerTimeout, self._deadlinePassed
                        )
                    self.state = ConnectionState.HEAD
                    return
                if end + 4 - offset > limit:
                    return self._refuse(
                        headTooLarge(data.find(b"\n", start, offset + limit) < 0, limit)
                    )
                offset = end + 4
                # What follows the head stays with the connection while the
                # request is answered.
                self._pending = data
                self._offset = offset
                self._request(data, start, offset)
                # (A request's body, read from the same bytes, moved it on.)
                offset = self._offset
                data = self._pending
                size = len(data)
                state = self.state
                if state is not ConnectionState.IDLE and state is not ConnectionState.HEAD:
                    return
            self._pending = b""
            self._offset = 0
        finally:
            self._reading = False

    def _keep(self, data: bytes) -> None:
        """
        Keep C{data} behind the bytes not yet parsed.
        """
        pending = self._pending
        if self._offset:
            pending = pending[self._offset :]
            self._offset = 0
        self._pending = pending + data if pending else data

    def _request(self, data: bytes, start: int, end: int) -> None:
        """
        Parse the whole head in C{data[start:end]} and answer it.
        """
        self._url = b""
        self._headers = {}
        self._repeated = frozenset()
        self._keepAlive = False
        # The request line's protocol, which llhttp checks only in part: it
        # takes RTSP/1.0 for HTTP/1.0, and refuses HTTP/1.2 as malformed.
        lineEnd = data.find(b"\r\n", start, end)
        protocol = data[max(start, lineEnd - 8) : lineEnd]
        version = protocol[5:]
        if version not in _VERSIONS and _HTTP_VERSION.fullmatch(protocol):
            return self._refuse(
                Refusal(
                    505,
                    b"HTTP Version Not Supported",
                    f"HTTP/{version.decode('ascii')} is not supported: this port speaks HTTP/1.1",
                )
            )
        upgrade = False
        try:
            self._parser.feed_data(data[start:end])
        except HttpParserUpgrade:
            # The request asked to switch protocols; it is answered in HTTP/1.1
            # and the connection ends there.
            upgrade = True
        except HttpParserError as e:
            return self._refuse(Refusal(400, b"Bad Request", f"malformed request: {clip(str(e))}"))
        if not protocol.startswith(b"HTTP/"):
            return self._refuse(
                Refusal(
                    400,
                    b"Bad Request",
                    f"not an HTTP request: the request line ends in {clip(protocol)}",
                )
            )
        if b"host" in self._repeated:
            # Two hosts name two servers: which one the request is for is
            # anyone's guess, so RFC 9112 section 3.2 asks for 400.
            return self._refuse(_TWO_HOSTS)
        headers = self._headers
        length = headers.get(b"content-length")
        chunked = b"transfer-encoding" in headers
        parser = self._parser
        path, _, query = self._url.partition(b"?")
        method = parser.get_method()
        bodyLength = 0
        factory = self.factory
        if (length is not None and length.strip(b"0 \t")) or chunked:
            limit = factory.bodies(method, path) if factory.bodies else None
            self._headAt = factory.clock.seconds()
            if limit is None:
                return self._refuse(bodyRefused(0))
            if chunked or length is None:
                return self._refuseRequest(_LENGTH_REQUIRED, method, path, headers)
            # llhttp took it for a number: digits, perhaps padded.
            bodyLength = int(length.strip(b" \t"))
            if bodyLength > limit:
                return self._refuseRequest(
                    bodyRefused(limit), method, path, headers, self._arrived()
                )
        exchange = ServerExchange(
            self,
            method,
            path,
            query,
            headers,
            self._repeated,
            version,
            version == b"1.1" and not upgrade and self._keepAlive,
        )
        if bodyLength:
            if not self._admitted(exchange):
                return
            budget = factory.budget
            source = factory.sourceOf(exchange) if budget is not None else None
            if budget is not None and source is not None:
                overBudget = budget.take(bodyLength, source)
                if overBudget is not None:
                    return self._refuseRequest(overBudget, method, path, headers, self._arrived())
            self._bodySource = source
            self._bodyHeld = bodyLength
            self._bodyExtended = False
            self._continue(headers, version)
            # llhttp would take the next head for this body: the body is
            # counted here, and the next head goes to a parser of its own.
            self._parser = HttpRequestParser(self)
            self._bodyOf = exchange
            self._body = (
                mmap(-1, bodyLength) if bodyLength >= MAPPED_BODY_BYTES else bytearray(bodyLength)
            )
            self._bodyRead = 0
            self.state = ConnectionState.BODY
            self._readBody()
            return
        self._begin(exchange)

    def _arrived(self) -> bytes:
        """
        What of a body came with its head, up to the factory's
        C{peekBytes}: for a refusal on the head to tell what the body was.
        """
        return self._pending[self._offset : self._offset + self.factory.peekBytes]

    def _continue(self, headers: dict[bytes, bytes], version: bytes) -> None:
        """
        Tell a client that asked (C{Expect: 100-continue}, RFC 9110
        section 10.1.1) to send the body it holds back, now that its head
        is accepted; one that sent the body already needs no telling.
        """
        if (
            version == b"1.1"
            and headers.get(b"expect", b"").strip().lower() == b"100-continue"
            and self._offset >= len(self._pending)
        ):
            transport = self.transport
            assert transport is not None
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            PENDING.wrote(transport)

    def _readBody(self) -> None:
        """
        Take the body's bytes from those not yet parsed; once it is whole,
        answer its request.
        """
        body = self._body
        assert body is not None
        pending, offset, read = self._pending, self._offset, self._bodyRead
        take = min(len(body) - read, len(pending) - offset)
        if take:
            body[read : read + take] = memoryview(pending)[offset : offset + take]
            self._offset = offset + take
            self._bodyRead = read = read + take
        if read < len(body):
            return
        exchange, self._bodyOf = self._bodyOf, None
        assert exchange is not None
        exchange.body = body if isinstance(body, mmap) else bytes(body)
        self._body = None
        self._begin(exchange)

    def _bodyDone(self, exchange: ServerExchange | None = None) -> None:
        """
        The request that had a body ended, however: its buffer is let go
        and its bytes go back to the budget.
        """
        self._body = None
        if exchange is not None:
            exchange.body = b""
        held, self._bodyHeld = self._bodyHeld, 0
        if held and self.factory.budget is not None and self._bodySource is not None:
            self.factory.budget.give(held, self._bodySource)

    def _admitted(self, exchange: ServerExchange) -> bool:
        """
        Whether the guard lets a request with a body through, asked before
        a byte of the body is read: a refused request costs its head only.
        Its refusal closes the connection, since the unread body would be
        read as the next request.
        """
        guard = self.factory.guard
        if guard is None:
            return True
        persistent, exchange.persistent = exchange.persistent, False
        self._exchange = exchange
        self.state = ConnectionState.ANSWERING
        if not guard(exchange):
            return False
        exchange.persistent = persistent
        self._exchange = None
        return True

    def _begin(self, exchange: ServerExchange) -> None:
        """
        The request is whole: its deadline is met; answer it.
        """
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._exchange = exchange
        self.state = ConnectionState.ANSWERING
        self._answer(exchange, guarded=bool(exchange.body))

    def _answer(self, exchange: ServerExchange, guarded: bool) -> None:
        """
        @param guarded: the guard let the request through already (it has a
            body, checked before it was read).
        """
        factory = self.factory
        if not guarded and factory.guard is not None and not factory.guard(exchange):
            return
        if exchange.method not in _METHODS and (
            factory.bodies is None or factory.bodies(exchange.method, exchange.path) is None
        ):
            exchange.setHeader(b"Allow", b"GET, HEAD")
            reason = (
                f"method {clip(exchange.method)} not allowed here: this path serves GET and HEAD"
            )
            if exchange.method == b"CONNECT":
                # What Prometheus sends for an https target through proxy_url.
                reason += (
                    "; for an https target scrape it as http with params: {_scheme: [https]},"
                    " or declare it https:// in agent.targets"
                )
            return textAnswer(exchange, 405, reason)
        try:
            factory.handler(exchange)
        except Exception:  # noqa: BLE001 - a bug costs its request, not the port
            _log.failure("answering {path} failed", path=clip(exchange.path))
            if exchange.started:
                exchange.abort()
            else:
                textAnswer(exchange, 500, "internal error in the proxy")

    # httptools' callbacks.

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in READ_HEADERS:
            if name in self._headers:
                self._repeated |= {name}
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        # llhttp forgets the message's flags once it is complete.
        self._keepAlive = self._parser.should_keep_alive()

    # Answers.

    def answered(self, exchange: ServerExchange) -> None:
        """
        C{exchange} is finished: take up the next request, or close.
        """
        if exchange is not self._exchange:
            return
        self._exchange = None
        self._producer = None
        self._bodyDone(exchange)
        if not exchange.persistent:
            self._close()
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.factory.idleTimeout)
        else:
            self._idle = self.factory.clock.callLater(self.factory.idleTimeout, self._idleTimedOut)
        if self._writePaused:
            # The client is not reading: what it pipelined waits until the
            # transport has flushed (resumeProducing).
            self.state = ConnectionState.HELD
            if self._offset < len(self._pending):
                self._pauseReading()
            return
        self._nextRequest()

    def bodyProducer(self, exchange: ServerExchange, producer: IPushProducer | None) -> None:
        """
        C{producer} makes C{exchange}'s body, or nothing does any more
        (L{None}): it is paused while the transport is, and only while
        C{exchange} is the connection's current one.
        """
        if exchange is not self._exchange:
            return
        self._producer = producer
        if producer is not None and self._writePaused:
            producer.pauseProducing()

    def aborted(self, exchange: ServerExchange) -> None:
        """
        C{exchange} was broken off: the connection goes with it.
        """
        if exchange is self._exchange:
            self._exchange = None
            self._producer = None
        self.state = ConnectionState.CLOSING
        self._cancelTimers()
        self._bodyDone(exchange)
        cast(ITCPTransport, self.transport).abortConnection()

    def _nextRequest(self) -> None:
        self.state = ConnectionState.IDLE
        if self._readingPaused:
            self._readingPaused = False
            cast(IPushProducer, self.transport).resumeProducing()
        if not self._reading and self._offset < len(self._pending):
            # Bytes held meanwhile start their head's deadline now.
            self._readHeads(self._pending, self._offset)

    def _pauseReading(self) -> None:
        if not self._readingPaused:
            self._readingPaused = True
            cast(IPushProducer, self.transport).pauseProducing()

    # Endings.

    def _deadlinePassed(self) -> None:
        self._deadline = None
        exchange, body = self._bodyOf, self._body
        if self.state is ConnectionState.BODY and exchange is not None and body is not None:
            factory = self.factory
            start = bytes(body[: min(self._bodyRead, factory.peekBytes)])
            if not self._bodyExtended and factory.bodyDeadline is not None:
                later = factory.bodyDeadline(exchange, start)
                now = factory.clock.seconds()
                if later is not None and later > now:
                    self._bodyExtended = True
                    self._deadline = factory.clock.callLater(later - now, self._deadlinePassed)
                    return
            extended = ", nor by the deadline of what it answers" if self._bodyExtended else ""
            return self._refuseRequest(
                Refusal(
                    408,
                    b"Request Timeout",
                    f"request body not complete within {factory.headerTimeout:g} seconds"
                    f" of its request's start{extended} ({self._bodyHeld - self._bodyRead}"
                    " bytes missing)",
                ),
                exchange.method,
                exchange.path,
                exchange.headers,
                start,
            )
        self._refuse(headTimedOut(self.factory.headerTimeout))

    def _idleTimedOut(self) -> None:
        self._idle = None
        if self.state is ConnectionState.ANSWERING:
            # An answer may take as long as it takes; the timeout starts
            # again when it is done.
            self._idle = self.factory.clock.callLater(self.factory.idleTimeout, self._idleTimedOut)
            return
        self._close()

    def _refuseRequest(
        self,
        refusal: Refusal,
        method: bytes,
        path: bytes,
        headers: dict[bytes, bytes],
        start: bytes = b"",
    ) -> None:
        """
        Refuse a request whose head was read, telling the factory's
        C{refused}.
        """
        refused = self.factory.refused
        if refused is not None:
            elapsed = self.factory.clock.seconds() - self._headAt
            refused(RefusedRequest(method, path, headers, refusal, elapsed, start))
        self._refuse(refusal)

    def _refuse(self, refusal: Refusal) -> None:
        """
        Answer with the refusal's status and one-line reason, then close.
        """
        transport = self.transport
        assert transport is not None
        refusal.send(transport)
        PENDING.wrote(transport)
        self._close()

    def _close(self) -> None:
        """
        Close, and abort if the client holds the close up. Once: the
        transport's producer is unregistered only once.
        """
        if self._forceClose is not None:
            return
        self.state = ConnectionState.CLOSING
        self._cancelTimers()
        self._bodyOf = None
        self._bodyDone()
        transport = self.transport
        assert transport is not None
        # TLS closes only once no producer is registered.
        cast(IConsumer, transport).unregisterProducer()
        transport.loseConnection()
        self._forceClose = self.factory.clock.callLater(
            ABORT_TIMEOUT, cast(ITCPTransport, transport).abortConnection
        )

    def _cancelTimers(self) -> None:
        for timer in (self._deadline, self._idle, self._forceClose):
            if timer is not None and timer.active():
                timer.cancel()
        self._deadline = self._idle = self._forceClose = None


# Control characters other than tab, each to a space.
_CONTROLS = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"
_SPACES = bytes.maketrans(_CONTROLS, b" " * len(_CONTROLS))


def _safe(header: bytes) -> bytes:
    """
    A response header's name or value with control characters (CR and LF
    among them) replaced by spaces, as twisted.web's L{Headers} replaced
    line breaks: a value that came from an agent or a target cannot end
    its header line and add lines of its own.
    """
    return header.translate(_SPACES)


class ServerExchange:
    """
    One request and its answer on a L{ScrapePortConnection}: the
    L{Exchange} the proxy answers through.

    The status line and headers go out with the first body bytes, in one
    write. A body is framed by C{Content-Length} when it is set, chunked
    otherwise (HTTP/1.0: by closing the connection).

    @ivar persistent: whether the connection stays open after this answer.
    @ivar started: whether the status line and headers are out.
    """

    __slots__ = (
        "_chunked",
        "_connection",
        "_extra",
        "_finished",
        "_gone",
        "_out",
        "_phrase",
        "_sendsBody",
        "_version",
        "body",
        "code",
        "headers",
        "method",
        "path",
        "persistent",
        "query",
        "repeated",
        "started",
    )

    def __init__(
        self,
        connection: ScrapePortConnection,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: dict[bytes, bytes],
        repeated: frozenset[bytes],
        version: bytes,
        persistent: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.repeated = repeated
        self.body: RequestBody = b""
        self.code = 200
        self.persistent = persistent
        self.started = False
        self._connection = connection
        self._version = version
        self._phrase = b""
        self._out: dict[bytes, bytes] = {}
        self._extra: list[bytes] | None = None
        self._sendsBody = True
        self._chunked = False
        self._finished = False
        self._gone: Callable[[], None] | None = None

    @property
    def client(self) -> IAddress:
        transport = self._connection.transport
        assert transport is not None
        return transport.getPeer()

    @property
    def host(self) -> IAddress:
        transport = self._connection.transport
        assert transport is not None
        return transport.getHost()

    def setStatus(self, code: int, phrase: bytes = b"") -> None:
        self.code = code
        self._phrase = phrase

    def setHeader(self, name: bytes, value: bytes) -> None:
        """
        Set a header, its control characters replaced (see L{_safe}).
        """
        self._out[_safe(name)] = _safe(value)

    def addHeader(self, name: bytes, value: bytes) -> None:
        """
        Add a header line, beside any others of the same name, its control
        characters replaced (see L{_safe}).
        """
        if self._extra is None:
            self._extra = []
        self._extra.append(_safe(name) + b": " + _safe(value) + b"\r\n")

    def removeHeader(self, name: bytes) -> None:
        self._out.pop(name, None)

    def hasHeader(self, name: bytes) -> bool:
        return name in self._out

    def write(self, data: bytes) -> None:
        if self._finished or not data:
            return
        transport = self._connection.transport
        assert transport is not None
        if not self.started:
            head = self._head()
            if not self._sendsBody:
                PENDING.write(transport, head)
            elif self._chunked:
                PENDING.write(transport, b"".join((head, b"%x\r\n" % len(data), data, b"\r\n")))
            else:
                PENDING.write(transport, head + data)
        elif not self._sendsBody:
            return
        elif self._chunked:
            transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
            PENDING.wrote(transport)
        else:
            PENDING.write(transport, data)

    def finish(self) -> None:
        if self._finished:
            return
        transport = self._connection.transport
        assert transport is not None
        if not self.started:
            if self.method != b"HEAD" and self.code not in _NO_BODY:
                self._out.setdefault(b"Content-Length", b"0")
            PENDING.write(transport, self._head())
        elif self._chunked:
            PENDING.write(transport, b"0\r\n\r\n")
        self._finished = True
        self._connection.answered(self)

    def finishWith(self, body: bytes) -> None:
        if not self.started:
            self._out[b"Content-Length"] = b"%d" % len(body)
        self.write(body)
        self.finish()

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._connection.aborted(self)

    def notifyGone(self, gone: Callable[[], None]) -> None:
        self._gone = gone

    def registerProducer(self, producer: IPushProducer) -> None:
        self._connection.bodyProducer(self, producer)

    def unregisterProducer(self) -> None:
        self._connection.bodyProducer(self, None)

    def lost(self) -> None:
        """
        The connection went away: the answer can never be finished.
        """
        if self._finished:
            return
        self._finished = True
        if self._gone is not None:
            self._gone()

    def _head(self) -> bytes:
        """
        The status line and headers, with the framing the body needs.
        """
        self.started = True
        code = self.code
        out = self._out
        # A HEAD answer and a 204 or 304 have no body, whatever is written.
        self._sendsBody = self.method != b"HEAD" and code not in _NO_BODY
        parts = [
            _STATUS_LINE[self._version] % (code, self._phrase or RESPONSES.get(code, b"Unknown")),
            _SERVER,
            _date(self._connection.factory.clock.seconds()),
        ]
        for name, value in out.items():
            parts += (name, b": ", value, b"\r\n")
        if self._extra is not None:
            parts += self._extra
        if self._sendsBody and b"Content-Length" not in out:
            if self._version == b"1.1":
                self._chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                # An HTTP/1.0 body without a length ends with the connection.
                self.persistent = False
        if not self.persistent:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)
