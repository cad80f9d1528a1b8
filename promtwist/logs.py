"""
Log levels for promtwist's own events.

Every promtwist logger publishes through L{observer}, a filter in front of
Twisted's global log publisher, so C{logLevel} / C{--log_level} can quiet or
open up promtwist without touching what twistd itself logs.
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
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
