"""
Log levels for promtwist's own events.

Every promtwist logger publishes through L{observer}, a filter in front of
Twisted's global log publisher, so C{logLevel} / C{--log_level} can quiet or
open up promtwist without touching what twistd itself logs.
"""

from __future__ import annotations

import sys
import time

from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)

# prometheus-proxy's level names; "off" keeps only critical events, which
# promtwist does not emit.
_LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "off": LogLevel.critical,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def applyLogLevel(level: str) -> None:
    """
    Set the lowest level promtwist logs: one of C{trace}, C{debug}, C{info},
    C{warn}, C{error} or C{off}; C{""} means C{info}.
    """
    _predicate.setLogLevelForNamespace("", _LEVELS.get(level.lower(), LogLevel.info))


def jsonLogger() -> ILogObserver:
    """
    One JSON object per log event on standard output, for log shippers:
    C{twistd --logger=promtwist.logs.jsonLogger promproxy-proxy ...}.

    twistd chooses its log observer before it builds the service, which is
    why this is a twistd option and not a promtwist setting.
    """
    return jsonFileLogObserver(sys.stdout)


# Values a peer chose (paths, names, reasons, header values) are cut to this
# many characters in log lines: enough to recognise, too little to flood.
WIRE_TEXT_LIMIT = 200


def clip(value: str | bytes, limit: int = WIRE_TEXT_LIMIT) -> str:
    """
    A value from the wire fit for one log line: control and other
    non-printable characters escaped, at most C{limit} characters, and the
    original length said when it was cut, so an attacker's megabyte costs
    one short line.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    size = len(text)
    escaped = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit]
    )
    if size <= limit and len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}... ({size} characters)"


def utcTime(seconds: float) -> str:
    """
    A time in seconds since the epoch as logs and debug pages show it:
    ISO 8601 in UTC, to the second (C{2026-12-01T23:44:03Z}).
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class RepeatedWarnings:
    """
    Warnings of one kind, from one source, logged at a bounded rate: the
    first C{burst} of each C{interval}, then only counted; the count is
    logged as one line when the next interval starts or at L{flush}.

    Keyed by a kind the caller names from a fixed set (never by a value the
    peer chose), so the table itself stays small.
    """

    def __init__(
        self, log: Logger, clock: IReactorTime, burst: int = 5, interval: float = 60.0
    ) -> None:
        self._log = log
        self._clock = clock
        self.burst = burst
        self.interval = interval
        self._windows: dict[str, _Window] = {}

    def warn(self, kind: str, format: str, **fields: object) -> None:
        """
        Log C{format} with C{fields} as a warning unless C{kind} is over its
        budget for this interval.
        """
        now = self._clock.seconds()
        window = self._windows.get(kind)
        if window is None or now - window.start >= self.interval:
            if window is not None:
                self._summarise(kind, window)
            window = self._windows[kind] = _Window(now)
        if window.logged < self.burst:
            window.logged += 1
            self._log.warn(format, **fields)
        else:
            window.suppressed += 1

    def flush(self) -> None:
        """
        Log the counts still unreported (the source is going away).
        """
        windows, self._windows = self._windows, {}
        for kind, window in windows.items():
            self._summarise(kind, window)

    def _summarise(self, kind: str, window: _Window) -> None:
        if window.suppressed:
            self._log.warn(
                "{count} more {kind} warning(s) suppressed in {seconds:.0f}s",
                count=window.suppressed,
                kind=kind,
                seconds=self._clock.seconds() - window.start,
            )
