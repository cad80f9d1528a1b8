"""
Tests for L{promtwist.logs}.
"""

from __future__ import annotations

import io
import json
import sys

from twisted.logger import Logger, capturedLogs
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


class JSONLoggerTests(SynchronousTestCase):
    def test_oneObjectPerEvent(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        Logger(observer=logs.jsonLogger()).info("scraped {path}", path="/app")
        (record,) = [line.strip("\x1e") for line in out.getvalue().splitlines() if line]
        event = json.loads(record)
        self.assertEqual((event["path"], event["log_format"]), ("/app", "scraped {path}"))


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

    def test_flushReportsSuppressed(self) -> None:
        for _ in range(10):
            self.warnings.warn("a", "a")
        with capturedLogs() as events:
            self.warnings.flush()
            self.warnings.flush()
        self.assertEqual([e["count"] for e in events], [7])
