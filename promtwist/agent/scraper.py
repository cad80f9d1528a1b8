# -*- test-case-name: promtwist.test.test_scraper -*-
"""
Fetching targets for the proxy: one HTTP request per scrape over a shared
connection pool, the body streamed back in chunks as it arrives.

Requests go through the injected L{IAgent} directly rather than through
C{treq.HTTPClient.request}, which always decodes gzip: promtwist passes the
target's gzip bytes through untouched.

Every scrape is bounded three ways: by its deadline (covering connect,
headers and body), by C{agent.http.maxContentLengthMBytes}, and by the
proxy's credit, so a slow Prometheus slows the target read instead of
filling memory.
"""

from __future__ import annotations

import base64
import functools
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import idna
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from promtwist import __version__
from promtwist.agent.filters import FamilyFilter, FilterStream
from promtwist.config import AgentSettings, MiB, PathConfig
from promtwist.httputil import acceptsGzip, redacted
from promtwist.logs import RepeatedWarnings, clip, observer
from promtwist.protocol.framing import FrameTooLarge
from promtwist.protocol.promtwist_pb2 import (
    Frame,
    Outcome,
    ScrapeChunk,
    ScrapeRequest,
    ScrapeResponse,
)

_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"

USER_AGENT = f"promtwist-agent/{__version__.public()}".encode("ascii")

# What a head frame adds around its body bytes, with room to spare: content
# type and encoding (capped below), length, status and ids.
FRAME_OVERHEAD = 4096
# A target's Content-Type longer than this is cut: a real one is far shorter.
MAX_CONTENT_TYPE = 1024
# The fewest body bytes per frame, whatever limit the proxy announces.
MIN_CHUNK = 1024


class InvalidRequest(ValueError):
    """
    A scrape that cannot become a valid HTTP request to its target: the
    message says what was wrong, and the target was not contacted.
    """


# What twisted.web's client accepts in a request target: printable ASCII.
_NOT_IN_REQUEST_TARGET = re.compile(r"[^\x21-\x7e]")
# What RFC 9110 allows in a field value: tab, visible ASCII, space, and
# obs-text (the rest of latin-1).
_NOT_IN_FIELD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")


def _firstInvalid(text: str, refused: re.Pattern[str]) -> tuple[int, str] | None:
    """
    The offset and a description of the first character of C{text} that
    matches C{refused}, or L{None}: bytes by their hex value, anything past
    ASCII by its code point (an operator can find either).
    """
    match = refused.search(text)
    if match is None:
        return None
    code = ord(match.group())
    kind = f"byte 0x{code:02x}" if code < 0x80 else f"non-ASCII character U+{code:04X}"
    return match.start(), kind


def _asciiNetloc(netloc: str) -> str:
    """
    C{host[:port]} fit for a request: an internationalised host name in its
    IDNA form (C{bücher.example} becomes C{xn--bcher-kva.example}).

    An ASCII host is left as it is: IDNA 2008 refuses names that resolve
    fine (C{my_host}), and they are not ours to judge.

    @raise InvalidRequest: the host has no IDNA form, or holds a byte no
        request can carry.
    """
    if not netloc.isascii() and not netloc.startswith("["):
        host, colon, port = netloc.partition(":")
        try:
            netloc = idna.encode(host, uts46=True).decode("ascii") + colon + port
        except UnicodeError as e:
            raise InvalidRequest(
                f"target host {clip(host)} has no IDNA (internationalised host name)"
                f" form: {clip(str(e))}"
            ) from e
    invalid = _firstInvalid(netloc, _NOT_IN_REQUEST_TARGET)
    if invalid is not None:
        offset, what = invalid
        raise InvalidRequest(f"target host {clip(netloc)} holds {what} at offset {offset}")
    return netloc


