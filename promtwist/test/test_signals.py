"""
Tests for L{promtwist.signals}.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from promtwist.signals import exitNormally, exitNormallyOnShutdown, onHangup


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.fromThread: list[Callable[[], object]] = []
        self._exitSignal: int | None = None

    def callFromThread(self, f: Callable[[], object]) -> None:
        self.fromThread.append(f)


class HangupTests(SynchronousTestCase):
    def test_handledInTheReactor(self) -> None:
        """
        SIGHUP only schedules the reload in the reactor thread; restoring
        puts the previous handler back.
        """
        reactor = FakeReactor()
        before = signal.getsignal(signal.SIGHUP)
        reloads: list[int] = []

        def reload() -> None:
            reloads.append(1)

        restore = onHangup(reactor, reload)
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        self.assertEqual((reactor.fromThread, reloads), ([reload], []))
        restore()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class ExitNormallyTests(SynchronousTestCase):
    def test_afterTermination(self) -> None:
        for number, expected in [
            (signal.SIGTERM, None),
            (signal.SIGINT, None),
            (signal.SIGHUP, signal.SIGHUP),
            (None, None),
        ]:
            reactor = FakeReactor()
            reactor._exitSignal = number
            exitNormally(reactor)
            self.assertEqual(reactor._exitSignal, expected, number)

    def test_onShutdownAfterTheServicesStopped(self) -> None:
        """
        After SIGTERM, the exit signal is cleared once shutdown's "before"
        phase (where twistd stops the services) has finished, not earlier.
        """
        reactor = _ShutdownReactor()
        draining: Deferred[None] = Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", lambda: draining)
        exitNormallyOnShutdown(reactor)
        reactor._exitSignal = signal.SIGTERM
        reactor.fireSystemEvent("shutdown")
        self.assertEqual(reactor._exitSignal, signal.SIGTERM)
        draining.callback(None)
        self.assertIsNone(reactor._exitSignal)


class _ShutdownReactor(ReactorBase):
    """
    Just enough of a reactor to run its system event triggers.
    """

    def installWaker(self) -> None:
        pass

    def removeAll(self) -> list[IReadDescriptor | IWriteDescriptor]:
        return []
