# -*- test-case-name: promtwist.test.test_sendnow -*-
"""
Writes that leave when the code that made them returns.

A Twisted TCP transport only buffers a write: the bytes go out when the
reactor next polls the socket as writable, after it has handled every other
event of the current iteration. On a scrape that crosses four sockets
(Prometheus, the link, the target and back), each hop then waits for the
rest of its process's iteration, and the proxy and the agent fall into
lockstep: each sends one batch per iteration and waits for the other's.
TLS adds its own wait, since Twisted's TLS transport holds small writes
for a C{callLater(0)}.

A protocol on a hot path marks its C{dataReceived} with L{sendsOnReturn},
and every writer of promtwist's calls L{PendingSends.wrote} after writing.
When the outermost marked C{dataReceived} returns, each transport written
to meanwhile sends what it holds, at once: several frames produced by one
read still leave in one system call, and nothing waits for the next
iteration. Writes made anywhere else (a timer, a Deferred fired by
something unmarked) keep Twisted's usual timing.

A writer whose answer is usually one write (the scrape port's) writes with
L{PendingSends.write} instead: in a marked call, the first write to a TCP
socket with nothing buffered goes to the socket at once, skipping the
buffer's bookkeeping, which costs more than the send itself (the socket
registered for writing, then taken off again once the buffer is empty).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection

_P = ParamSpec("_P")
_S = TypeVar("_S")


class PendingSends:
    """
    The transports written to during the current marked call, in the order
    they were first written to.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._written: dict[ITransport, None] = {}

    def wrote(self, transport: ITransport) -> None:
        """
        C{transport} was just written to: send what it holds when the
        outermost marked call returns. Outside a marked call, nothing.
        """
        if self._depth:
            self._written[transport] = None

    def write(self, transport: ITransport, data: bytes) -> None:
        """
        Write C{data} to C{transport}. In a marked call, the first write to
        a plain TCP transport that holds nothing unsent goes to its socket
        now, as far as the socket takes it (L{sendAtOnce}); every other
        write is buffered and L{wrote}, so that what one call writes after
        its first write still leaves in one send when it returns, and
        nothing overtakes bytes already buffered.
        """
        if self._depth and transport not in self._written:
            self._written[transport] = None
            data = sendAtOnce(transport, data)
            if not data:
                return
        transport.write(data)
        self.wrote(transport)

    def enter(self) -> None:
        self._depth += 1

    def leave(self) -> None:
        """
        Leave a marked call; the outermost sends what was written.
        """
        self._depth -= 1
        if self._depth or not self._written:
            return
        written, self._written = self._written, {}
        # Whatever sending triggers (a producer resumed by an emptied
        # buffer writes more) keeps Twisted's usual timing: one round only.
        self._depth += 1
        try:
            for transport in written:
                sendBuffered(transport)
        finally:
            self._depth -= 1
            self._written.clear()


PENDING = PendingSends()


def sendsOnReturn(
    method: Callable[Concatenate[_S, _P], None],
) -> Callable[Concatenate[_S, _P], None]:
    """
    Decorate a protocol's C{dataReceived} (or any entry point the reactor
    calls) so that what it writes leaves when it returns.
    """

    @functools.wraps(method)
    def sending(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        PENDING.enter()
        try:
            method(self, *args, **kwargs)
        finally:
            PENDING.leave()

    return sending


def sendBuffered(transport: ITransport) -> None:
    """
    Send now what C{transport} holds, as far as the socket takes it.

    A TLS transport first hands its held writes to the TLS connection, which
    encrypts them into the TCP transport beneath. The TCP transport then
    does what the reactor would have done when the socket polled writable
    (L{FileDescriptor.doWrite}): what the socket does not take stays
    buffered, and the reactor sends it as usual. A transport that is
    closing is left to the reactor, which owns the close; so is a send that
    fails: the transport is still registered for writing, so the reactor
    meets the same error and closes the connection as it always does.
    Anything that is not a socket (a test's transport) has nothing to send.
    """
    # BufferingTLSTransport's aggregator has no public flush; it is the
    # one used by Twisted's TLS endpoints (TLSMemoryBIOFactory).
    socket: object = transport
    aggregator = getattr(transport, "_aggregator", None)
    if aggregator is not None:
        aggregator.flush()
        socket = getattr(transport, "transport", None)
    if isinstance(socket, FileDescriptor) and _open(socket) and _holds(socket):
        socket.doWrite()


def _open(socket: FileDescriptor) -> bool:
    """
    Whether C{socket} may still be written to by us: not closing (the
    reactor owns a close).
    """
    return bool(socket.connected and not socket.disconnecting and not socket._writeDisconnecting)


def _holds(socket: FileDescriptor) -> bool:
    """
    Whether C{socket} holds bytes not yet sent.
    """
    return bool(socket._tempDataLen or len(socket.dataBuffer) > socket.offset)


def sendAtOnce(transport: ITransport, data: bytes) -> bytes:
    """
    Send C{data} on C{transport}'s socket now, if nothing waits to be sent
    before it and the transport is a plain TCP connection that is open
    (L{sendBuffered}'s conditions, and not aborted: an aborted connection
    sends nothing more); what the socket did not take is returned, for the
    transport's buffer. A failed send is left to the transport, which meets
    the same error when the reactor tries and closes the connection as it
    always does.
    """
    if not isinstance(transport, Connection) or transport.TLS:
        return data
    if not _open(transport) or transport._aborting or _holds(transport):
        return data
    sent = transport.writeSomeData(data)
    if not isinstance(sent, int):
        return data
    return data[sent:]
