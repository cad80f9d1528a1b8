# -*- test-case-name: promtwist.test.test_agent_paths -*-
"""
File-based path discovery (C{agent.discovery.*}): a HOCON or JSON file with
a top-level C{paths = [ {name?, path, url, labels?} ]}, read again every
C{agent.discovery.reconcileIntervalSecs}.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.config.records import readPathEntries
from promtwist.config.settings import ConfigError, PathConfig
from promtwist.config.sources import fetchURL, parseSource
from promtwist.logs import observer

_log = Logger(observer=observer)


def readDiscoveryFile(path: str, environ: Mapping[str, str]) -> tuple[PathConfig, ...]:
    """
    The paths a discovery file names, in order; a later entry for a path
    replaces an earlier one. Syntax by extension (C{.json} is JSON, anything
    else HOCON, with C{${VAR}} substitutions from C{environ}); C{name}
    defaults to the path, C{labels} to none.

    @raise ConfigError: when the file cannot be read or is malformed,
        including when it has no C{paths} list or an entry has a key
        other than those four.
    """
    tree = parseSource(path, path, environ, fetchURL)
    if "paths" not in tree:
        raise ConfigError(f"{path}: paths is required (a list, possibly empty)")
    return readPathEntries(tree["paths"], path, "paths")


class FileDiscovery(Service):
    """
    Read the discovery file now and every C{interval} seconds, and hand each
    new valid result to C{apply}. A missing or malformed file skips the tick
    with a warning and keeps the last good paths; a valid empty list removes
    every discovered path.

    The file is read on the reactor thread: it is a small local file, read
    once per interval, which costs less than a thread hop.

    @ivar last: the last good paths, L{None} before the first.
    """

    def __init__(
        self,
        path: str,
        interval: float,
        apply: Callable[[tuple[PathConfig, ...]], object],
        clock: IReactorTime,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.interval = interval
        self.apply = apply
        self.clock = clock
        self.environ = os.environ if environ is None else environ
        self.last: tuple[PathConfig, ...] | None = None
        self._lastError = ""
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(self._stopped)

    def _stopped(self, failure: Failure) -> None:
        _log.failure("path discovery stopped unexpectedly", failure)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> None:
        """
        Read the file once; apply what it says if it changed.
        """
        try:
            found = readDiscoveryFile(self.path, self.environ)
        except ConfigError as e:
            # Said once per distinct problem, not every interval.
            if str(e) != self._lastError:
                kept = "no paths" if self.last is None else f"{len(self.last)} path(s)"
                _log.warn(
                    "discovery file skipped, keeping the last good one ({kept}): {error}",
                    kept=kept,
                    error=str(e),
                )
            self._lastError = str(e)
            return
        if self._lastError:
            _log.info("discovery file {path} is readable again", path=self.path)
            self._lastError = ""
        if found != self.last:
            self.last = found
            self.apply(found)