@dataclass(frozen=True)
class Target:
    """
    A request ready to send: the URI without user info, and the Basic
    credentials that were in it.
    """

    uri: bytes
    authorization: bytes | None

    @classmethod
    def build(cls, configured: str, query: str) -> Target:
        """
        Append Prometheus' query string to the configured URL (so
        C{/federate?match[]=...} works) and lift C{user:pass@} into a header.

        @param query: as the proxy forwarded it, already percent-encoded.
        @raise InvalidRequest: the host cannot be written in a request (see
            L{_asciiNetloc}), or the proxy's query holds a byte that no
            request may carry: the proxy should refuse such a query, but the
            agent does not rely on it.
        """
        invalid = _firstInvalid(query, _NOT_IN_REQUEST_TARGET)
        if invalid is not None:
            offset, what = invalid
            raise InvalidRequest(
                f"the query string from the proxy holds {what} at offset {offset};"
                " a request carries only printable ASCII (the rest must be percent-encoded)"
            )
        parts = urlsplit(configured)
        authorization = None
        netloc = parts.netloc
        if "@" in netloc:
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))
            netloc = netloc.rpartition("@")[2]
        # Configured URLs may hold raw characters (prometheus-proxy's federate
        # example has {, ' and ~); escape what a request line may not carry,
        # keeping escapes that are already there.
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        fullQuery = quote(parts.query, safe=_QUERY_SAFE)
        if query:
            fullQuery = f"{fullQuery}&{query}" if fullQuery else query
        uri = urlunsplit((parts.scheme, _asciiNetloc(netloc), path, fullQuery, ""))
        return cls(uri.encode("ascii"), authorization)


class Scraper:
    """
    Runs scrapes for one agent process.

    @ivar agent: the HTTP agent over the process's connection pool.
    """

    _log = Logger(observer=observer)

    def __init__(self, settings: AgentSettings, agent: IAgent, clock: IReactorTime) -> None:
        self.settings = settings
        self.agent = agent
        self.clock = clock
        self.maxBodyBytes = settings.max_content_length_mbytes * MiB
        self.filters = {f.path: FamilyFilter(f) for f in settings.filters}
        self.onFiltered: Callable[[str, FilterStream], None] | None = None
        # How each scrape ended ("success", "unsuccessful" or "cancelled")
        # and how long it took; how each result crossed the link.
        self.onScrapeEnded: Callable[[str, float], None] | None = None
        self.onResultSent: Callable[[str], None] | None = None
        self._warned: set[tuple[str, str]] = set()
        # For what a proxy can make happen on every scrape.
        self.warnings = RepeatedWarnings(self._log, clock)

    def warnOnce(self, path: str, why: str) -> None:
        """
        Say once per path and reason that a filter could not be applied: it
        would be the same on every scrape.
        """
        if (path, why) not in self._warned:
            self._warned.add((path, why))
            self._log.warn("not filtering /{path}: {why}", path=path, why=why)

    def chunkBytes(self, peerMaxFrameBytes: int) -> int:
        """
        The body bytes per frame: C{agent.chunkContentSizeKbs}, kept below the
        proxy's frame limit.

        Never below L{MIN_CHUNK}: a proxy announcing a limit that leaves no
        room for body bytes gets frames it refuses, and each scrape fails with
        "answer too large for the link", where a chunk of zero or fewer bytes
        would never empty the buffer.
        """
        return max(
            MIN_CHUNK,
            min(self.settings.chunk_content_size_kbs * 1024, peerMaxFrameBytes - FRAME_OVERHEAD),
        )


_P = ParamSpec("_P")


