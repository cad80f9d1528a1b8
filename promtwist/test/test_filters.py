"""
Tests for L{promtwist.agent.filters}: streaming, family-aware filtering of
scraped bodies (C{agent.filters}).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from promtwist.agent.filters import DEFAULT_MAX_LINE, FamilyFilter, FilterStream
from promtwist.config.settings import MetricFilter


def makeFilter(
    allow: Sequence[str] = (), deny: Sequence[str] = (), maxLine: int = DEFAULT_MAX_LINE
) -> FamilyFilter:
    return FamilyFilter(MetricFilter("metrics", tuple(allow), tuple(deny)), maxLine)


def feedChunks(stream: FilterStream, body: bytes, cuts: Sequence[int]) -> bytes:
    """
    Feed C{body} cut at the (sorted) offsets C{cuts}, then finish.
    """
    out = []
    start = 0
    for cut in [*cuts, len(body)]:
        out.append(stream.feed(body[start:cut]))
        start = cut
    out.append(stream.finish())
    return b"".join(out)


def lines(*text: str) -> bytes:
    return "".join(line + "\n" for line in text).encode("utf-8")


# A Prometheus text body, in the style of a Go client's /metrics.
GO_BODY = lines(
    "# HELP go_gc_duration_seconds A summary of the pause duration of GC cycles.",
    "# TYPE go_gc_duration_seconds summary",
    'go_gc_duration_seconds{quantile="0"} 2.3e-05',
    'go_gc_duration_seconds{quantile="1"} 0.000123',
    "go_gc_duration_seconds_sum 0.0042",
    "go_gc_duration_seconds_count 42",
    "# HELP go_goroutines Number of goroutines that currently exist.",
    "# TYPE go_goroutines gauge",
    "go_goroutines 12",
    "# HELP go_memstats_alloc_bytes Number of bytes allocated and still in use.",
    "# TYPE go_memstats_alloc_bytes gauge",
    "go_memstats_alloc_bytes 1.234e+06",
    "# HELP http_request_duration_seconds Request latency.",
    "# TYPE http_request_duration_seconds histogram",
    'http_request_duration_seconds_bucket{le="0.1"} 3',
    'http_request_duration_seconds_bucket{le="+Inf"} 4',
    "http_request_duration_seconds_sum 0.25",
    "http_request_duration_seconds_count 4",
    "# HELP process_cpu_seconds_total Total user and system CPU time.",
    "# TYPE process_cpu_seconds_total counter",
    "process_cpu_seconds_total 1.5",
)

# An OpenMetrics body: counter family "requests" with _total/_created samples.
OM_BODY = lines(
    "# TYPE requests counter",
    "# UNIT requests requests",
    "# HELP requests Requests served.",
    'requests_total{code="200"} 10',
    'requests_created{code="200"} 1.7e9',
    "# TYPE build info",
    'build_info{version="1.0"} 1',
    "# TYPE temperature_celsius gauge",
    "# UNIT temperature_celsius celsius",
    "temperature_celsius 21.5",
    "# TYPE queue gaugehistogram",
    'queue_bucket{le="+Inf"} 3',
    "queue_gcount 3",
    "queue_gsum 7",
    "# EOF",
)


class PatternTests(SynchronousTestCase):
    """
    L{FamilyFilter.allowed}: fully anchored patterns, allow then deny.
    """

    def test_anchored(self) -> None:
        """
        A pattern must match the whole name: C{go_} matches nothing that is
        longer, C{go_.*} matches C{go_gc_duration_seconds}.
        """
        self.assertTrue(makeFilter(deny=["go_"]).allowed("go_gc_duration_seconds"))
        self.assertFalse(makeFilter(deny=["go_.*"]).allowed("go_gc_duration_seconds"))
        self.assertFalse(makeFilter(allow=["go_"]).allowed("go_gc_duration_seconds"))
        self.assertTrue(makeFilter(allow=["go_.*"]).allowed("go_gc_duration_seconds"))
        # Not a prefix match, nor a suffix match.
        self.assertTrue(makeFilter(deny=["gc"]).allowed("go_gc"))
        self.assertTrue(makeFilter(deny=["go_gc"]).allowed("go_gc_x"))
        self.assertTrue(makeFilter(deny=["gc_x"]).allowed("go_gc_x"))
        # An alternation is anchored as a whole.
        self.assertTrue(makeFilter(deny=["a|b"]).allowed("ab"))
        self.assertFalse(makeFilter(deny=["a|b"]).allowed("b"))

    def test_emptyAllowAllowsAll(self) -> None:
        f = makeFilter()
        self.assertTrue(f.allowed("anything"))
        self.assertEqual(f.filterBody(GO_BODY), GO_BODY)

    def test_denyAfterAllow(self) -> None:
        """
        A name must match an allow pattern and no deny pattern.
        """
        f = makeFilter(allow=["go_.*", "up"], deny=["go_gc_.*"])
        self.assertTrue(f.allowed("go_goroutines"))
        self.assertTrue(f.allowed("up"))
        self.assertFalse(f.allowed("go_gc_duration_seconds"))
        self.assertFalse(f.allowed("process_cpu_seconds_total"))


class FamilyTests(SynchronousTestCase):
    """
    Filtering of whole bodies, by metric family.
    """

    def test_exampleConfig(self) -> None:
        """
        The reference's C{agent-filters.conf}: deny C{go_gc_.*} and
        C{go_memstats_.*} drops those families, their HELP/TYPE lines and
        their summary's C{_sum}/C{_count} samples.
        """
        f = makeFilter(deny=["go_gc_.*", "go_memstats_.*"])
        stream = f.stream()
        out = feedChunks(stream, GO_BODY, [])
        expected = lines(
            "# HELP go_goroutines Number of goroutines that currently exist.",
            "# TYPE go_goroutines gauge",
            "go_goroutines 12",
            "# HELP http_request_duration_seconds Request latency.",
            "# TYPE http_request_duration_seconds histogram",
            'http_request_duration_seconds_bucket{le="0.1"} 3',
            'http_request_duration_seconds_bucket{le="+Inf"} 4',
            "http_request_duration_seconds_sum 0.25",
            "http_request_duration_seconds_count 4",
            "# HELP process_cpu_seconds_total Total user and system CPU time.",
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total 1.5",
        )
        self.assertEqual(out, expected)
        self.assertEqual(stream.linesDropped, 9)
        self.assertEqual(stream.bytesSaved, len(GO_BODY) - len(expected))
        self.assertIsNone(stream.failedOpen)

    def test_histogramInherits(self) -> None:
        """
        A histogram's C{_bucket}, C{_sum} and C{_count} samples go with the
        family, although their own names would pass.
        """
        f = makeFilter(deny=["http_request_duration_seconds"])
        out = f.filterBody(GO_BODY)
        self.assertNotIn(b"http_request", out)
        # Allowing only the family name keeps all of its samples.
        f = makeFilter(allow=["http_request_duration_seconds"])
        self.assertEqual(
            f.filterBody(GO_BODY),
            lines(
                "# HELP http_request_duration_seconds Request latency.",
                "# TYPE http_request_duration_seconds histogram",
                'http_request_duration_seconds_bucket{le="0.1"} 3',
                'http_request_duration_seconds_bucket{le="+Inf"} 4',
                "http_request_duration_seconds_sum 0.25",
                "http_request_duration_seconds_count 4",
            ),
        )

    def test_openMetricsFamilies(self) -> None:
        """
        OpenMetrics counters (C{_total}, C{_created}), info (C{_info}) and
        gauge histograms (C{_gsum}, C{_gcount}) inherit their family's
        verdict, UNIT lines go with the family, and C{# EOF} always stays.
        """
        f = makeFilter(allow=["requests", "build", "queue"])
        self.assertEqual(
            f.filterBody(OM_BODY),
            lines(
                "# TYPE requests counter",
                "# UNIT requests requests",
                "# HELP requests Requests served.",
                'requests_total{code="200"} 10',
                'requests_created{code="200"} 1.7e9',
                "# TYPE build info",
                'build_info{version="1.0"} 1',
                "# TYPE queue gaugehistogram",
                'queue_bucket{le="+Inf"} 3',
                "queue_gcount 3",
                "queue_gsum 7",
                "# EOF",
            ),
        )
        f = makeFilter(deny=[".*"])
        stream = f.stream()
        self.assertEqual(feedChunks(stream, OM_BODY, []), b"# EOF\n")
        self.assertEqual(stream.linesDropped, 14)
        self.assertEqual(stream.bytesSaved, len(OM_BODY) - len(b"# EOF\n"))

    def test_unrelatedSuffixNotInherited(self) -> None:
        """
        Only the listed suffixes inherit: C{foo_bar} after family C{foo} is
        judged by its own name, and so is C{foobar}.
        """
        body = lines("# TYPE foo gauge", "foo 1", "foo_bar 2", "foobar 3", "foo_count 4")
        self.assertEqual(makeFilter(deny=["foo"]).filterBody(body), lines("foo_bar 2", "foobar 3"))
        self.assertEqual(
            makeFilter(allow=["foo"]).filterBody(body),
            lines("# TYPE foo gauge", "foo 1", "foo_count 4"),
        )

    def test_noOpenFamily(self) -> None:
        """
        Samples before any family line are judged by their own name, even
        when a suffix makes them look like part of a family.
        """
        body = lines("up 1", "foo_total 3", "foo 2", "bar_sum 5", "# TYPE bar summary", "bar_sum 1")
        f = makeFilter(deny=["foo", "bar"])
        stream = f.stream()
        self.assertEqual(feedChunks(stream, body, []), lines("up 1", "foo_total 3", "bar_sum 5"))
        self.assertEqual(stream.linesDropped, 3)

    def test_familyByHelpOnly(self) -> None:
        """
        A C{# HELP} line alone opens a family, and the C{# TYPE} line of the
        same name continues it.
        """
        body = lines("# HELP a A.", "a 1", "# HELP b B.", "# TYPE b counter", "b_total 2")
        self.assertEqual(makeFilter(deny=["b"]).filterBody(body), lines("# HELP a A.", "a 1"))
        self.assertEqual(
            makeFilter(deny=["a"]).filterBody(body),
            lines("# HELP b B.", "# TYPE b counter", "b_total 2"),
        )

    def test_commentsAndBlankLines(self) -> None:
        """
        Other comments and blank lines pass even inside a dropped family.
        """
        body = lines("# TYPE a gauge", "# just a comment", "", "   ", "a 1", "#", "# EOF")
        self.assertEqual(
            makeFilter(deny=["a"]).filterBody(body),
            lines("# just a comment", "", "   ", "#", "# EOF"),
        )

    def test_sampleNames(self) -> None:
        """
        A sample's name ends at C{{} or whitespace (space or tab); CRLF line
        endings and leading whitespace are tolerated.
        """
        body = b'a{x="1"} 1\nb\t2\nc 3 1700000000\r\nd{} 4\n  e 5\n'
        self.assertEqual(
            makeFilter(allow=["a", "c", "e"]).filterBody(body),
            b'a{x="1"} 1\nc 3 1700000000\r\n  e 5\n',
        )

    def test_quotedNames(self) -> None:
        """
        Quoted (UTF-8) names, in family lines and in samples, are judged
        unquoted.
        """
        body = lines(
            '# TYPE "my.metric" gauge',
            '{"my.metric", x="1"} 1',
            '# TYPE "other.metric" gauge',
            '{"other.metric"} 2',
            '"loose.metric" 3',
        )
        self.assertEqual(
            makeFilter(deny=[r"my\.metric", r"loose\..*"]).filterBody(body),
            lines('# TYPE "other.metric" gauge', '{"other.metric"} 2'),
        )

    def test_byteIdenticalWhenNothingDropped(self) -> None:
        """
        When nothing is dropped the output is the input, byte for byte,
        including a last line without newline and odd whitespace.
        """
        body = GO_BODY + b"\r\n\t\n# EOF  \nlast_line_without_newline 1"
        f = makeFilter(allow=[".*"], deny=["nope"])
        stream = f.stream()
        self.assertEqual(feedChunks(stream, body, [10, 500]), body)
        self.assertEqual((stream.linesDropped, stream.bytesSaved), (0, 0))

    def test_lastLineWithoutNewline(self) -> None:
        body = b"# TYPE a gauge\na 1\nb 2"
        self.assertEqual(makeFilter(deny=["b"]).filterBody(body), b"# TYPE a gauge\na 1\n")
        stream = makeFilter(deny=["a"]).stream()
        self.assertEqual(feedChunks(stream, body, []), b"b 2")
        self.assertEqual(stream.bytesSaved, len(b"# TYPE a gauge\na 1\n"))

    def test_byteOrderMark(self) -> None:
        """
        A UTF-8 byte order mark before the first line does not hide it.
        """
        body = b"\xef\xbb\xbf# TYPE a gauge\na 1\nb 2\n"
        self.assertEqual(makeFilter(deny=["a"]).filterBody(body), b"b 2\n")

    def test_emptyBody(self) -> None:
        stream = makeFilter(deny=["a"]).stream()
        self.assertEqual(stream.feed(b""), b"")
        self.assertEqual(stream.finish(), b"")
        self.assertEqual(stream.finish(), b"")

    def test_feedAfterFinish(self) -> None:
        stream = makeFilter().stream()
        stream.finish()
        self.assertRaises(RuntimeError, stream.feed, b"a 1\n")


class StreamingTests(SynchronousTestCase):
    """
    The output does not depend on how the body is cut into chunks, and
    lines are forwarded as soon as they are complete.
    """

    def assertChunkingInvariant(self, f: FamilyFilter, body: bytes) -> None:
        stream = f.stream()
        expected = feedChunks(stream, body, [])
        counts = (stream.linesDropped, stream.bytesSaved, stream.failedOpen)
        for cut in range(len(body) + 1):
            stream = f.stream()
            self.assertEqual(feedChunks(stream, body, [cut]), expected, cut)
            self.assertEqual((stream.linesDropped, stream.bytesSaved, stream.failedOpen), counts)
        rng = random.Random(1234)
        for _ in range(200):
            cuts = sorted(rng.sample(range(len(body) + 1), rng.randint(1, min(40, len(body)))))
            stream = f.stream()
            self.assertEqual(feedChunks(stream, body, cuts), expected, cuts)
            self.assertEqual((stream.linesDropped, stream.bytesSaved, stream.failedOpen), counts)
        # One byte at a time.
        stream = f.stream()
        self.assertEqual(feedChunks(stream, body, range(1, len(body))), expected)
        self.assertEqual((stream.linesDropped, stream.bytesSaved, stream.failedOpen), counts)

    def test_everySplitPoint(self) -> None:
        self.assertChunkingInvariant(makeFilter(deny=["go_gc_.*", "go_memstats_.*"]), GO_BODY)
        self.assertChunkingInvariant(makeFilter(allow=["requests", "queue"]), OM_BODY)
        self.assertChunkingInvariant(makeFilter(allow=["go_.*"]), GO_BODY + b"tail 1")

    def test_utf8SplitAcrossChunks(self) -> None:
        """
        A multi-byte character cut between chunks is neither an error nor
        altered.
        """
        body = lines(
            "# HELP temp Température en °C — ☃ 😀",
            "# TYPE temp gauge",
            'temp{city="Zürich"} 3',
            "# HELP drop_me Ünïcödé 😀",
            'drop_me{x="日本"} 1',
        )
        f = makeFilter(deny=["drop_me"])
        stream = f.stream()
        self.assertEqual(
            feedChunks(stream, body, []),
            lines(
                "# HELP temp Température en °C — ☃ 😀",
                "# TYPE temp gauge",
                'temp{city="Zürich"} 3',
            ),
        )
        self.assertIsNone(stream.failedOpen)
        self.assertChunkingInvariant(f, body)

    def test_forwardsCompleteLines(self) -> None:
        """
        L{FilterStream.feed} returns every complete kept line at once and
        holds back only the partial last line.
        """
        stream = makeFilter(deny=["b"]).stream()
        self.assertEqual(stream.feed(b"a 1\nb 2\na"), b"a 1\n")
        self.assertEqual(stream.feed(b"_x 3"), b"")
        self.assertEqual(stream.feed(b"\nb"), b"a_x 3\n")
        self.assertEqual(stream.feed(b"_y 4\n"), b"b_y 4\n")
        self.assertEqual(stream.finish(), b"")
        self.assertEqual((stream.linesDropped, stream.bytesSaved), (1, 4))

    def test_largeBody(self) -> None:
        """
        A large body in 64 KiB chunks: the stream holds at most one line.
        """
        family = lines(
            "# HELP keep_me K.", "# TYPE keep_me counter", 'keep_me_total{i="1"} 1'
        ) + lines("# HELP go_gc_x G.", "# TYPE go_gc_x gauge", "go_gc_x 1")
        body = family * 20000
        f = makeFilter(deny=["go_gc_.*"])
        stream = f.stream()
        cuts = range(65536, len(body), 65536)
        out = feedChunks(stream, body, cuts)
        self.assertEqual(out, family[: family.index(b"# HELP go_gc_x")] * 20000)
        self.assertEqual(stream.linesDropped, 60000)
        self.assertEqual(stream.bytesSaved, len(body) - len(out))


class FailOpenTests(SynchronousTestCase):
    """
    Bodies that cannot be filtered pass through unchanged from the
    offending line on.
    """

    def test_invalidUTF8(self) -> None:
        """
        A body that is not valid UTF-8 passes unchanged, whatever the chunks.
        """
        body = b'# TYPE a gauge\na{x="\xff\xfe"} 1\nb 2\n'
        f = makeFilter(deny=["a", "b"])
        for cut in range(len(body) + 1):
            stream = f.stream()
            out = feedChunks(stream, body, [cut])
            # The family line before the bad one was dropped; the rest is
            # passed unchanged.
            self.assertEqual(out, body[len(b"# TYPE a gauge\n") :], cut)
            self.assertEqual(stream.failedOpen, "body is not valid UTF-8")
            self.assertEqual(stream.linesDropped, 1)

    def test_invalidUTF8FirstLine(self) -> None:
        """
        Output is input exactly when the first line is invalid.
        """
        body = b"\xc3(bad 1\n" + GO_BODY
        f = makeFilter(deny=[".*"])
        for cut in range(len(body) + 1):
            stream = f.stream()
            self.assertEqual(feedChunks(stream, body, [cut]), body, cut)
            self.assertEqual(stream.failedOpen, "body is not valid UTF-8")
            self.assertEqual((stream.linesDropped, stream.bytesSaved), (0, 0))

    def test_truncatedUTF8AtEnd(self) -> None:
        """
        A body ending inside a multi-byte character is invalid: its last line
        passes unchanged.
        """
        body = b"a 1\nb \xe2\x98"
        stream = makeFilter(deny=["a", "b"]).stream()
        self.assertEqual(feedChunks(stream, body, [6]), b"b \xe2\x98")
        self.assertEqual(stream.failedOpen, "body is not valid UTF-8")
        self.assertEqual(stream.linesDropped, 1)

    def test_surrogateIsInvalid(self) -> None:
        body = b"a \xed\xa0\x80\n"
        stream = makeFilter(deny=["a"]).stream()
        self.assertEqual(feedChunks(stream, body, []), body)
        self.assertIsNotNone(stream.failedOpen)

    def test_oversizedLine(self) -> None:
        """
        A line longer than the limit stops filtering from its start on,
        whether it arrives whole or in pieces; nothing is lost or
        duplicated.
        """
        long = b"b " + b"9" * 100 + b"\n"
        body = b"# TYPE a gauge\na 1\n" + long + b"a 2\n"
        f = makeFilter(deny=["a", "b"], maxLine=50)
        for cut in range(len(body) + 1):
            stream = f.stream()
            out = feedChunks(stream, body, [cut])
            self.assertEqual(out, long + b"a 2\n", cut)
            self.assertEqual(stream.failedOpen, "a line is longer than 50 bytes")
            self.assertEqual((stream.linesDropped, stream.bytesSaved), (2, 19))
        self.assertChunkingInvariantOpen(f, body, long + b"a 2\n")

    def assertChunkingInvariantOpen(self, f: FamilyFilter, body: bytes, expected: bytes) -> None:
        rng = random.Random(99)
        for _ in range(200):
            cuts = sorted(rng.sample(range(len(body) + 1), rng.randint(1, 30)))
            self.assertEqual(feedChunks(f.stream(), body, cuts), expected, cuts)

    def test_oversizedHeldLineFailsEarly(self) -> None:
        """
        A partial line is not held beyond the limit: the stream gives up and
        forwards it at once.
        """
        stream = makeFilter(deny=["a"], maxLine=10).stream()
        self.assertEqual(stream.feed(b"a 1\nxxxxx"), b"")
        self.assertIsNone(stream.failedOpen)
        self.assertEqual(stream.feed(b"yyyyyy"), b"xxxxxyyyyyy")
        self.assertIsNotNone(stream.failedOpen)
        self.assertEqual(stream.feed(b"\na 2\n"), b"\na 2\n")
        self.assertEqual(stream.finish(), b"")
        self.assertEqual(stream.linesDropped, 1)

    def test_lineAtLimitFiltered(self) -> None:
        """
        A line exactly as long as the limit is still filtered.
        """
        line = b"a " + b"1" * 8
        stream = makeFilter(deny=["a"], maxLine=10).stream()
        self.assertEqual(feedChunks(stream, line + b"\n" + line, [5, 15]), b"")
        self.assertIsNone(stream.failedOpen)


class AppliesToTests(SynchronousTestCase):
    """
    L{FamilyFilter.appliesTo}: which bodies are filtered.
    """

    def test_textTypes(self) -> None:
        for contentType in [
            "",
            "text/plain",
            "text/plain; version=0.0.4; charset=utf-8",
            "Text/Plain;charset=UTF-8",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "application/openmetrics-text",
            'text/plain; charset="us-ascii"',
        ]:
            self.assertTrue(FamilyFilter.appliesTo(contentType, ""), contentType)
            self.assertTrue(FamilyFilter.appliesTo(contentType, "identity"), contentType)
            self.assertTrue(FamilyFilter.appliesTo(contentType, "Identity "), contentType)

    def test_otherTypes(self) -> None:
        for contentType in [
            "application/json",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily",
            "text/html",
            "text/plain; charset=iso-8859-1",
        ]:
            self.assertFalse(FamilyFilter.appliesTo(contentType, ""), contentType)

    def test_encoded(self) -> None:
        for encoding in ["gzip", "deflate", "br", "zstd", "gzip, identity"]:
            self.assertFalse(FamilyFilter.appliesTo("text/plain", encoding), encoding)
            self.assertFalse(FamilyFilter.appliesTo("", encoding), encoding)

    def test_path(self) -> None:
        self.assertEqual(makeFilter().path, "metrics")
