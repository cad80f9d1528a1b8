"""
Tests for L{promtwist.protocol.liveness}: one timer for many deadlines.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from promtwist.protocol.liveness import DeadlineSweep


class Recorder:
    """
    A watched thing that records when it was looked at and asks to be
    looked at again after C{every} seconds (never, if L{None}).
    """

    def __init__(self, every: float | None = None, fails: bool = False) -> None:
        self.every = every
        self.fails = fails
        self.visits: list[float] = []

    def deadlinePassed(self, now: float) -> float | None:
        self.visits.append(now)
        if self.fails:
            raise RuntimeError("broken")
        return None if self.every is None else now + self.every


class DeadlineSweepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sweep = DeadlineSweep(self.clock, resolution=0.5)

    def test_oneTimer(self) -> None:
        """
        Many deadlines share one reactor timer, which goes away with the
        last of them.
        """
        watched = [Recorder() for _ in range(100)]
        for i, w in enumerate(watched):
            self.sweep.schedule(w, 1.0 + i * 0.1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for w in watched:
            self.sweep.cancel(w)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_onlyExpiredVisited(self) -> None:
        """
        A sweep visits what is due, never early and at most a resolution
        late, and nothing else.
        """
        soon, later = Recorder(), Recorder()
        self.sweep.schedule(soon, 1.2)
        self.sweep.schedule(later, 10.0)
        self.clock.advance(1.1)
        self.assertEqual(soon.visits, [])
        self.clock.advance(0.4)
        self.assertEqual(soon.visits, [1.5])
        self.assertEqual(later.visits, [])
        self.clock.advance(8.5)
        self.assertEqual(later.visits, [10.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refiled(self) -> None:
        """
        What asks to be looked at again is, each time.
        """
        w = Recorder(every=2.0)
        self.sweep.schedule(w, 2.0)
        self.clock.pump([1.0] * 7)
        self.assertEqual(w.visits, [2.0, 4.0, 6.0])
        self.sweep.cancel(w)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dueAgainNotLooped(self) -> None:
        """
        Something that asks for a deadline already passed is looked at in
        a later sweep, not again in the same one.
        """
        w = Recorder(every=0.0)
        self.sweep.schedule(w, 1.0)
        self.clock.advance(1.0)
        self.assertEqual(w.visits, [1.0])
        self.clock.advance(0.5)
        self.assertEqual(w.visits, [1.0, 1.5])
        self.sweep.cancel(w)

    def test_rescheduleMoves(self) -> None:
        """
        A new deadline replaces the old one.
        """
        w = Recorder()
        self.sweep.schedule(w, 1.0)
        self.sweep.schedule(w, 3.0)
        self.clock.pump([1.0] * 4)
        self.assertEqual(w.visits, [3.0])
        self.assertEqual(len(self.sweep), 0)

    def test_oneFailureCostsOnlyItself(self) -> None:
        """
        A watched thing that raises is logged and dropped; the others in
        the same sweep are looked at.
        """
        broken, fine = Recorder(fails=True), Recorder(every=1.0)
        self.sweep.schedule(broken, 1.0)
        self.sweep.schedule(fine, 1.0)
        with capturedLogs() as events:
            self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any("liveness check failed" in str(e.get("log_format")) for e in events))
        self.assertEqual(fine.visits, [1.0])
        self.assertEqual(len(self.sweep), 1)
        self.sweep.cancel(fine)
