"""
Log levels, for every event of the process.

C{logLevel} / C{--log_level} is the level of the whole process, as
prometheus-proxy's is its root logger's: one predicate decides for
promtwist's own loggers (which publish through L{observer}, so that a debug
line is not even built when it would be dropped) and, through
L{filterTwistdLogs}, for what reaches twistd's log observer, so Twisted's and
twistd's own lines ("starting up", "reactor class", a port "starting on")
follow it too.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.python.log import ILogObserver as ILegacyLogObserver
from twisted.python.reflect import namedAny
from zope.interface import implementer

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
# debugging()'s answers by namespace, until the levels change: Twisted's
# predicate walks a namespace's parents on every ask, and the scrape path
# asks once per scrape.
_debugging: dict[str, bool] = {}


def applyLogLevel(level: str) -> None:
    """
    Set the lowest level promtwist logs: one of C{trace}, C{debug}, C{info},
    C{warn}, C{error} or C{off}; C{""} means C{info}.
    """
    _predicate.setLogLevelForNamespace("", _LEVELS.get(level.lower(), LogLevel.info))
    _debugging.clear()


class _TwistdObserver:
    """
    The log observer twistd starts with, filtered by the process's level
    (L{applyLogLevel}): whichever one twistd would have started, C{--logger}'s
    or its own choice from C{--logfile}, C{--syslog} and C{--nodaemon}.

    twistd takes an observer factory only by name (its C{--logger}, which
    it imports after its plugin's options are parsed), so the process's one
    instance, L{twistdObserver}, is what L{filterTwistdLogs} names.
    """

    def __init__(self) -> None:
        self._chosen: object = None
        self._twistd: Mapping[str, object] = {}

    def choose(self, chosen: object, twistd: Mapping[str, object]) -> None:
        """
        @param chosen: the factory C{--logger} named, or L{None}.
        @param twistd: twistd's options, for its own choice.
        """
        self._chosen, self._twistd = chosen, twistd

    def __call__(self) -> ILogObserver:
        if callable(self._chosen):
            made = self._chosen()
        else:
            # Imported here: only a twistd process has a twistd runner.
            from twisted.scripts._twistd_unix import UnixAppLogger

            made = UnixAppLogger(self._twistd)._getLogObserver()
        if not ILogObserver.providedBy(made):
            # A legacy observer (twistd's syslog one), as twistd wraps it.
            made = LegacyLogObserverWrapper(cast(ILegacyLogObserver, made))
        return FilteringLogObserver(made, [_predicate])


twistdObserver = _TwistdObserver()


def filterTwistdLogs(twistd: MutableMapping[str, object]) -> None:
    """
    Make twistd start its logging with L{twistdObserver}, so that every
    event of the process, twistd's and Twisted's own lines ("starting up",
    "reactor class", a port "starting on") included, is at the process's
    level. Events logged before logging begins are replayed through it.

    A C{--logger} that names nothing importable is left to twistd, which
    refuses it with its own usage error.

    @param twistd: twistd's options, whose plugin's options these are,
        before twistd imports its C{logger} option.
    """
    chosen = twistd.get("logger")
    if isinstance(chosen, str):
        try:
            chosen = namedAny(chosen)
        except Exception:  # noqa: BLE001 - twistd says what is wrong with it
            return
    twistdObserver.choose(chosen, twistd)
    twistd["logger"] = f"{__name__}.twistdObserver"


def debugging(namespace: str = "") -> bool:
    """
    Whether promtwist's debug events (in C{namespace}) are logged: a line
    the scrape path would log per scrape is not even built otherwise.
    """
    answer = _debugging.get(namespace)
    if answer is None:
        answer = _debugging[namespace] = bool(
            _predicate.logLevelForNamespace(namespace) <= LogLevel.debug
        )
    return answer


# Keys of Twisted's own bookkeeping and of legacy (twisted.python.log)
# events, which say again what the flat fields already say.
_BOOKKEEPING = frozenset({"format", "isError", "message", "system", "time", "why", "failure"})
_FLAT = ("time", "level", "logger", "message")


def _jsonSafe(value: object) -> object:
    """
    C{value} as JSON can carry it: numbers, strings, booleans and null as
    they are (a non-finite float as its text), lists and string-keyed
    objects element by element, anything else as its text.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonSafe(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonSafe(item) for key, item in value.items()}
    return str(value)


def _loggerName(event: LogEvent) -> str:
    namespace = str(event.get("log_namespace", ""))
    # Events from twisted.python.log (factories starting, ports closed) all
    # have the namespace "log_legacy"; their system says more.
    if namespace == "log_legacy":
        return str(event.get("log_system") or event.get("system") or "twisted")
    return namespace


def jsonRecord(event: LogEvent) -> dict[str, object]:
    """
    One event as the flat object log shippers expect: C{time} (RFC 3339,
    UTC), C{level}, C{logger} (the namespace), C{message} (rendered), then
    the event's own fields; a field named like one of those four gets a
    trailing C{_}. A failure adds its C{traceback}.
    """
    record: dict[str, object] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "logger": _loggerName(event),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _BOOKKEEPING:
            continue
        record[f"{key}_" if key in _FLAT else key] = _jsonSafe(value)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["traceback"] = failure.getTraceback()
    return record


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON (L{jsonRecord}), flushed, with no
    record separator: what C{jq}, Vector, Fluent Bit and Loki's agents read.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        self._out.write(json.dumps(jsonRecord(event), ensure_ascii=False) + "\n")
        self._out.flush()


def jsonLogger() -> ILogObserver:
    """
    One JSON object per log event on standard output, for log shippers:
    C{twistd --logger=promtwist.logs.jsonLogger promproxy-proxy ...}.

    twistd chooses its log observer before it builds the service, which is
    why this is a twistd option and not a promtwist setting.
    """
    return JSONLinesObserver(sys.stdout)


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


def hostShown(hostName: str) -> str:
    """
    An agent's host name for a log line: clipped, or C{no host name} when
    the agent sent none (an empty field reads as a stray comma).
    """
    return clip(hostName) if hostName else "no host name"


def utcTime(seconds: float) -> str:
    """
    A time in seconds since the epoch as logs and debug pages show it:
    ISO 8601 in UTC, to the second (C{2026-12-01T23:44:03Z}).
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class _Window:
    __slots__ = ("level", "logged", "start", "suppressed")

    def __init__(self, start: float, level: LogLevel) -> None:
        self.start = start
        # The level of its kind's messages, which their count is logged at.
        self.level = level
        self.logged = 0
        self.suppressed = 0


class RepeatedWarnings:
    """
    Warnings (or, with L{info}, news) of one kind, from one source, logged
    at a bounded rate: the first C{burst} of each C{interval}, then only
    counted; the count is
    logged as one line when the next interval starts, at L{flush}, or at
    L{summariseExpired}, which the owner calls from a periodic task so
    that a count is reported even when no warning of its kind follows.

    Keyed by a kind the caller names from a fixed set (never by a value the
    peer chose), so the table itself stays small. A kind's messages are of
    one level, and so is their count's line: an operator who sees a kind's
    messages sees how many were left out, and one who filtered them out
    (C{--log_level warn} for news) is not told of them either.
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
        self._emit(LogLevel.warn, kind, format, fields)

    def info(self, kind: str, format: str, **fields: object) -> None:
        """
        As L{warn}, at info level: news a peer can make happen at will (a
        client registering), which must not flood the log either.
        """
        self._emit(LogLevel.info, kind, format, fields)

    def _emit(self, level: LogLevel, kind: str, format: str, fields: dict[str, object]) -> None:
        now = self._clock.seconds()
        window = self._windows.get(kind)
        if window is None or now - window.start >= self.interval:
            if window is not None:
                self._summarise(kind, window)
            window = self._windows[kind] = _Window(now, level)
        if window.logged < self.burst:
            window.logged += 1
            self._log.emit(level, format, **fields)
        else:
            window.suppressed += 1

    @property
    def pending(self) -> bool:
        """
        Whether an interval is open, whose count L{summariseExpired} will
        report once it ends.
        """
        return bool(self._windows)

    def summariseExpired(self) -> None:
        """
        Log the counts of the intervals that have ended.
        """
        now = self._clock.seconds()
        for kind, window in list(self._windows.items()):
            if now - window.start >= self.interval:
                del self._windows[kind]
                self._summarise(kind, window)

    def flush(self) -> None:
        """
        Log the counts still unreported (the source is going away).
        """
        windows, self._windows = self._windows, {}
        for kind, window in windows.items():
            self._summarise(kind, window)

    def _summarise(self, kind: str, window: _Window) -> None:
        if window.suppressed:
            self._log.emit(
                window.level,
                "{count} more {kind} message(s) suppressed in {seconds:.0f}s",
                count=window.suppressed,
                kind=kind,
                seconds=self._clock.seconds() - window.start,
            )
