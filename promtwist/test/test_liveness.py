"""
Tests for L{promtwist.protocol.liveness}: one timer for many deadlines.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from promtwist.protocol.liveness import RESOLUTION, DeadlineSweep, resolutionFor


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


class Meddler:
    """
    A watched thing whose handler does something to the sweep first: to
    other watched things, or to itself.
    """

    def __init__(self, sweep: DeadlineSweep, act: Callable[[Meddler], None]) -> None:
        self.sweep = sweep
        self.act = act
        self.visits: list[float] = []

    def deadlinePassed(self, now: float) -> float | None:
        self.visits.append(now)
        self.act(self)
        return now + 1.0


class HandlersMeddleTests(SynchronousTestCase):
    """
    Schedule and cancel are safe from inside a handler, for any item of the
    bucket being swept (the reviewer's C{sweepcancel.py}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sweep = DeadlineSweep(self.clock, resolution=0.25)
        self.others: list[Recorder] = [Recorder(every=1.0) for _ in range(5)]

    def tearDown(self) -> None:
        for w in list(self.sweep._where):
            self.sweep.cancel(w)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def _oneBucket(self, act: Callable[[Meddler], None]) -> Meddler:
        """
        File a meddler and the others under one deadline, the meddler
        visited first whatever the set's order.
        """
        meddler = Meddler(self.sweep, act)
        for w in self.others:
            self.sweep.schedule(w, 1.0)
        self.sweep.schedule(meddler, 0.7)
        return meddler

    def test_cancelOthers(self) -> None:
        """
        A handler that cancels the others of its bucket (whichever of them
        the sweep visits first): they are not visited, nothing fails, and
        the sweep goes on with what is left.
        """
        meddlers: list[Meddler] = []

        def act(m: Meddler) -> None:
            if sum(len(n.visits) for n in meddlers) == 1:
                for other in meddlers:
                    if other is not m:
                        self.sweep.cancel(other)

        meddlers.extend(Meddler(self.sweep, act) for _ in range(6))
        for m in meddlers:
            self.sweep.schedule(m, 1.0)
        with capturedLogs() as events:
            self.clock.advance(1.0)
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        (first,) = [m for m in meddlers if m.visits]
        self.assertEqual(first.visits, [1.0])
        self.assertEqual(len(self.sweep), 1)
        self.clock.pump([1.0] * 5)
        self.assertEqual(len(first.visits), 6)
        self.assertEqual(sum(len(m.visits) for m in meddlers), 6)

    def test_cancelOthersOfALaterBucket(self) -> None:
        """
        Cancelled from an earlier bucket of the same sweep, others are not
        visited; rescheduled, they are visited at their new time only.
        """
        moved, cancelled = self.others[0], self.others[1]

        def act(m: Meddler) -> None:
            if len(m.visits) == 1:
                self.sweep.cancel(cancelled)
                self.sweep.schedule(moved, 3.0)

        self._oneBucket(act)
        self.clock.advance(1.0)
        self.assertEqual(cancelled.visits, [])
        self.assertEqual(moved.visits, [])
        for w in self.others[2:]:
            self.assertEqual(w.visits, [1.0])
        self.clock.pump([1.0] * 2)
        self.assertEqual(moved.visits, [3.0])
        self.assertEqual(cancelled.visits, [])

    def test_rescheduleOthersOfTheBucket(self) -> None:
        """
        A handler that moves every other item of its own bucket: each is
        visited at its new time, once.
        """

        def act(m: Meddler) -> None:
            if len(m.visits) == 1:
                for w in self.others:
                    self.sweep.schedule(w, 2.0)

        meddler = Meddler(self.sweep, act)
        for w in self.others:
            self.sweep.schedule(w, 1.0)
        self.sweep.schedule(meddler, 1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        for w in self.others:
            self.assertIn(2.0, w.visits)
            self.assertLessEqual(len(w.visits), 2)
        self.assertEqual(meddler.visits, [1.0, 2.0])

    def test_cancelItself(self) -> None:
        """
        A handler that cancels itself, then returns a deadline, is filed
        again under that deadline; one that schedules itself keeps its own
        choice, not the one it returns.
        """
        stays = Meddler(self.sweep, lambda m: self.sweep.cancel(m))
        self.sweep.schedule(stays, 1.0)
        chooses = Meddler(self.sweep, lambda m: self.sweep.schedule(m, 5.0))
        self.sweep.schedule(chooses, 1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(stays.visits, [1.0, 2.0])
        self.assertEqual(chooses.visits, [1.0])
        self.clock.advance(3.0)
        self.assertEqual(chooses.visits, [1.0, 5.0])

    def test_failureAfterMeddlingLosesNothingElse(self) -> None:
        """
        A handler that moves others and then raises costs only itself.
        """

        def act(m: Meddler) -> None:
            self.sweep.schedule(self.others[0], 1.5)
            raise RuntimeError("broken")

        meddler = self._oneBucket(act)
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(meddler, self.sweep._where)
        for w in self.others[1:]:
            self.assertEqual(w.visits, [1.0])
        self.clock.advance(0.5)
        self.assertEqual(self.others[0].visits, [1.5])
        self.assertEqual(len(self.sweep), len(self.others))


class ResolutionTests(SynchronousTestCase):
    """
    The resolution is a twentieth of a short heartbeat period.
    """

    def test_resolutionFor(self) -> None:
        self.assertEqual(resolutionFor(5.0), RESOLUTION)
        self.assertEqual(resolutionFor(0.1), 0.1 / 20)

    def test_shortPeriodMetClosely(self) -> None:
        """
        A sweep serving a short period meets deadlines within a twentieth
        of it, what was filed before included.
        """
        clock = Clock()
        sweep = DeadlineSweep(clock)
        early = Recorder()
        sweep.schedule(early, 1.0)
        sweep.serve(0.1)
        self.assertEqual(sweep.resolution, 0.1 / 20)
        w = Recorder()
        sweep.schedule(w, 1.01)
        clock.pump([0.001] * 1100)
        self.assertEqual(len(early.visits), 1)
        self.assertGreaterEqual(early.visits[0], 1.0)
        self.assertLess(early.visits[0], 1.0 + 0.1 / 20 + 1e-6)
        self.assertGreaterEqual(w.visits[0], 1.01 - 1e-9)
        self.assertLess(w.visits[0], 1.01 + 0.1 / 20 + 1e-6)
        # A longer period does not coarsen it again.
        sweep.serve(5.0)
        self.assertEqual(sweep.resolution, 0.1 / 20)
        self.assertEqual(clock.getDelayedCalls(), [])