def _buckStops(
    method: Callable[Concatenate[Scrape, _P], None],
) -> Callable[Concatenate[Scrape, _P], None]:
    """
    For a L{Scrape} method called from outside it (by the link, the HTTP
    client's body protocol, a timer): a bug in it fails that scrape with
    AGENT_ERROR instead of escaping into the link (which would drop every
    scrape on it), the HTTP client (which would drop the target connection
    and have the target blamed for breaking off) or the reactor (which
    would leave the scrape to the proxy's deadline).
    """

    @functools.wraps(method)
    def guarded(self: Scrape, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:  # noqa: BLE001
            self._bug(Failure())

    return guarded


class Scrape:
    """
    One scrape at the agent, from the proxy's request to the last chunk.

    Frames go out through C{send}; exactly one of them says C{last}. L{done}
    fires (never fails) when nothing more will be sent.

    Every Deferred a scrape creates ends in L{_bug}, and every method called
    from outside is guarded by L{_buckStops}: whatever goes wrong, the proxy
    hears of it at once, with a reason.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        scraper: Scraper,
        request: ScrapeRequest,
        pathConfig: PathConfig,
        send: Callable[[Frame], None],
        chunkBytes: int,
    ) -> None:
        self.scraper = scraper
        self.request = request
        self.pathConfig = pathConfig
        self.send = send
        self.chunkBytes = chunkBytes
        # A proxy that gives no deadline gets the agent's own.
        limit = scraper.settings.scrape_timeout_secs
        self.timeout = min(request.timeout_ms / 1000, limit) if request.timeout_ms else limit
        self.done: Deferred[None] = Deferred()
        self.received = 0
        self._credit = request.window_bytes or scraper.maxBodyBytes
        self._startedAt = scraper.clock.seconds()
        self._deadline = self._startedAt + self.timeout
        self._timer: IDelayedCall | None = None
        self._slots: DeferredSemaphore | None = None
        # Queued for a slot (the acquire), or holding one.
        self._waiting: Deferred[DeferredSemaphore] | None = None
        self._holding = False
        self._hadToWait = False
        # When the target was asked; None while it has not been.
        self._contactedAt: float | None = None
        self._requesting: Deferred[IResponse] | None = None
        self._body: IPushProducer | None = None
        self._bodyPaused = False
        self._response: IResponse | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        # The target's body is complete; what is buffered goes out as
        # credit allows, the last of it marked last.
        self._bodyComplete = False
        self._headSent = False
        self._compressor: zlib._Compress | None = None
        self._filter = scraper.filters.get(pathConfig.path)
        self._filtering: FilterStream | None = None
        self._finished = False

    # Driving.

    @_buckStops
    def start(self, slots: DeferredSemaphore) -> None:
        """
        Check the request, start the clock, and fetch the target once one of
        C{slots} is free: time spent waiting for a slot counts.

        A request that cannot be sent is refused at once, before it waits.
        """
        try:
            target = Target.build(self.pathConfig.url, self.request.query)
            headers = self._headers(target)
        except InvalidRequest as e:
            return self._fail(Outcome.AGENT_ERROR, f"{e}; the target was not contacted")
        self._timer = self.scraper.clock.callLater(self.timeout, self._timedOut)
        self._slots = slots
        self._waiting = slots.acquire()
        # One that found a slot free did not wait, however the clock moved.
        self._hadToWait = not self._waiting.called
        self._waiting.addCallbacks(
            self._slotFree, self._leftQueue, callbackArgs=(target, headers)
        ).addErrback(self._bug)

    @property
    def queued(self) -> bool:
        """
        Whether this scrape is still waiting for a slot.
        """
        return self._waiting is not None

    def _headers(self, target: Target) -> Headers:
        """
        The request headers: the ones Prometheus sent that matter, each
        checked, and the target's configured credentials.

        @raise InvalidRequest: a forwarded value holds a byte no header may
            carry (or one past latin-1).
        """
        headers = Headers({b"User-Agent": [USER_AGENT]})
        for name, value in (
            ("Accept", self.request.accept),
            # A filtered path asks the target for a body it can read; the
            # result is compressed for the link afterwards.
            ("Accept-Encoding", "" if self._filter else self.request.accept_encoding),
            ("Authorization", self.request.authorization),
        ):
            if not value:
                continue
            invalid = _firstInvalid(value, _NOT_IN_FIELD_VALUE)
            if invalid is not None:
                offset, what = invalid
                raise InvalidRequest(
                    f"the {name} header from the proxy holds {what} at offset {offset}"
                )
            headers.setRawHeaders(name, [value.encode("latin-1")])
        if target.authorization is not None:
            # Credentials configured for the target win over forwarded ones.
            headers.setRawHeaders(b"Authorization", [target.authorization])
        return headers

    def _slotFree(self, slots: DeferredSemaphore, target: Target, headers: Headers) -> None:
        """
        A slot is ours (until L{_end}): ask the target.
        """
        self._waiting = None
        self._holding = True
        now = self.scraper.clock.seconds()
        remaining = self._deadline - now
        if remaining <= 0:
            # The slot came as the time ran out: a request now could only be
            # cancelled at once.
            return self._waitedTooLong()
        self._contactedAt = now if self._hadToWait else self._startedAt
        headers.setRawHeaders(b"X-Prometheus-Scrape-Timeout-Seconds", [b"%.3f" % remaining])
        self._requesting = self.scraper.agent.request(b"GET", target.uri, headers)
        self._requesting.addCallbacks(self._gotResponse, self._requestFailed).addErrback(self._bug)

    def _leftQueue(self, failure: Failure) -> None:
        # L{_end} cancels the wait of a scrape that ends while queued.
        failure.trap(CancelledError)

    def _bug(self, failure: Failure) -> None:
        """
        The buck stops here: a bug fails this one scrape, loudly, and nothing else.
        """
        self._log.failure(
            "scrape of /{path} failed unexpectedly", failure, path=self.pathConfig.path
        )
        self._fail(Outcome.AGENT_ERROR, f"agent error: {clip(failure.getErrorMessage())}")

    @_buckStops
    def credit(self, nbytes: int) -> None:
        self._credit += nbytes
        self._drain()
        if self._bodyPaused and self._credit > 0 and self._body is not None:
            self._bodyPaused = False
            self._body.resumeProducing()

    @_buckStops
    def cancel(self) -> None:
        """
        The proxy no longer wants this scrape: stop, and send nothing more.
        """
        if not self._finished:
            self._end("cancelled")

    # The response.

    def _gotResponse(self, response: IResponse) -> None:
        self._requesting = None
        if self._finished:
            response.deliverBody(_Discard(0))
            return
        self._response = response
        if not 200 <= response.code < 300:
            response.deliverBody(_Discard(_Discard.READ_LIMIT))
            phrase = response.phrase.decode("latin-1", "replace")
            return self._fail(
                Outcome.SUCCESS, f"target {self._where()} answered HTTP {response.code} {phrase}"
            )
        length = _declaredLength(response)
        if length > self.scraper.maxBodyBytes:
            response.deliverBody(_Discard(0))
            return self._tooLarge(length)
        if self._filter is not None:
            contentType = _single(response, b"Content-Type")
            encoding = _single(response, b"Content-Encoding")
            if self._filter.appliesTo(contentType, encoding):
                self._filtering = self._filter.stream()
            else:
                self.scraper.warnOnce(
                    self.pathConfig.path,
                    f"the target answers {contentType or 'no type'}"
                    f"{' encoded ' + encoding if encoding else ''}, which is passed on unfiltered",
                )
        response.deliverBody(_BodyReceiver(self))

    def _requestFailed(self, failure: Failure) -> None:
        self._requesting = None
        if self._finished:
            return
        if failure.check(CancelledError):
            return
        if failure.check(SchemeNotSupported):
            # Refused before any connection: nothing about the target.
            return self._fail(
                Outcome.AGENT_ERROR,
                f"cannot request {self._where()}: {_describe(failure)};"
                " the target was not contacted",
            )
        self._fail(Outcome.UNREACHABLE, f"target {self._where()} unreachable: {_describe(failure)}")

    @_buckStops
    def bodyConnected(self, producer: IPushProducer) -> None:
        self._body = producer
        if self._finished:
            producer.stopProducing()

    @_buckStops
    def bodyData(self, data: bytes) -> None:
        if self._finished:
            return
        self.received += len(data)
        if self.received > self.scraper.maxBodyBytes:
            return self._tooLarge(self.received)
        if self._filtering is not None:
            data = self._filtering.feed(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self.chunkBytes:
            self._sendWholeChunks()
        if self._credit <= 0 and self._body is not None and not self._bodyPaused:
            self._bodyPaused = True
            self._body.pauseProducing()

    @_buckStops
    def bodyEnded(self, reason: Failure) -> None:
        self._body = None
        if self._finished:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            if self._filtering is not None:
                self._filterDone(self._filtering)
            self._bodyComplete = True
            return self._drain()
        self._fail(
            Outcome.UNREACHABLE,
            f"target {self._where()} broke off the body after {self.received} bytes: "
            f"{_describe(reason)}",
        )

    def _filterDone(self, filtering: FilterStream) -> None:
        tail = filtering.finish()
        self._buffer.append(tail)
        self._buffered += len(tail)
        if filtering.failedOpen:
            self.scraper.warnOnce(self.pathConfig.path, filtering.failedOpen)
        if self.scraper.onFiltered is not None:
            self.scraper.onFiltered(self.pathConfig.path, filtering)

    # Sending.

    def _sendWholeChunks(self) -> None:
        """
        Send the whole chunks the buffer holds while the proxy has credit
        left, and keep the rest: the buffer is joined once, whatever the
        number of chunks in it.

        A frame is started only while credit is left, so the proxy never
        holds more than its window and one frame for this scrape; it treats
        more as a protocol violation.
        """
        data = b"".join(self._buffer)
        size = self.chunkBytes
        offset = 0
        while len(data) - offset >= size and self._credit > 0 and not self._finished:
            self._sendPayload(data[offset : offset + size], last=False)
            offset += size
        rest = data[offset:]
        self._buffer = [rest] if rest else []
        self._buffered = len(rest)

    def _drain(self) -> None:
        """
        Send what the credit allows; once the body is complete and only the
        tail is left, send it as the last frame and end.
        """
        if self._finished:
            return
        if self._buffered >= self.chunkBytes:
            self._sendWholeChunks()
        if self._bodyComplete and self._buffered < self.chunkBytes and self._credit > 0:
            rest, self._buffer, self._buffered = b"".join(self._buffer), [], 0
            self._sendPayload(rest, last=True)
            if not self._finished:
                self._end("success")

    def _sendPayload(self, payload: bytes, last: bool) -> None:
        if not self._headSent:
            return self._sendHead(payload, last)
        if self._compressor is not None:
            payload = self._compressor.compress(payload)
            if last:
                payload += self._compressor.flush()
        if payload or last:
            self._credit -= len(payload)
            self._sendOrFail(
                Frame(
                    scrape_chunk=ScrapeChunk(
                        scrape_id=self.request.scrape_id, data=payload, last=last
                    )
                )
            )

    def _sendHead(self, payload: bytes, last: bool) -> None:
        response = self._response
        assert response is not None
        contentType = _single(response, b"Content-Type")[:MAX_CONTENT_TYPE]
        encoding = _single(response, b"Content-Encoding")
        # A filtered body is shorter than the target declared.
        length = -1 if self._filtering is not None else _declaredLength(response)
        # Compress for the link only what Prometheus can take compressed and
        # is big enough to be worth it; the proxy passes it on as it is.
        if (
            encoding in ("", "identity")
            and acceptsGzip(self.request.accept_encoding)
            and (not last or len(payload) > self.scraper.settings.min_gzip_size_bytes)
        ):
            self._compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            payload = self._compressor.compress(payload)
            if last:
                payload += self._compressor.flush()
            encoding, length = "gzip", -1
        self._credit -= len(payload)
        sent = self._sendOrFail(
            Frame(
                scrape_response=ScrapeResponse(
                    scrape_id=self.request.scrape_id,
                    outcome=Outcome.SUCCESS,
                    status=response.code,
                    content_type=contentType,
                    content_encoding=encoding,
                    content_length=length,
                    body=payload,
                    last=last,
                )
            )
        )
        if not sent:
            return
        self._headSent = True
        if self.scraper.onResultSent is not None:
            kind = "chunked" if not last else "gzipped" if self._compressor else "non-gzipped"
            self.scraper.onResultSent(kind)

    def _sendOrFail(self, frame: Frame) -> bool:
        """
        Send one frame of the answer; one the link cannot carry fails the
        scrape instead (in a head if no head went out yet, else in a last
        chunk).

        @return: whether it was sent.
        """
        try:
            self.send(frame)
        except FrameTooLarge as e:
            self._fail(Outcome.AGENT_ERROR, f"answer too large for the link: {e}")
            return False
        return True

    # Endings.

    @_buckStops
    def _timedOut(self) -> None:
        self._timer = None
        contactedAt = self._contactedAt
        if contactedAt is None:
            return self._waitedTooLong()
        had = round(self._deadline - contactedAt, 3)
        waited = round(contactedAt - self._startedAt, 3)
        if self._credit <= 0:
            # Not the target's slowness: what it sent could not be passed on
            # (the proxy gives credit as Prometheus reads). AGENT_ERROR, so
            # that the target is not counted as timing out.
            return self._fail(
                Outcome.AGENT_ERROR,
                f"the answer of target {self._where()} ({self.received} bytes so far) waited"
                " for the proxy's credit: Prometheus read it more slowly than the target sent"
                f" it, past the {had:g}s deadline",
            )
        reason = f"target {self._where()} did not answer within {had:g}s"
        if waited > 0:
            reason += f" (the scrape first waited {waited:g}s for a free slot)"
        self._fail(Outcome.TIMED_OUT, reason)

    def _waitedTooLong(self) -> None:
        # AGENT_ERROR, not TIMED_OUT: the proxy answers TIMED_OUT with 408
        # and counts it as the target's timeout, blaming a target that was
        # never asked. What ran out is this agent's capacity, which
        # AGENT_ERROR's 503 says.
        self._fail(
            Outcome.AGENT_ERROR,
            f"waited {self.timeout:g}s for a free slot (agent.http.maxConcurrentClients"
            f" = {self.scraper.settings.max_concurrent_clients});"
            f" the target {self._where()} was not contacted",
        )

    def _tooLarge(self, size: int) -> None:
        limit = self.scraper.settings.max_content_length_mbytes
        self._fail(
            Outcome.TOO_LARGE,
            f"target {self._where()} body of {size} bytes or more exceeds "
            f"agent.http.maxContentLengthMBytes ({limit} MiB)",
        )

    def _fail(self, outcome: Outcome, reason: str) -> None:
        """
        Report a failure: in the head if none was sent yet, else in a last chunk.
        """
        if self._finished:
            return
        scrapeId = self.request.scrape_id
        if outcome == Outcome.SUCCESS:
            response = self._response
            assert response is not None
            frame = Frame(
                scrape_response=ScrapeResponse(
                    scrape_id=scrapeId, status=response.code, reason=reason, last=True
                )
            )
        elif not self._headSent:
            frame = Frame(
                scrape_response=ScrapeResponse(
                    scrape_id=scrapeId, outcome=outcome, reason=reason, last=True
                )
            )
        else:
            frame = Frame(
                scrape_chunk=ScrapeChunk(
                    scrape_id=scrapeId, last=True, outcome=outcome, reason=reason
                )
            )
        self._log.info(
            "scrape of /{path} failed: {reason}", path=self.pathConfig.path, reason=reason
        )
        try:
            self.send(frame)
        except FrameTooLarge as e:
            # Only a proxy announcing an absurdly small frame limit gets here;
            # it will hear nothing and answer at its own deadline.
            self.scraper.warnings.warn(
                "unsendable failure",
                "cannot tell the proxy that /{path} failed: {error}",
                path=self.pathConfig.path,
                error=str(e),
            )
        self._end("unsuccessful")

    def _end(self, kind: str) -> None:
        self._finished = True
        if self.scraper.onScrapeEnded is not None:
            self.scraper.onScrapeEnded(kind, self.scraper.clock.seconds() - self._startedAt)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._requesting is not None:
            self._requesting.cancel()
        if self._body is not None:
            self._body.stopProducing()
        self._buffer = []
        self._buffered = 0
        self.done.callback(None)
        # Last: giving the slot back starts the next queued scrape at once.
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        elif self._holding and self._slots is not None:
            self._holding = False
            self._slots.release()

    def _where(self) -> str:
        return redacted(self.pathConfig.url)


def _declaredLength(response: IResponse) -> int:
    """
    The body length the target declared, or -1.
    """
    length = response.length
    return length if isinstance(length, int) else -1


def _single(response: IResponse, name: bytes) -> str:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else ""


def _describe(failure: Failure) -> str:
    """
    A short cause for a failed target request, without a traceback.
    """
    value = failure.value
    if isinstance(value, (ResponseNeverReceived, ResponseFailed)) and value.reasons:
        return _describe(value.reasons[0])
    if isinstance(value, netError.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, netError.DNSLookupError):
        return "host name lookup failed"
    if isinstance(value, netError.TimeoutError):
        return "connect timed out"
    return failure.getErrorMessage() or type(value).__name__


def _producer(protocol: Protocol) -> IPushProducer:
    """
    What a response body's protocol is connected to: not a network
    transport, but the producer of the body.
    """
    return cast(IPushProducer, protocol.transport)


class _BodyReceiver(Protocol):
    """
    Hands body bytes to its L{Scrape}; the transport it is given is the
    producer the scrape pauses when the proxy's credit runs out.
    """

    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def connectionMade(self) -> None:
        self.scrape.bodyConnected(_producer(self))

    def dataReceived(self, data: bytes) -> None:
        self.scrape.bodyData(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self.scrape.bodyEnded(reason)


class _Discard(Protocol):
    """
    Drops a body nobody wants. Up to C{limit} bytes are read so that the
    connection can go back to the pool; past that it is cut.
    """

    READ_LIMIT = 64 * 1024

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def connectionMade(self) -> None:
        if self.limit == 0:
            _producer(self).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > self.limit:
            _producer(self).stopProducing()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        pass
