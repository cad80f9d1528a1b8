"""
Tests for L{promtwist.agent.connection}: readiness observers, over the
in-memory L{Pair} of C{test_link}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from promtwist.agent import connection as agentConnection
from promtwist.agent.connection import Rejected
from promtwist.protocol.session import SessionLost
from promtwist.test.test_link import Pair


class WhenReadyTests(SynchronousTestCase):
    def test_everyCallerGetsTheConnection(self) -> None:
        """
        Each caller has its own Deferred: one whose callback returns
        something else (as C{_ReadyLinks} does) changes nothing for the
        others, before or after the link became ready.
        """
        pair = Pair()
        # Pair asked first, at connect time; ask once more now it is ready.
        pair.ready.addCallback(lambda _: None)
        self.assertIs(self.successResultOf(pair.agent.whenReady()), pair.agent)
        self.assertIs(self.successResultOf(pair.agent.whenReady()), pair.agent)

    def test_waitersBeforeReady(self) -> None:
        self.patch(agentConnection.ProxyConnection, "frame_welcome", lambda self, w: None)
        pair = Pair()
        first, second, third = (pair.agent.whenReady() for _ in range(3))
        first.addCallback(lambda _: None)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertNoResult(third)
        pair.agent._ready.callback(pair.agent)
        self.assertIsNone(self.successResultOf(first))
        self.assertIs(self.successResultOf(third), pair.agent)

    def test_rejectionReachesEveryCaller(self) -> None:
        self.patch(agentConnection, "PROTOCOL_VERSION", 99)
        pair = Pair()
        self.failureResultOf(pair.ready, Rejected)
        for _ in range(2):
            self.failureResultOf(pair.agent.whenReady(), Rejected)

    def test_lostBeforeReady(self) -> None:
        self.patch(agentConnection.ProxyConnection, "frame_welcome", lambda self, w: None)
        pair = Pair()
        waiting = pair.agent.whenReady()
        pair.agent.transport.abortConnection()
        pair.flush()
        for d in (waiting, pair.ready, pair.agent.whenReady()):
            failure = self.failureResultOf(d, SessionLost)
            self.assertIn("link lost before it was ready", str(failure.value))
