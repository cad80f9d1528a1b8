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
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.config.records import readPathEntries
from promtwist.config.settings import ConfigError, PathConfig
from promtwist.config.sources import fetchURL, parseSource
from promtwist.logs import observer
from promtwist.reloads import inThreads

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

    The first reading is done at start, as the configuration's, so that the
    agent's first registration holds the discovered paths. Every later one
    is done in a thread of the reactor's pool (L{inThreads}), and what was
    read is handled in the reactor thread: the path may be an http(s) URL,
    or a file on a slow mount, and the reactor goes on serving scrapes
    meanwhile. Readings never overlap: the next interval starts when one is
    done.

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
        self._inThreads = inThreads(clock)

    def startService(self) -> None:
        super().startService()
        self._handle(maybeDeferred(readDiscoveryFile, self.path, self.environ))
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(self._stopped)

    def _stopped(self, failure: Failure) -> None:
        _log.failure("path discovery stopped unexpectedly", failure)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> Deferred[None]:
        """
        Read the file once; apply what it says if it changed.
        """
        return self._handle(self._inThreads(lambda: readDiscoveryFile(self.path, self.environ)))

    def _handle(self, reading: Deferred[tuple[PathConfig, ...]]) -> Deferred[None]:
        return reading.addCallbacks(self._read, self._unreadable)

    def _unreadable(self, failure: Failure) -> None:
        failure.trap(ConfigError)
        if not self.running:
            # Stopped while the file was being read.
            return
        error = str(failure.value)
        # Said once per distinct problem, not every interval.
        if error != self._lastError:
            kept = "no paths" if self.last is None else f"{len(self.last)} path(s)"
            _log.warn(
                "discovery file skipped, keeping the last good one ({kept}): {error}",
                kept=kept,
                error=error,
            )
        self._lastError = error

    def _read(self, found: tuple[PathConfig, ...]) -> None:
        if not self.running:
            return
        if self._lastError:
            _log.info("discovery file {path} is readable again", path=self.path)
            self._lastError = ""
        if found != self.last:
            self.last = found
            self.apply(found)
