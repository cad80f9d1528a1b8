"""
Streaming, family-aware metric filtering of scraped bodies (C{agent.filters}).

A body in the Prometheus text exposition format (or OpenMetrics) arrives in
arbitrary byte chunks; L{FilterStream} forwards the lines of the metric
families the filter keeps as soon as each line is complete, holding back
only the partial last line between chunks.

The rules (prometheus-proxy's C{agent.filters}):

  - the patterns are fully anchored (C{re.fullmatch}): C{"go_"} matches
    nothing, C{"go_.*"} matches C{go_gc_duration_seconds};
  - an empty allow list allows every name; the deny list applies after it;
  - a C{# HELP}, C{# TYPE} or C{# UNIT} line opens a family, judged by its
    name; those lines go or stay with their family;
  - a sample named after the open family, or after it plus one of
    C{_bucket _sum _count _created _total _gsum _gcount _info}, inherits the
    family's verdict; any other sample (including all samples before the
    first family line) is judged by its own name: the text before C{{} or
    whitespace;
  - blank lines, other comments and C{# EOF} always pass;
  - a body that is not valid UTF-8, or that has a line longer than the
    stream's limit, is not filtered from the offending line on ("fails
    open"): that line and everything after it pass through unchanged.

Filtering only applies to bodies whose Content-Type is empty, C{text/plain}
or C{application/openmetrics-text}, and which are not content-encoded; see
L{FamilyFilter.appliesTo}.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from promtwist.config.settings import MetricFilter

__all__ = ["DEFAULT_MAX_LINE", "FamilyFilter", "FilterStream"]

# The longest line (in bytes, without its newline) a stream holds back
# before giving up on filtering the rest of the body.
DEFAULT_MAX_LINE = 1024 * 1024

# Sample-name suffixes that belong to the family they extend.
_SUFFIXES = frozenset(
    [b"_bucket", b"_sum", b"_count", b"_created", b"_total", b"_gsum", b"_gcount", b"_info"]
)

_FILTERED_TYPES = frozenset(["", "text/plain", "application/openmetrics-text"])
_UTF8_CHARSETS = frozenset(["utf-8", "utf8", "us-ascii", "ascii"])

_QUOTED = rb'"(?:[^"\\\n]|\\.)*"'
# "# HELP name ...", "# TYPE name ...", "# UNIT name ..." (name may be quoted).
_META = re.compile(rb"#[ \t]*(?:HELP|TYPE|UNIT)[ \t]+(" + _QUOTED + rb"|[^ \t]+)")
# A sample's name: text before "{" or whitespace, or a quoted name.
_SAMPLE_NAME = re.compile(_QUOTED + rb"|[^{ \t]*")
# OpenMetrics 2 / Prometheus 3 style: {"metric.name", label="value"} 1
_BRACED_NAME = re.compile(rb"\{[ \t]*(" + _QUOTED + rb")[ \t]*[,}]")
_ESCAPE = re.compile(rb"\\(.)")
_BOM = b"\xef\xbb\xbf"
# What may follow a sample's (unquoted) name.
_NAME_ENDS = frozenset([b"{", b" ", b"\t"])

# Bound on the per-filter cache of name verdicts.
_CACHE_LIMIT = 100_000


def _unescape(match: re.Match[bytes]) -> bytes:
    char = match.group(1)
    return b"\n" if char == b"n" else char


def _unquote(name: bytes) -> bytes:
    """
    A metric name as written in a line, without quotes and escapes.
    """
    if len(name) >= 2 and name[:1] == b'"':
        return _ESCAPE.sub(_unescape, name[1:-1])
    return name


class FamilyFilter:
    """
    The compiled form of one L{MetricFilter}: decides which metric names
    pass, and makes a L{FilterStream} for each body.

    @ivar path: the path the filter applies to.
    """

    def __init__(self, metricFilter: MetricFilter, maxLine: int = DEFAULT_MAX_LINE) -> None:
        self.path = metricFilter.path
        self._allow = tuple(re.compile(p) for p in metricFilter.allow)
        self._deny = tuple(re.compile(p) for p in metricFilter.deny)
        self._maxLine = maxLine
        self._verdicts: dict[bytes, bool] = {}

    @staticmethod
    def appliesTo(contentType: str, contentEncoding: str) -> bool:
        """
        Whether a body with these Content-Type and Content-Encoding headers is
        filtered: only identity-encoded bodies of an empty, C{text/plain} or
        C{application/openmetrics-text} type (whose C{charset}, if given,
        is UTF-8 or ASCII).
        """
        if contentEncoding.strip().lower() not in ("", "identity"):
            return False
        mediaType, *params = contentType.split(";")
        if mediaType.strip().lower() not in _FILTERED_TYPES:
            return False
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                charset = value.strip().strip('"').lower()
                if charset not in _UTF8_CHARSETS:
                    return False
        return True

    def allowed(self, name: str) -> bool:
        """
        Whether the metric (family) C{name} passes: it fully matches an allow
        pattern (or there are none) and fully matches no deny pattern.
        """
        if self._allow and not any(p.fullmatch(name) for p in self._allow):
            return False
        return not any(p.fullmatch(name) for p in self._deny)

    def _allowedBytes(self, name: bytes) -> bool:
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = self.allowed(name.decode("utf-8", "surrogateescape"))
            if len(self._verdicts) >= _CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[name] = verdict
        return verdict

    def stream(self) -> FilterStream:
        """
        A new filter for one body.
        """
        return FilterStream(self._allowedBytes, self._maxLine)

    def filterBody(self, body: bytes) -> bytes:
        """
        Filter a whole body at once.
        """
        stream = self.stream()
        return stream.feed(body) + stream.finish()


class FilterStream:
    """
    The state of filtering one body: feed it the body's bytes as they
    arrive, in any chunks, then call L{finish}.

    @ivar linesDropped: how many lines were dropped so far.
    @ivar bytesSaved: how many bytes (newlines included) were dropped so far.
    @ivar failedOpen: C{None} while filtering; once filtering stopped, why
        (everything from the offending line on passes unchanged).
    """

    def __init__(self, allowed: Callable[[bytes], bool], maxLine: int = DEFAULT_MAX_LINE) -> None:
        self._allowed = allowed
        self._maxLine = maxLine
        self._held: list[bytes] = []
        self._heldLength = 0
        self._family: bytes | None = None
        self._familyKept = True
        self._atStart = True
        self._finished = False
        self.linesDropped = 0
        self.bytesSaved = 0
        self.failedOpen: str | None = None

    def feed(self, data: bytes) -> bytes:
        """
        Take the next chunk of the body; return the bytes to forward now.
        """
        if self._finished:
            raise RuntimeError("FilterStream.feed after finish")
        if self.failedOpen is not None or not data:
            return data
        newline = data.rfind(b"\n")
        if newline < 0:
            self._held.append(data)
            self._heldLength += len(data)
            if self._heldLength > self._maxLine:
                return self._failOpen(self._tooLong(), self._takeHeld())
            return b""
        complete = data[: newline + 1]
        if self._held:
            self._held.append(complete)
            complete = b"".join(self._held)
        rest = data[newline + 1 :]
        self._held = [rest] if rest else []
        self._heldLength = len(rest)
        out = self._process(complete)
        if self.failedOpen is not None:
            return out + self._takeHeld()
        if self._heldLength > self._maxLine:
            return out + self._failOpen(self._tooLong(), self._takeHeld())
        return out

    def finish(self) -> bytes:
        """
        The body ended: return the rest to forward (its last line, if it has
        no newline).
        """
        if self._finished:
            return b""
        self._finished = True
        held = self._takeHeld()
        if self.failedOpen is not None or not held:
            return held
        return self._process(held)

    def _takeHeld(self) -> bytes:
        held = b"".join(self._held)
        self._held = []
        self._heldLength = 0
        return held

    def _tooLong(self) -> str:
        return f"a line is longer than {self._maxLine} bytes"

    def _failOpen(self, reason: str, rest: bytes) -> bytes:
        self.failedOpen = reason
        return rest

    def _process(self, buf: bytes) -> bytes:
        """
        Filter whole lines (the last one may lack its newline only at the
        end of the body).
        """
        try:
            buf.decode("utf-8")
        except UnicodeDecodeError as e:
            invalidAt = e.start
        else:
            invalidAt = len(buf)
        parts: list[bytes] = []
        runStart = 0
        pos = 0
        size = len(buf)
        maxLine = self._maxLine
        while pos < size:
            end = buf.find(b"\n", pos)
            if end < 0:
                end = size
                after = size
            else:
                after = end + 1
            if end - pos > maxLine or invalidAt < after:
                parts.append(buf[runStart:])
                self.failedOpen = (
                    self._tooLong() if end - pos > maxLine else ("body is not valid UTF-8")
                )
                return b"".join(parts)
            if not self._keep(buf[pos:end]):
                if runStart < pos:
                    parts.append(buf[runStart:pos])
                runStart = after
                self.linesDropped += 1
                self.bytesSaved += after - pos
            pos = after
        if runStart == 0:
            return buf
        parts.append(buf[runStart:])
        return b"".join(parts)

    def _keep(self, line: bytes) -> bool:
        """
        Whether one line (without its newline) is forwarded; tracks the
        open family.
        """
        if self._atStart:
            self._atStart = False
            line = line.removeprefix(_BOM)
        line = line.strip(b" \t\r")
        if not line:
            return True
        if line[:1] == b"#":
            meta = _META.match(line)
            if meta is None:
                return True
            name = _unquote(meta.group(1))
            if name != self._family:
                self._family = name
                self._familyKept = self._allowed(name)
            return self._familyKept
        family = self._family
        if family is not None and line.startswith(family):
            # Fast path: a sample of the open family itself.
            if line[len(family) : len(family) + 1] in _NAME_ENDS:
                return self._familyKept
        sample = _SAMPLE_NAME.match(line)
        name = sample.group() if sample is not None else b""
        if not name:
            braced = _BRACED_NAME.match(line)
            if braced is None:
                return True
            name = braced.group(1)
        if name[:1] == b'"':
            name = _unquote(name)
        if family is not None and name.startswith(family):
            if len(name) == len(family) or name[len(family) :] in _SUFFIXES:
                return self._familyKept
        return self._allowed(name)
