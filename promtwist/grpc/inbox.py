# -*- test-case-name: promtwist.test.test_grpc_inbox,promtwist.test.test_grpc_client -*-
"""
The messages a call has received and its reader has not taken: what both
ends' calls (L{promtwist.grpc.call.ServerCall},
L{promtwist.grpc.client.ClientCall}) hold of their stream's input.

The inbox is where a gRPC stream's receive backpressure lives: the window
bytes its messages took are given back to the peer only when the reader
takes the last of them (or they are dropped), so a reader that does not
take stops its peer within one window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from promtwist.grpc.messages import Message

T = TypeVar("T")


class Inbox(Generic[T]):
    """
    Messages received, not yet taken, and the one receive that waits for
    the next of them.
    """

    def __init__(
        self,
        owner: object,
        read: Callable[[Message], Deferred[T]],
        acknowledge: Callable[[int], None],
    ) -> None:
        """
        @param owner: the call, which errors name.
        @param read: what a taken message gives the reader (or why not).
        @param acknowledge: reopens so many bytes of the stream's window.
        """
        self._owner = owner
        self._read = read
        self._acknowledge = acknowledge
        self._messages: deque[Message] = deque()
        self._held = 0
        self._waiting: Deferred[T | None] | None = None
        self._ended = False
        self._outcome: Failure | None = None

    def __bool__(self) -> bool:
        return bool(self._messages)

    def receive(self, refusal: BaseException | None = None) -> Deferred[T | None]:
        """
        The next message; once the input ended, L{None} (after the messages
        that came before) or why it failed. One receive at a time.

        @param refusal: why the reader may take nothing more (its call is
            over), which the receive fails with instead.
        """
        if self._waiting is not None:
            raise RuntimeError(f"{self._owner!r}: receive() while another is waiting")
        if refusal is not None:
            return fail(refusal)
        if self._messages:
            return self._take()
        if self._ended:
            return succeed(None) if self._outcome is None else fail(self._outcome)
        waiting: Deferred[T | None] = Deferred(lambda d: self._stopWaiting(d))
        self._waiting = waiting
        return waiting

    def add(self, messages: list[Message], size: int) -> None:
        """
        The stream's DATA completed C{messages}, which took C{size} bytes of
        its window.
        """
        self._messages.extend(messages)
        self._held += size
        if self._waiting is not None and self._messages:
            waiting, self._waiting = self._waiting, None
            self._take().chainDeferred(waiting)

    def end(self, outcome: Failure | None) -> None:
        """
        No more input: the peer ended it well (L{None}), and what is here
        is still taken; or it failed for C{outcome}, and what is here is
        dropped.
        """
        self._ended = True
        self._outcome = outcome
        if outcome is not None:
            self.drop()
        if self._waiting is not None and not self._messages:
            waiting, self._waiting = self._waiting, None
            if outcome is None:
                waiting.callback(None)
            else:
                waiting.errback(outcome)

    def drop(self) -> None:
        """
        Give back the window of the messages not taken, which nobody will.
        """
        self._messages.clear()
        if self._held:
            self._acknowledge(self._held)
        self._held = 0

    def _take(self) -> Deferred[T | None]:
        message = self._messages.popleft()
        if not self._messages:
            self.drop()
        # What a message gives is never None, which stands for the end.
        return cast("Deferred[T | None]", self._read(message))

    def _stopWaiting(self, waiting: Deferred[T | None]) -> None:
        if self._waiting is waiting:
            self._waiting = None
