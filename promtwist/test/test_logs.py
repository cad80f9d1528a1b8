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
