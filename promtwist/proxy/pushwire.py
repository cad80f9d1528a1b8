# -*- test-case-name: promtwist.test.test_pushwire -*-
"""
The two HTTP messages PushProx's client protocol carries inside HTTP
bodies: the scrape request the proxy answers a poll with, and the target's
response the client pushes back.

PushProx 0.2's client reads the poll answer with Go's C{http.ReadRequest}
and pushes what Go's C{Response.Write} makes of the target's answer; both
are plain HTTP/1.1 messages, so the request is written here as an
absolute-URI proxy request and the push is read with llhttp (through
httptools). Neither side is trusted: headers that only mean something on
the link (L{INTERNAL_HEADERS}) or on one hop (L{HOP_BY_HOP}) are stripped
both ways, and a push is parsed within a head limit and the length of the
body that carried it, so nothing a client declares sizes a buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from mmap import mmap

from httptools import HttpParserError, HttpResponseParser

from promtwist import __version__
from promtwist.logs import clip

ID_HEADER = b"id"
SCRAPE_TIMEOUT_HEADER = b"x-prometheus-scrape-timeout-seconds"

# Headers of the PushProx link itself, never passed between Prometheus and
# a target: the correlation id, the deadline the proxy sets, and the
# remaining time PushProx's client adds to every push (which PushProx's own
# proxy leaks to Prometheus).
INTERNAL_HEADERS = frozenset({ID_HEADER, SCRAPE_TIMEOUT_HEADER, b"x-prometheus-scrape-timeout"})
# RFC 9110 section 7.6.1's hop-by-hop headers, and the proxy variants
# clients still send.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# A pushed head larger than this is refused: a target's real one is a few
# hundred bytes.
MAX_PUSH_HEAD_BYTES = 64 * 1024
# Header lines a push may carry.
MAX_PUSH_HEADERS = 100

_USER_AGENT = b"promtwist/" + __version__.public().encode("ascii")
# What a request line or header value written into a poll answer may hold:
# visible ASCII and spaces (values come from Prometheus, already checked by
# the scrape handler; this is the last line of defence).
_UNSAFE = re.compile(rb"[^\x20-\x7e]")
# A PushProx scrape id: a UUID as Go's uuid.New().String() writes it.
_UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SCRAPE_ID = re.compile(_UUID + rb"\Z")
# An Id header line of a pushed head, however it is cased.
_ID_LINE = re.compile(rb"^id:[ \t]*(" + _UUID + rb")[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


class BadPush(Exception):
    """
    A push that cannot be a PushProx client's answer; the message says
    what is wrong, without repeating the body.
    """


@dataclass(frozen=True)
class ScrapeInstruction:
    """
    One scrape as a PushProx client is told to make it.

    @ivar url: the absolute URL the client fetches (its host is the
        client's FQDN).
    @ivar headers: Prometheus' headers to pass on, as (name, value) pairs;
        internal and hop-by-hop ones are dropped when written.
    @ivar timeout: the seconds the client has, sent as
        C{X-Prometheus-Scrape-Timeout-Seconds} whether or not Prometheus
        sent one (PushProx's client refuses a scrape without it).
    """

    scrapeId: str
    url: str
    hostPort: str
    headers: tuple[tuple[bytes, bytes], ...]
    timeout: float

    def serialize(self) -> bytes:
        """
        The request as the body of a poll answer: an absolute-URI request
        line, C{Host}, C{User-Agent}, the passed-on headers, C{Id} and the
        deadline, in CRLF lines.

        @raise ValueError: if a value would break its line (a bug upstream:
            the scrape handler refuses such requests).
        """
        lines = [
            b"GET " + _checked(self.url.encode("ascii")) + b" HTTP/1.1",
            b"Host: " + _checked(self.hostPort.encode("ascii")),
            b"User-Agent: " + _USER_AGENT,
        ]
        for name, value in self.headers:
            lower = name.lower()
            if lower in INTERNAL_HEADERS or lower in HOP_BY_HOP or lower in _WRITTEN:
                continue
            lines.append(_checked(name) + b": " + _checked(value))
        lines.append(b"Id: " + self.scrapeId.encode("ascii"))
        lines.append(b"X-Prometheus-Scrape-Timeout-Seconds: %.3f" % self.timeout)
        return b"\r\n".join(lines) + b"\r\n\r\n"


# Headers serialize writes itself.
_WRITTEN = frozenset({b"host", b"user-agent"})


def _checked(value: bytes) -> bytes:
    bad = _UNSAFE.search(value)
    if bad is not None:
        raise ValueError(f"byte 0x{bad.group()[0]:02x} cannot be written into a poll answer")
    return value


@dataclass(frozen=True)
class PushedAnswer:
    """
    A target's answer as a PushProx client pushed it, internal and
    hop-by-hop headers gone.

    @ivar headers: the remaining headers by lower-case name, each with its
        last value.
    """

    scrapeId: str
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def header(self, name: bytes) -> str:
        value = self.headers.get(name)
        return value.decode("latin-1") if value else ""


class _PushReader:
    """
    httptools' callbacks for one push.
    """

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.ids: list[bytes] = []
        self.count = 0
        self.body: list[bytes] = []
        self.complete = False

    def on_message_begin(self) -> None:
        if self.complete:
            raise BadPush("bytes follow the pushed answer's body")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        if self.count > MAX_PUSH_HEADERS:
            raise BadPush(f"more than {MAX_PUSH_HEADERS} header lines")
        lower = name.lower()
        if lower == ID_HEADER:
            self.ids.append(value)
        elif lower not in INTERNAL_HEADERS and lower not in HOP_BY_HOP:
            self.headers[lower] = value

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


def parsePush(data: bytes | mmap) -> PushedAnswer:
    """
    Read the HTTP response a PushProx client pushed in C{data}.

    The body may be framed by C{Content-Length}, chunked, or (as Go writes
    an answer of unknown length) run to the end of C{data}; what follows a
    framed body is refused, since it is nobody's answer.

    @raise BadPush: naming what is wrong.
    """
    if not data:
        # HTTP's way of sending no body: neither Content-Length nor chunked.
        raise BadPush(
            "the push has no body: it must carry the target's answer, its length"
            " declared in Content-Length"
        )
    end = data.find(b"\r\n\r\n", 0, MAX_PUSH_HEAD_BYTES)
    if end < 0:
        if len(data) > MAX_PUSH_HEAD_BYTES:
            raise BadPush(f"the pushed answer's head is over {MAX_PUSH_HEAD_BYTES} bytes")
        raise BadPush("the pushed answer's head is not complete (no empty line ends it)")
    if data[: len(_GO_UNVERSIONED)] == _GO_UNVERSIONED:
        # PushProx's client pushes its own errors as responses it built
        # without a protocol version, which Go writes as HTTP/0.0 and reads
        # back; llhttp knows no such version. Its body runs to the end.
        data = b"HTTP/1.0" + data[len(_GO_UNVERSIONED) - 1 :]
    reader = _PushReader()
    parser = HttpResponseParser(reader)
    try:
        with memoryview(data) as view:
            parser.feed_data(view)
    except HttpParserError as e:
        if isinstance(e.__context__, BadPush):
            raise e.__context__ from None
        if not reader.complete:
            raise BadPush(f"not an HTTP response: {clip(str(e))}") from None
        raise BadPush("bytes follow the pushed answer's body") from None
    status = parser.get_status_code()
    if not reader.complete and (b"content-length" in reader.headers or _chunked(data[:end])):
        raise BadPush("the pushed answer's body is shorter than its framing says")
    if not 100 <= status <= 599:
        raise BadPush(f"status {status} is not an HTTP status")
    if len(reader.ids) != 1:
        raise BadPush(
            "no Id header: it names the scrape answered"
            if not reader.ids
            else f"{len(reader.ids)} Id headers; one names the scrape answered"
        )
    (scrapeId,) = reader.ids
    scrapeId = scrapeId.strip().lower()
    if not _SCRAPE_ID.match(scrapeId):
        raise BadPush(f"Id {clip(scrapeId.decode('latin-1'), 60)!r} is not a scrape id")
    return PushedAnswer(scrapeId.decode("ascii"), status, reader.headers, b"".join(reader.body))


def pushedId(data: bytes | mmap) -> str | None:
    """
    The scrape id the head of a push that cannot be read whole names, if
    it names one: so that a push refused as malformed or too large still
    ends the scrape it answers, with the refusal's reason, rather than
    leaving it to its deadline.
    """
    end = data.find(b"\r\n\r\n", 0, MAX_PUSH_HEAD_BYTES)
    head = data[: end if end >= 0 else MAX_PUSH_HEAD_BYTES]
    found = _ID_LINE.findall(head)
    return found[0].lower().decode("ascii") if len(found) == 1 else None


_GO_UNVERSIONED = b"HTTP/0.0 "
_CHUNKED = re.compile(rb"^transfer-encoding:[ \t]*[^\r\n]*chunked", re.IGNORECASE | re.MULTILINE)


def _chunked(head: bytes) -> bool:
    return _CHUNKED.search(head) is not None
