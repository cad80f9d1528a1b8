"""
Tests for L{promtwist.grpc.call.ServerCall.reset}: a handler ends its own
call at once, without a status, and the connection goes on.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from hyperframe.frame import WindowUpdateFrame
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc.call import CallCancelled, ServerCall
from promtwist.grpc.limits import Limits
from promtwist.grpc.service import bidirectional
from promtwist.grpc.status import StatusCode
from promtwist.test.grpcpeer import EchoService, RawPeer


class ResetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[ServerCall[bytes, bytes]] = []
        self.outcomes: list[Failure] = []

        def keep(call: ServerCall[bytes, bytes]) -> Deferred[None]:
            self.calls.append(call)
            running: Deferred[None] = Deferred()
            running.addErrback(self.outcomes.append)
            return running

        service = EchoService()
        self.peer = RawPeer(
            [*service.methods(), bidirectional("/test.Hold/chat", keep, bytes, bytes)],
            Limits(maxMessageBytes=95),
        )

    def test_resetDropsQueuedData(self) -> None:
        """
        What the call queued beyond the client's window is dropped and its
        Deferred failed; the stream is reset with CANCEL; the handler is
        cancelled.
        """
        peer = self.peer
        peer.request(1, b"/test.Hold/chat", messages=None)
        [call] = self.calls
        # More than the client's 64 KiB window: the rest waits.
        sent = call.send(b"x" * 70000)
        failures: list[Failure] = []
        sent.addErrback(failures.append)
        peer.read()
        call.reset("the peer stopped reading")
        peer.read()
        self.assertEqual(peer.answer(1).reset, ErrorCodes.CANCEL)
        self.assertIsNone(peer.answer(1).status)
        self.assertTrue(call.cancelled)
        self.assertEqual(len(failures), 1)
        failures[0].trap(CallCancelled)
        [outcome] = self.outcomes
        outcome.trap(CancelledError)
        # Opening the window sends nothing more on it.
        before = len(peer.answer(1).data)
        peer.send(WindowUpdateFrame(1, 100000), WindowUpdateFrame(0, 100000))
        self.assertEqual(len(peer.answer(1).data), before)

    def test_otherCallsGoOn(self) -> None:
        """
        The connection and its other calls are untouched.
        """
        peer = self.peer
        peer.request(1, b"/test.Hold/chat", messages=None)
        self.calls[0].reset("gave up")
        peer.request(3)
        self.assertEqual(peer.answer(3).status, StatusCode.OK)
        self.assertIsNone(peer.goAway)

    def test_resetTwice(self) -> None:
        """
        A second reset, or one after the stream ended, does nothing.
        """
        peer = self.peer
        peer.request(1, b"/test.Hold/chat", messages=None)
        call = self.calls[0]
        call.reset("once")
        peer.read()
        frames = len(peer.frames)
        call.reset("twice")
        peer.read()
        self.assertEqual(len(peer.frames), frames)
