# -*- test-case-name: promtwist.test.test_scraper -*-
"""
The HTTP side of a scrape: the request to the target and what it answers,
within C{agent.http.maxContentLengthMBytes}, through the path's filter.

A L{Fetch} knows nothing of frames, credit or the link: it tells an
L{IAnswer} of a head, body bytes and one end, and is paused, resumed or
stopped by whoever owns it. A target's non-2xx answer is a head like any
other, followed by an end that says what was answered.

Most of a request is built once per configured URL (L{Target}); per scrape
only the query and the forwarded headers are added, each checked.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol as TypingProtocol
from urllib.parse import quote, unquote, urlsplit

import idna
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from promtwist import __version__
from promtwist.agent.buckstops import buckStops
from promtwist.agent.client import Exchange, Head, Origin, TargetPool
from promtwist.agent.filters import FamilyFilter, FilterStream
from promtwist.httputil import redacted
from promtwist.logs import clip
from promtwist.protocol.promtwist_pb2 import Outcome

_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_DEFAULT_PORTS = {"http": 80, "https": 443}

USER_AGENT = f"promtwist-agent/{__version__.public()}".encode("ascii")

# What a request target may hold: printable ASCII.
_NOT_IN_REQUEST_TARGET = re.compile(r"[^\x21-\x7e]")
# What RFC 9110 allows in a field value: tab, visible ASCII, space, and
# obs-text (the rest of latin-1).
_NOT_IN_FIELD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")


class InvalidRequest(ValueError):
    """
    A scrape that cannot become a valid HTTP request to its target: the
    message says what was wrong, and the target was not contacted.
    """


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


def headerLine(name: bytes, value: str) -> bytes:
    """
    C{name: value} and its line end, for a value from the proxy.

    @raise InvalidRequest: the value holds a byte no header may carry (or
        one past latin-1); the value itself is not repeated (it may be a
        credential).
    """
    invalid = _firstInvalid(value, _NOT_IN_FIELD_VALUE)
    if invalid is not None:
        offset, what = invalid
        raise InvalidRequest(
            f"the {name.decode('ascii')} header from the proxy holds {what} at offset {offset}"
        )
    return b"%s: %s\r\n" % (name, value.encode("latin-1"))


@dataclass(frozen=True)
class Target:
    """
    What stays the same in every request for one configured URL: where it
    goes, the escaped path and configured query, and the fixed header lines
    (Host, User-Agent, the credentials that were in the URL).

    @ivar authorization: the Basic credentials lifted from the URL; they win
        over a forwarded C{Authorization}.
    @ivar where: the URL fit for a log line or a reason (no credentials).
    """

    origin: Origin
    path: bytes
    hasQuery: bool
    fixed: bytes
    authorization: bytes | None
    where: str

    @classmethod
    def build(cls, configured: str) -> Target:
        """
        Take a configured URL apart once: C{user:pass@} becomes a header,
        raw characters are escaped, an internationalised host is IDNA-encoded.

        @raise InvalidRequest: the scheme is not http or https, the port is
            not a number, or the host cannot be written in a request (see
            L{_asciiNetloc}).
        """
        parts = urlsplit(configured)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise InvalidRequest(
                f"cannot request {clip(redacted(configured))}: only http and https URLs"
            )
        authorization = None
        netloc = parts.netloc
        if "@" in netloc:
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))
            netloc = netloc.rpartition("@")[2]
        netloc = _asciiNetloc(netloc)
        try:
            # Port 0 is a port given (and refused by connect), not a default.
            port = parts.port
            if port is None:
                port = _DEFAULT_PORTS[scheme]
        except ValueError as e:
            raise InvalidRequest(f"target {clip(netloc)}: {e}") from e
        host = urlsplit(f"//{netloc}").hostname or ""
        # Configured URLs may hold raw characters (prometheus-proxy's federate
        # example has {, ' and ~); escape what a request line may not carry,
        # keeping escapes that are already there.
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        query = quote(parts.query, safe=_QUERY_SAFE)
        fixed = b"Host: %s\r\nUser-Agent: %s\r\n" % (netloc.encode("ascii"), USER_AGENT)
        if authorization is not None:
            fixed += b"Authorization: %s\r\n" % authorization
        return cls(
            Origin(scheme, host, port),
            (f"{path}?{query}" if query else path).encode("ascii"),
            bool(query),
            fixed,
            authorization,
            redacted(configured),
        )

    def requestTarget(self, query: str) -> bytes:
        """
        The configured path and query with Prometheus' query appended (so
        C{/federate?match[]=...} works).

        @param query: as the proxy forwarded it, already percent-encoded.
        @raise InvalidRequest: the query holds a byte that no request may
            carry: the proxy should refuse such a query, but the agent does
            not rely on it.
        """
        if not query:
            return self.path
        invalid = _firstInvalid(query, _NOT_IN_REQUEST_TARGET)
        if invalid is not None:
            offset, what = invalid
            raise InvalidRequest(
                f"the query string from the proxy holds {what} at offset {offset};"
                " a request carries only printable ASCII (the rest must be percent-encoded)"
            )
        return self.path + (b"&" if self.hasQuery else b"?") + query.encode("ascii")


class IAnswer(TypingProtocol):
    """
    What a fetch tells: L{head} at most once, L{data} after it, then one
    L{end}; or just an L{end} if there was no head.

    An C{end} with L{Outcome.SUCCESS} after a non-2xx head carries a reason
    saying what the target answered.
    """

    def head(self, head: Head) -> None: ...

    def data(self, data: bytes) -> None: ...

    def end(self, outcome: Outcome, reason: str) -> None: ...


class Fetcher:
    """
    What the fetches of one agent process share: the target connection
    pool, the size limit, the filters, and one L{Target} per URL.

    @ivar reportFiltered: told of each filtered body, for the metrics.
    """

    def __init__(
        self,
        pool: TargetPool,
        clock: IReactorTime,
        maxBodyBytes: int,
        filters: dict[str, FamilyFilter],
        warnOnce: Callable[[str, str], None],
        filtered: Callable[[str, FilterStream], None],
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.maxBodyBytes = maxBodyBytes
        self.filters = filters
        self.warnOnce = warnOnce
        self.reportFiltered = filtered
        # Bounded: configured URLs come and go with reloads and discovery.
        self.target = functools.lru_cache(maxsize=4096)(Target.build)


@implementer(IPushProducer)
class Fetch:
    """
    One request to a target, its answer passed on to an L{IAnswer}.

    @ivar received: the body bytes the target sent so far.
    """

    # How much of a body nobody wants is read so that its connection can
    # go back to the pool; past that it is cut.
    DISCARD_LIMIT = 64 * 1024

    def __init__(
        self,
        fetcher: Fetcher,
        target: Target,
        path: str,
        answer: IAnswer,
        bug: Callable[[Failure], None],
    ) -> None:
        self.fetcher = fetcher
        self.target = target
        self.path = path
        self.where = target.where
        self.answer = answer
        self._bug = bug
        self.received = 0
        self._exchange: Exchange | None = None
        self._filter = fetcher.filters.get(path)
        self._filtering: FilterStream | None = None
        # Reading a body only to reuse its connection: C{None} when not.
        self._discarding: int | None = None
        self._gotHead = False
        self._ended = False
        self._deadline = 0.0

    @property
    def filtered(self) -> bool:
        """
        Whether the path has a filter: it asks the target for a body it can
        read (no forwarded Accept-Encoding).
        """
        return self._filter is not None

    def start(self, request: bytes, deadline: float) -> None:
        """
        Send C{request}; C{deadline} (a time of the fetcher's clock) bounds
        even the reading of an unwanted body after the scrape ended.
        """
        self._deadline = deadline
        self._exchange = self.fetcher.pool.request(self.target.origin, request, self)

    def pauseProducing(self) -> None:
        if self._exchange is not None:
            self._exchange.pauseProducing()

    def resumeProducing(self) -> None:
        if self._exchange is not None:
            self._exchange.resumeProducing()

    def stopProducing(self) -> None:
        """
        Nothing more is wanted: drop the request and its connection, unless
        only an unwanted body is being read so that the connection can be
        reused.
        """
        self._ended = True
        if self._exchange is not None and self._discarding is None:
            exchange, self._exchange = self._exchange, None
            exchange.stopProducing()

    def cancel(self) -> None:
        """
        The scrape was cancelled (its link is gone, or the agent stops):
        drop the request and its connection, even an unwanted body being
        read for reuse, leaving no timer behind.
        """
        self._discarding = None
        self.stopProducing()

    # From the HTTP client.

    @buckStops
    def responseHead(self, head: Head) -> None:
        if self._ended:
            return
        self._gotHead = True
        if not 200 <= head.status < 300:
            self._discarding = 0
            if self._exchange is not None:
                self._exchange.expireIn(self._deadline - self.fetcher.clock.seconds())
            self.answer.head(head)
            # The phrase is the target's: escaped and cut, as any wire text.
            return self._end(
                Outcome.SUCCESS,
                f"target {self.where} answered HTTP {head.status} {clip(head.phrase, 100)}",
            )
        if head.length > self.fetcher.maxBodyBytes:
            return self._tooLarge(head.length)
        if self._filter is not None:
            if self._filter.appliesTo(head.contentType, head.contentEncoding):
                self._filtering = self._filter.stream()
                # A filtered body is shorter than the target declared.
                head.length = -1
            else:
                encoding = head.contentEncoding
                self.fetcher.warnOnce(
                    self.path,
                    f"the target answers {head.contentType or 'no type'}"
                    f"{' encoded ' + encoding if encoding else ''}, which is passed on unfiltered",
                )
        self.answer.head(head)

    @buckStops
    def responseData(self, data: bytes) -> None:
        if self._discarding is not None:
            self._discarding += len(data)
            if self._discarding > self.DISCARD_LIMIT:
                self._discarding = None
                self.stopProducing()
            return
        if self._ended:
            return
        self.received += len(data)
        if self.received > self.fetcher.maxBodyBytes:
            return self._tooLarge(self.received)
        if self._filtering is not None:
            data = self._filtering.feed(data)
        self.answer.data(data)

    @buckStops
    def responseEnded(self) -> None:
        self._exchange = None
        if self._ended:
            return
        filtering = self._filtering
        if filtering is not None:
            self.answer.data(filtering.finish())
            if filtering.failedOpen:
                self.fetcher.warnOnce(self.path, filtering.failedOpen)
            self.fetcher.reportFiltered(self.path, filtering)
        self._end(Outcome.SUCCESS, "")

    @buckStops
    def responseFailed(self, reason: str) -> None:
        self._exchange = None
        if self._ended:
            return
        if self._gotHead:
            return self._end(
                Outcome.UNREACHABLE,
                f"target {self.where} broke off the body after {self.received} bytes: {reason}",
            )
        self._end(Outcome.UNREACHABLE, f"target {self.where} unreachable: {reason}")

    def responseBug(self, failure: Failure) -> None:
        """
        The HTTP client's own code broke: the scrape fails as any bug does
        (logged with its traceback, AGENT_ERROR), not blamed on the target.
        """
        self._exchange = None
        self._bug(failure)

    def _tooLarge(self, size: int) -> None:
        self.stopProducing()
        limit = self.fetcher.maxBodyBytes // (1024 * 1024)
        self._end(
            Outcome.TOO_LARGE,
            f"target {self.where} body of {size} bytes or more exceeds "
            f"agent.http.maxContentLengthMBytes ({limit} MiB)",
        )

    def _end(self, outcome: Outcome, reason: str) -> None:
        self._ended = True
        self.answer.end(outcome, reason)
