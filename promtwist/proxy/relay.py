# -*- test-case-name: promtwist.test.test_relay -*-
"""
One Prometheus scrape from request to answer: the lifecycle every scrape
shares, whoever serves the path.

A L{ScrapeRelay} owns the scrape: its deadline, Prometheus hanging up, the
bookkeeping of scrapes in flight, and exactly one record of how it ended. How
the agents' answers become the HTTP body is a L{BodyStrategy}:
L{StreamThrough} for a path one agent serves (the body goes to Prometheus as
it arrives), or L{promtwist.proxy.consolidated.CollectMerge} for a
consolidated path (every agent's body is collected, then merged).

The relay moves through three states: C{REQUESTED} (the agents were asked;
nothing has been sent to Prometheus), C{BODY} (the status and headers are
committed and the body is flowing) and C{DONE}. A failure in C{REQUESTED}
is an error answer with a one-line reason; a failure in C{BODY} can only be
signalled by breaking the response off, which Prometheus records as a failed
scrape and which leaves nothing on the connection to be read as another
answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.config.settings import ProxySettings
from promtwist.gunzip import Gunzip, GunzipError
from promtwist.hostkeys import HostTarget, hostKey, spelled
from promtwist.httputil import GZIP_ENCODINGS, acceptsGzip
from promtwist.logs import RepeatedWarnings, observer
from promtwist.metrics import ScrapeLeg
from promtwist.proxy.answers import ScrapeFailed, ScrapeRecord, textAnswer, upstreamType
from promtwist.proxy.exchange import Exchange
from promtwist.proxy.proxyurl import Written
from promtwist.proxy.stream import AnswerHead, ScrapeStream

TIMEOUT_HEADER = b"x-prometheus-scrape-timeout-seconds"


@dataclass(frozen=True)
class ScrapeCall:
    """
    What every agent serving a path is asked for one Prometheus request.

    @ivar path: for a path-routed scrape the registered path (no leading
        C{/}); for a host-routed one (C{target} set) the request's own path
        as Prometheus sent it, percent-encoded, starting with C{/}.
    @ivar query: without its C{?}; for a host-routed scrape without the
        C{_scheme} parameters, which C{target.scheme} carries.
    @ivar deadline: seconds until the proxy answers, whatever the agents do.
    @ivar target: the target a C{proxy_url} scrape names; L{None} for a
        path-routed scrape.
    @ivar key: the registry key that serves it, which its record (and so
        its metric series) is named by: the path, or the target's claim
        (C{//host} for a claim on any port, whichever port was asked
        for). By default the path, or the target's exact host key.
    @ivar written: how Prometheus wrote C{target}'s port and query, for a
        host-routed scrape.
    """

    path: str
    query: str
    accept: str
    acceptEncoding: str
    authorization: str
    deadline: float
    target: HostTarget | None = None
    key: str = ""
    written: Written | None = None

    def __post_init__(self) -> None:
        if not self.key:
            key = self.path if self.target is None else hostKey(self.target.host, self.target.port)
            object.__setattr__(self, "key", key)

    @property
    def agentTimeout(self) -> float:
        """
        The share of the deadline the agent gets, so that its 408 for a slow
        target reaches Prometheus before Prometheus gives up itself.
        """
        return self.deadline - min(0.5, self.deadline * 0.1)


def scrapeDeadline(headers: Mapping[bytes, bytes], settings: ProxySettings) -> float:
    """
    How long this scrape may take: Prometheus' own timeout when it says
    (in C{headers}, by lower-case name), capped by
    C{proxy.internal.scrapeRequestTimeoutSecs}.
    """
    limit = settings.scrape_request_timeout_secs
    header = headers.get(TIMEOUT_HEADER)
    if header:
        try:
            seconds = float(header)
        except ValueError:
            return limit
        if 0 < seconds < limit:
            return seconds
    return limit


class ScrapeSource(Protocol):
    """
    An agent link a scrape can be sent down.
    """

    name: str

    def scrape(self, call: ScrapeCall) -> ScrapeStream: ...


class ScrapeTracker:
    """
    The scrapes in flight on the scrape port, and what became of each: the
    drain waits on L{whenIdle}; metrics and the debug page observe records.

    @ivar observers: called with every L{ScrapeRecord}.
    """

    _log = Logger(observer=observer)

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.observers: list[Callable[[ScrapeRecord], None]] = []
        self.inFlight: set[ScrapeRelay] = set()
        self._idle: list[Deferred[None]] = []
        self.invalidAnswers = RepeatedWarnings(self._log, clock)

    def started(self, relay: ScrapeRelay) -> None:
        self.inFlight.add(relay)

    def ended(self, relay: ScrapeRelay, record: ScrapeRecord) -> None:
        self.inFlight.discard(relay)
        self.record(record)
        if not self.inFlight:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def record(self, record: ScrapeRecord) -> None:
        """
        Tell every observer how a scrape ended.
        """
        if record.type == "invalid_answer":
            self.invalidAnswers.warn(
                "invalid_answer",
                "scrape of {path}: {reason}",
                path=spelled(record.path),
                reason=record.reason,
            )
        for notify in self.observers:
            notify(record)

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once no scrape is in flight (now, if none is).
        """
        d: Deferred[None] = Deferred()
        if self.inFlight:
            self._idle.append(d)
        else:
            d.callback(None)
        return d


class RelayState(Enum):
    REQUESTED = auto()
    BODY = auto()
    DONE = auto()


class BodyStrategy(Protocol):
    """
    How the agents' answers become the HTTP answer.

    @ivar agents: the agents asked, for the record.
    """

    agents: str

    def start(self, relay: ScrapeRelay) -> None:
        """
        Begin: from now on report to C{relay}.
        """

    def deadlinePassed(self) -> None:
        """
        The deadline passed; answer with what there is.
        """

    def abandon(self) -> None:
        """
        The scrape is over: stop every agent still working on it.
        """

    def legs(self, kind: str) -> tuple[ScrapeLeg, ...]:
        """
        What prometheus-proxy's metrics count of the scrape, which ended as
        C{kind}: one leg per agent asked.
        """


class ScrapeRelay:
    """
    One scrape's lifecycle; see the module docstring. The relay owns the
    exchange: its status line once the body begins, the producer feeding
    it, and how it ends.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        exchange: Exchange,
        call: ScrapeCall,
        tracker: ScrapeTracker,
        started: float,
    ) -> None:
        self.exchange = exchange
        self.call = call
        self.tracker = tracker
        self.started = started
        self.state = RelayState.REQUESTED
        self._strategy: BodyStrategy | None = None
        self._timer: IDelayedCall | None = None
        self._producing = False
        self._sent = 0

    def run(self, strategy: BodyStrategy) -> None:
        self._strategy = strategy
        self.tracker.started(self)
        self._timer = self.tracker.clock.callLater(self.call.deadline, self._deadlinePassed)
        self.exchange.notifyGone(self._clientGone)
        strategy.start(self)

    # For strategies.

    def answerHead(self, status: int, contentType: str) -> None:
        """
        Set the status and the headers every successful answer has. Nothing
        is committed until the first body byte is written.
        """
        exchange = self.exchange
        exchange.setStatus(status)
        exchange.setHeader(b"Cache-Control", b"must-revalidate,no-store")
        if contentType:
            # Without one, none: the proxy does not know the type.
            exchange.setHeader(b"Content-Type", contentType.encode("latin-1"))

    def registerProducer(self, producer: IPushProducer) -> None:
        """
        Let C{producer} feed the answer, paused while Prometheus reads
        slowly; the relay unregisters it when the scrape ends.
        """
        self.exchange.registerProducer(producer)
        self._producing = True

    def write(self, data: bytes) -> None:
        if self.state is RelayState.DONE or not data:
            return
        self.state = RelayState.BODY
        self._sent += len(data)
        self.exchange.write(data)

    def complete(self, reason: str = "") -> None:
        """
        The body is complete.
        """
        if self.state is RelayState.DONE:
            return
        self._end(self.exchange.code, "success", reason)
        self.exchange.finish()

    def fail(self, failure: ScrapeFailed) -> None:
        """
        The scrape cannot be answered with the target's body: an error
        answer while nothing of the body has gone out, else a broken-off
        response.
        """
        state = self.state
        if state is RelayState.DONE:
            return
        exchange = self.exchange
        if state is RelayState.REQUESTED:
            self._end(failure.status, failure.kind, failure.reason)
            textAnswer(exchange, failure.status, failure.reason)
        else:
            self._end(exchange.code, failure.kind, f"aborted mid-body: {failure.reason}")
            # Aborting leaves nothing on the connection that could be read as
            # the rest of this answer or as the next one.
            exchange.abort()

    def bug(self, failure: Failure) -> None:
        """
        The buck stops here: a bug in the proxy fails this one scrape, loudly,
        and nothing else.
        """
        self._log.failure("scrape of {path} failed", failure, path=spelled(self.call.key))
        self.fail(ScrapeFailed(500, "proxy_error", "internal error in the proxy"))

    # Endings.

    def _deadlinePassed(self) -> None:
        self._timer = None
        assert self._strategy is not None
        self._strategy.deadlinePassed()

    def _clientGone(self) -> None:
        if self.state is not RelayState.DONE:
            self._end(499, "client_gone", "Prometheus hung up", counted=False)

    def elapsed(self) -> float:
        """
        Seconds since the request arrived.
        """
        return self.tracker.clock.seconds() - self.started

    def _end(self, status: int, kind: str, reason: str, counted: bool = True) -> None:
        """
        The scrape is over: record how.

        @param counted: whether prometheus-proxy's metrics count it; not
            when Prometheus hung up, which cancels prometheus-proxy's
            handler before it counts anything.
        """
        self.state = RelayState.DONE
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._producing:
            self._producing = False
            self.exchange.unregisterProducer()
        assert self._strategy is not None
        self._strategy.abandon()
        gzipped = self.exchange.hasHeader(b"Content-Encoding")
        self.tracker.ended(
            self,
            ScrapeRecord(
                self.call.key,
                self._strategy.agents,
                status,
                kind,
                reason,
                self.elapsed(),
                self._sent,
                "gzipped" if gzipped else "plain",
                self._strategy.legs(kind) if counted else (),
            ),
        )


def watchHead(
    relay: ScrapeRelay,
    stream: ScrapeStream,
    received: Callable[[AnswerHead], None],
    failed: Callable[[ScrapeFailed], None],
) -> None:
    """
    Call C{received} with the stream's head or C{failed} with its failure;
    a cancelled head calls neither, and a bug in either ends the scrape
    through L{ScrapeRelay.bug}: no Deferred is left without a handler.
    """

    def onFailure(failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        failure.trap(ScrapeFailed)
        assert isinstance(failure.value, ScrapeFailed)
        failed(failure.value)

    stream.head.addCallbacks(received, onFailure).addErrback(relay.bug)


# Encodings the proxy inflates, when it must: RFC 9110's two names for gzip.
# Statuses whose answers carry no body, so no length either.
_NO_BODY = frozenset({204, 304})


def linkEncoding(contentEncoding: str) -> str:
    """
    How an agent's answer came over the link, as prometheus-proxy's
    C{proxy_scrape_response_bytes} labels it.
    """
    return "gzipped" if contentEncoding.lower() in GZIP_ENCODINGS else "plain"


class BodySize:
    """
    The uncompressed size of a body on its way, without inflating it: plain
    bytes are counted; of a gzip body only the last four bytes are kept, its
    trailer's ISIZE (RFC 1952: the uncompressed length modulo 2^32).

    A size for the metrics only: it frames nothing, and a body that is not
    the gzip it claims to be measures whatever its last bytes say.
    """

    def __init__(self, gzipped: bool) -> None:
        self._gzipped = gzipped
        self._count = 0
        self._tail = b""

    def feed(self, data: bytes) -> None:
        if self._gzipped:
            self._tail = (self._tail + data[-4:])[-4:]
        else:
            self._count += len(data)

    @property
    def size(self) -> int:
        if not self._gzipped:
            return self._count
        return int.from_bytes(self._tail, "little") if len(self._tail) == 4 else 0


class Inflater:
    """
    gzip decoding for one body, with its errors as L{ScrapeFailed}.
    """

    def __init__(self, limit: int) -> None:
        self._gunzip = Gunzip(limit)

    def feed(self, data: bytes) -> bytes:
        try:
            return self._gunzip.feed(data)
        except GunzipError as e:
            raise ScrapeFailed(e.status, e.type, str(e)) from None

    def finish(self) -> bytes:
        try:
            return self._gunzip.finish()
        except GunzipError as e:
            raise ScrapeFailed(e.status, e.type, str(e)) from None


class StreamThrough:
    """
    A path one agent serves: the body goes to Prometheus as it arrives,
    decompressed on the way when the agent's gzip is more than Prometheus
    accepts. The response is framed by what the proxy counts: a length only
    when the whole body came in the head, chunked otherwise.
    """

    def __init__(self, source: ScrapeSource, call: ScrapeCall, gunzipLimit: int) -> None:
        self.agents = source.name
        self.stream = source.scrape(call)
        self._gunzipLimit = gunzipLimit
        self._inflater: Inflater | None = None
        self._relay: ScrapeRelay | None = None
        self._encoding = "plain"
        self._size = BodySize(False)

    @property
    def relay(self) -> ScrapeRelay:
        assert self._relay is not None
        return self._relay

    def start(self, relay: ScrapeRelay) -> None:
        self._relay = relay
        watchHead(relay, self.stream, self._headReceived, self._failed)

    def _headReceived(self, head: AnswerHead) -> None:
        relay = self.relay
        exchange = relay.exchange
        relay.answerHead(head.status, head.contentType)
        encoding = head.contentEncoding
        self._encoding = linkEncoding(encoding)
        if encoding.lower() in GZIP_ENCODINGS and not acceptsGzip(relay.call.acceptEncoding):
            self._inflater = Inflater(self._gunzipLimit)
        else:
            self._size = BodySize(self._encoding == "gzipped")
            if encoding:
                exchange.setHeader(b"Content-Encoding", encoding.encode("latin-1"))
            if head.size >= 0 and head.status not in _NO_BODY:
                exchange.setHeader(b"Content-Length", b"%d" % head.size)
        relay.registerProducer(self.stream)
        self.stream.deliverBody(self)

    # The body (BodyConsumer).

    def write(self, data: bytes) -> None:
        try:
            if self._inflater is not None:
                data = self._inflater.feed(data)
        except ScrapeFailed as failure:
            return self._failed(failure)
        self._size.feed(data)
        self.relay.write(data)

    def bodyDone(self) -> None:
        try:
            if self._inflater is not None:
                rest = self._inflater.finish()
                self._size.feed(rest)
                self.relay.write(rest)
        except ScrapeFailed as failure:
            return self._failed(failure)
        self.relay.complete()

    def bodyFailed(self, failure: ScrapeFailed) -> None:
        self._failed(failure)

    def _failed(self, failure: ScrapeFailed) -> None:
        if self.stream.paused:
            # The body waited on Prometheus, not on the agent or the target.
            failure = ScrapeFailed(
                failure.status,
                "client_slow",
                f"Prometheus read the answer too slowly: {failure.reason}",
            )
        self.relay.fail(failure)

    # Endings.

    def deadlinePassed(self) -> None:
        self._failed(
            ScrapeFailed(
                503,
                "timed_out",
                f"no complete answer from agent {self.agents!r}"
                f" within {self.relay.call.deadline:g}s",
            )
        )

    def abandon(self) -> None:
        self.stream.stop()

    def legs(self, kind: str) -> tuple[ScrapeLeg, ...]:
        return (
            ScrapeLeg(upstreamType(kind), self.relay.elapsed(), self._size.size, self._encoding),
        )
