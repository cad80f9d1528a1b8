# -*- test-case-name: promtwist.test.test_reloads -*-
"""
A C{SIGHUP} reload's reading of the configuration, off the reactor thread.

Reading the configuration again can block for seconds: an http(s) URL
(C{-c http://config-server/agent.conf}, fetched with C{urllib}), a HOCON
include of one, a file on a slow mount. The reactor must go on serving
scrapes, pings and heartbeats meanwhile, so the reading runs in a thread
of the reactor's pool and only its outcome is handled in the reactor
thread: the settings applied, or the L{ConfigError} that refuses them
reported, and the warnings the loader gave logged (Twisted's log publisher
is not to be called from other threads).

Readings never overlap. One asked for while another is reading runs once
that reading is done, as one more reading however many were asked for
meanwhile: the file may have changed again after the first reading began,
and a second reading sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from promtwist.config.settings import ConfigError
from promtwist.logs import observer

S = TypeVar("S")
T = TypeVar("T")

Load = Callable[[Callable[[str], None]], S]
"""
Reads the settings again, telling its argument each warning; runs in a
thread, so it must touch nothing of the reactor's.

@raise ConfigError: when the settings do not load.
"""


def inThreads(reactor: Any) -> Callable[[Callable[[], T]], Deferred[T]]:
    """
    Run a function in a thread of C{reactor}'s pool, its result delivered
    in the reactor thread; in the calling thread instead with a reactor
    that has no threads (a test's L{Clock<twisted.internet.task.Clock>}).
    """
    if IReactorThreads.providedBy(reactor):
        return lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f)
    return lambda f: maybeDeferred(f)


class Reloads(Generic[S]):
    """
    Reloads of one process's settings: each reading in a thread, each
    outcome handled in the reactor thread, one reading at a time.

    Whatever goes wrong is reported here, the buck stops here: the
    L{Deferred} a reload returns never fails, so the C{SIGHUP} handler,
    which drops it, loses nothing.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        load: Load[S],
        apply: Callable[[S], Deferred[None] | None],
        refuse: Callable[[ConfigError], None],
        warn: Callable[[str], None],
        inThread: Callable[[Callable[[], tuple[S | ConfigError, list[str]]]], Deferred[Any]],
    ) -> None:
        """
        @param load: reads the settings (in a thread).
        @param apply: applies settings that loaded; its L{Deferred}, if
            any, fires once they have taken effect.
        @param refuse: reports settings that did not load.
        @param warn: where each of the loader's warnings goes, in the
            reactor thread.
        @param inThread: runs a reading (L{inThreads}).
        """
        self._load = load
        self._apply = apply
        self._refuse = refuse
        self._warn = warn
        self._inThread = inThread
        self._reading = False
        # Who waits for the reading under way, and who for the next one.
        self._waiting: list[Deferred[None]] = []
        self._next: list[Deferred[None]] = []
        self._stopped = False

    def __call__(self) -> Deferred[None]:
        """
        Reload: read now, or after the reading under way.

        @return: fires once a reading that began after this call has been
            applied (or refused).
        """
        waiter: Deferred[None] = Deferred()
        if self._stopped:
            waiter.callback(None)
        elif self._reading:
            self._next.append(waiter)
        else:
            self._waiting.append(waiter)
            self._start()
        return waiter

    def stop(self) -> None:
        """
        Apply nothing more: a reading still under way is discarded when it
        ends (its thread cannot be stopped), and no next one starts.
        """
        self._stopped = True
        waiting, self._next = self._next, []
        for waiter in waiting:
            waiter.callback(None)

    def _start(self) -> None:
        self._reading = True
        waiting, self._waiting = self._waiting, []

        def answer(_: object) -> None:
            for waiter in waiting:
                waiter.callback(None)

        reading = self._inThread(self._read)
        reading.addCallbacks(self._handle, self._unread)
        reading.addErrback(self._failed, "applying")
        reading.addCallback(answer)

    def _read(self) -> tuple[S | ConfigError, list[str]]:
        # In a thread: the warnings are kept for the reactor to log.
        warnings: list[str] = []
        try:
            return self._load(warnings.append), warnings
        except ConfigError as e:
            return e, warnings

    def _handle(self, read: tuple[S | ConfigError, list[str]]) -> Deferred[None] | None:
        """
        In the reactor thread: log the reading's warnings and apply or
        refuse what it read; then the next reading may start. It does not
        wait for the applying's L{Deferred}: what that waits for (links of
        a revoked identity draining, say) may take a grace period, and the
        settings were applied, synchronously, before it is returned.

        @return: fires once the settings have taken effect.
        """
        try:
            outcome, warnings = read
            if self._stopped:
                return None
            for line in warnings:
                self._warn(line)
            if isinstance(outcome, ConfigError):
                self._refuse(outcome)
                return None
            return self._apply(outcome)
        finally:
            self._readingOver()

    def _unread(self, failure: Failure) -> None:
        self._readingOver()
        self._failed(failure, "reading")

    def _readingOver(self) -> None:
        self._reading = False
        if self._next and not self._stopped:
            self._waiting, self._next = self._next, []
            self._start()

    def _failed(self, failure: Failure, doing: str) -> None:
        self._log.failure(
            "configuration reload failed while {doing} it; the running configuration stays",
            failure,
            doing=doing,
        )
