"""
L{promtwist.grpc.inbox}: what a call holds of its stream's input, and when
it gives the stream's window back.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from promtwist.grpc.inbox import Inbox
from promtwist.grpc.messages import Message
from promtwist.grpc.status import GrpcError, StatusCode


def _message(body: bytes) -> Message:
    return Message(body, compressed=False, limit=1024)


class InboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.acknowledged: list[int] = []
        self.inbox: Inbox[bytes] = Inbox("the call", self._read, self.acknowledged.append)

    def _read(self, message: Message) -> Deferred[bytes]:
        if message.body == b"bad":
            return fail(GrpcError(StatusCode.INTERNAL, "bad message"))
        return succeed(message.body)

    def test_windowBackWithTheLast(self) -> None:
        """
        The window the messages took is given back, whole, only when the
        last of them is taken: a reader that does not take stops its peer.
        """
        self.inbox.add([_message(b"one"), _message(b"two")], 16)
        self.assertEqual(self.successResultOf(self.inbox.receive()), b"one")
        self.assertEqual(self.acknowledged, [])
        self.assertEqual(self.successResultOf(self.inbox.receive()), b"two")
        self.assertEqual(self.acknowledged, [16])

    def test_waiting(self) -> None:
        """
        A receive before any message waits for the next one.
        """
        waiting = self.inbox.receive()
        self.assertNoResult(waiting)
        self.inbox.add([_message(b"one")], 8)
        self.assertEqual(self.successResultOf(waiting), b"one")
        self.assertEqual(self.acknowledged, [8])

    def test_oneReceiveAtATime(self) -> None:
        """
        A second receive while one waits is the reader's bug, said at once.
        """
        self.inbox.receive()
        error = self.assertRaises(RuntimeError, self.inbox.receive)
        self.assertIn("the call", str(error))

    def test_cancelledReceive(self) -> None:
        """
        A receive cancelled by its reader no longer waits: the next message
        goes to the next receive.
        """
        waiting = self.inbox.receive()
        waiting.cancel()
        self.failureResultOf(waiting)
        self.inbox.add([_message(b"one")], 8)
        self.assertEqual(self.successResultOf(self.inbox.receive()), b"one")

    def test_endedWell(self) -> None:
        """
        Input that ended well still gives what came before it, then
        L{None}, to a receive that waits too.
        """
        self.inbox.add([_message(b"one")], 8)
        self.inbox.end(None)
        self.assertEqual(self.successResultOf(self.inbox.receive()), b"one")
        self.assertIsNone(self.successResultOf(self.inbox.receive()))
        other: Inbox[bytes] = Inbox("other", self._read, self.acknowledged.append)
        waiting = other.receive()
        other.end(None)
        self.assertIsNone(self.successResultOf(waiting))

    def test_failedDrops(self) -> None:
        """
        Input that failed drops what was not taken, gives its window back,
        and fails the receive that waits and every one after.
        """
        self.inbox.add([_message(b"one")], 8)
        self.inbox.end(Failure(GrpcError(StatusCode.CANCELLED, "gone")))
        self.assertEqual(self.acknowledged, [8])
        self.failureResultOf(self.inbox.receive(), GrpcError)
        other: Inbox[bytes] = Inbox("other", self._read, self.acknowledged.append)
        waiting = other.receive()
        other.end(Failure(GrpcError(StatusCode.CANCELLED, "gone")))
        self.failureResultOf(waiting, GrpcError)

    def test_refusal(self) -> None:
        """
        A receive the owner refuses fails with its reason, messages or not.
        """
        self.inbox.add([_message(b"one")], 8)
        refused = self.inbox.receive(GrpcError(StatusCode.CANCELLED, "the call is over"))
        self.assertEqual(self.failureResultOf(refused, GrpcError).value.message, "the call is over")

    def test_badMessage(self) -> None:
        """
        A message the reader cannot read fails its receive, and its window
        is given back all the same.
        """
        self.inbox.add([_message(b"bad")], 8)
        self.failureResultOf(self.inbox.receive(), GrpcError)
        self.assertEqual(self.acknowledged, [8])
