"""
Tests for L{promtwist.logs}.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from promtwist import logs


class LogLevelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(logs.applyLogLevel, "")

    def emit(self) -> list[str]:
        log = Logger(namespace="promtwist.test", observer=logs.observer)
        with capturedLogs() as events:
            log.debug("d")
            log.info("i")
            log.warn("w")
            log.error("e")
        return [str(event["log_format"]) for event in events]

    def test_levels(self) -> None:
        """
        prometheus-proxy's level names choose the lowest level logged; the
        default is info.
        """
        for level, expected in [
            ("", ["i", "w", "e"]),
            ("debug", ["d", "i", "w", "e"]),
            ("trace", ["d", "i", "w", "e"]),
            ("WARN", ["w", "e"]),
            ("error", ["e"]),
            ("off", []),
        ]:
            logs.applyLogLevel(level)
            self.assertEqual(self.emit(), expected, level)


class TwistdObserverTests(SynchronousTestCase):
    """
    L{logs.filterTwistdLogs}: twistd's observer, whichever it is, passes
    only events at the process's level.
    """

    def setUp(self) -> None:
        self.addCleanup(logs.applyLogLevel, "")
        self.addCleanup(logs.twistdObserver.choose, None, {})

    def test_loggerOptionFiltered(self) -> None:
        """
        A C{--logger} name is replaced by L{logs.twistdObserver}, which
        makes the named observer and filters what reaches it by the level,
        events of any namespace (Twisted's own too).
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        twistd: dict[str, object] = {"logger": "promtwist.logs.jsonLogger"}
        logs.filterTwistdLogs(twistd)
        self.assertEqual(twistd["logger"], "promtwist.logs.twistdObserver")
        observer = logs.twistdObserver()
        logs.applyLogLevel("warn")
        log = Logger(namespace="twisted.scripts._twistd_unix.UnixAppLogger", observer=observer)
        log.info("starting up.")
        log.warn("a warning")
        (line,) = out.getvalue().splitlines()
        self.assertEqual(json.loads(line)["message"], "a warning")

    def test_twistdsOwnChoice(self) -> None:
        """
        Without C{--logger}, the observer is the one twistd would make from
        its options: here, in the foreground, text on standard output.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        twistd: dict[str, object] = {"logger": None, "nodaemon": True, "logfile": None}
        logs.filterTwistdLogs(twistd)
        observer = logs.twistdObserver()
        logs.applyLogLevel("error")
        log = Logger(namespace="twisted.application.app", observer=observer)
        log.warn("dropped")
        log.error("kept")
        self.assertNotIn("dropped", out.getvalue())
        self.assertIn("kept", out.getvalue())

    def test_unimportableLeftToTwistd(self) -> None:
        """
        A C{--logger} naming nothing importable is left as it is, for
        twistd's own usage error.
        """
        twistd: dict[str, object] = {"logger": "no.such.module.observer"}
        logs.filterTwistdLogs(twistd)
        self.assertEqual(twistd["logger"], "no.such.module.observer")


class JSONLoggerTests(SynchronousTestCase):
    """
    What log shippers expect: one flat JSON object per line.
    """

    def records(self, log: Callable[[Logger], None]) -> list[dict[str, Any]]:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        log(Logger(namespace="promtwist.test", observer=logs.jsonLogger()))
        text = out.getvalue()
        self.assertNotIn("\x1e", text)
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_oneFlatObjectPerLine(self) -> None:
        (record,) = self.records(lambda log: log.warn("scraped {path}", path="/app"))
        self.assertEqual(
            {k: v for k, v in record.items() if k != "time"},
            {
                "level": "warn",
                "logger": "promtwist.test",
                "message": "scraped /app",
                "path": "/app",
            },
        )

    def test_time(self) -> None:
        """
        C{time} is RFC 3339, in UTC, from the event's own time.
        """
        event = {"log_time": 1764547200.25, "log_format": "x", "log_level": LogLevel.info}
        self.assertEqual(logs.jsonRecord(event)["time"], "2025-12-01T00:00:00.250Z")

    def test_fieldsMadeSafe(self) -> None:
        """
        Fields JSON cannot carry are written as text; a field named like a
        flat one keeps its value under a trailing C{_}.
        """
        (record,) = self.records(
            lambda log: log.info(
                "{logger}",
                logger="high",
                ratio=float("nan"),
                where=("a", 1),
                obj=object(),
                nested={1: {"b": b"x"}},
            )
        )
        self.assertEqual(record["message"], "high")
        self.assertEqual(record["logger"], "promtwist.test")
        self.assertEqual(record["logger_"], "high")
        self.assertEqual(record["ratio"], "nan")
        self.assertEqual(record["where"], ["a", 1])
        self.assertTrue(record["obj"].startswith("<object object"))
        self.assertEqual(record["nested"], {"1": {"b": "b'x'"}})

    def test_failure(self) -> None:
        def log(logger: Logger) -> None:
            try:
                raise ZeroDivisionError()
            except ZeroDivisionError:
                logger.failure("it broke")

        (record,) = self.records(log)
        self.assertEqual((record["level"], record["message"]), ("critical", "it broke"))
        self.assertIn("ZeroDivisionError", record["traceback"])


class HostShownTests(SynchronousTestCase):
    def test_hostShown(self) -> None:
        """
        A host name is clipped as any wire value; none is said in words,
        not left as an empty field.
        """
        self.assertEqual(logs.hostShown("node-1"), "node-1")
        self.assertEqual(logs.hostShown("a\nb"), logs.clip("a\nb"))
        self.assertEqual(logs.hostShown(""), "no host name")


class ClipTests(SynchronousTestCase):
    def test_shortKept(self) -> None:
        self.assertEqual(logs.clip("app1_metrics"), "app1_metrics")

    def test_longCutWithLength(self) -> None:
        clipped = logs.clip("x" * 1_000_000, limit=50)
        self.assertEqual(clipped, "x" * 50 + "... (1000000 characters)")

    def test_controlCharactersEscaped(self) -> None:
        self.assertEqual(logs.clip("a\nb\x1b[31m"), "a\\nb\\x1b[31m")

    def test_escapingCannotExceedTheLimit(self) -> None:
        clipped = logs.clip("\x00" * 100, limit=20)
        self.assertTrue(clipped.startswith("\\x00" * 5 + "..."), clipped)
        self.assertIn("(100 characters)", clipped)

    def test_bytes(self) -> None:
        self.assertEqual(logs.clip(b"caf\xe9"), "caf\xe9")


class RepeatedWarningsTests(SynchronousTestCase):
    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.log = Logger(namespace="promtwist.test", observer=logs.observer)
        self.warnings = logs.RepeatedWarnings(self.log, self.clock, burst=3, interval=60)

    def test_burstThenCounted(self) -> None:
        with capturedLogs() as events:
            for i in range(1000):
                self.warnings.warn("bad_path", "bad path {n}", n=i)
        self.assertEqual([e["n"] for e in events], [0, 1, 2])
        with capturedLogs() as events:
            self.clock.advance(60)
            self.warnings.warn("bad_path", "bad path {n}", n=1000)
        self.assertEqual(len(events), 2)
        self.assertEqual(events[0]["count"], 997)
        self.assertEqual(events[1]["n"], 1000)

    def test_kindsSeparate(self) -> None:
        with capturedLogs() as events:
            for _ in range(5):
                self.warnings.warn("a", "a")
                self.warnings.warn("b", "b")
        self.assertEqual(len(events), 6)

    def test_countAtItsKindsLevel(self) -> None:
        """
        A kind's count is logged at the level of its messages: news (info)
        counted at info, warnings at warn.
        """
        for _ in range(5):
            self.warnings.info("news", "news")
            self.warnings.warn("trouble", "trouble")
        with capturedLogs() as events:
            self.clock.advance(60)
            self.warnings.summariseExpired()
        levels = {e["kind"]: e["log_level"] for e in events}
        self.assertEqual(levels, {"news": LogLevel.info, "trouble": LogLevel.warn})

    def test_flushReportsSuppressed(self) -> None:
        for _ in range(10):
            self.warnings.warn("a", "a")
        with capturedLogs() as events:
            self.warnings.flush()
            self.warnings.flush()
        self.assertEqual([e["count"] for e in events], [7])

    def test_summariseExpired(self) -> None:
        """
        A count is reported once its interval ended, even if no warning of
        its kind follows; an interval still running is left alone.
        """
        for _ in range(10):
            self.warnings.warn("a", "a")
        with capturedLogs() as events:
            self.clock.advance(30)
            self.warnings.summariseExpired()
            self.clock.advance(30)
            self.warnings.summariseExpired()
            self.warnings.summariseExpired()
        self.assertEqual([e["count"] for e in events], [7])


class DebuggingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(logs.applyLogLevel, "")

    def test_followsTheLevel(self) -> None:
        self.assertFalse(logs.debugging("promtwist.proxy.server.ProxyService"))
        logs.applyLogLevel("debug")
        self.assertTrue(logs.debugging("promtwist.proxy.server.ProxyService"))
        logs.applyLogLevel("warn")
        self.assertFalse(logs.debugging())
        # The answers are remembered until the level changes.
        self.assertFalse(logs.debugging("promtwist.proxy.server.ProxyService"))
