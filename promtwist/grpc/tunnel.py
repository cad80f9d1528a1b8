# -*- test-case-name: promtwist.test.test_grpc_tunnel,promtwist.test.test_grpc_link -*-
"""
A byte stream carried by one gRPC call, as a transport: what promtwist's
own agent link (L{promtwist.protocol}: frames, heartbeats, credits, its
state machines and limits) runs on when what lies between the agent and
the proxy passes only gRPC (nginx C{grpc_pass}, an HTTP/2 load balancer).

Each gRPC message is a run of the stream's bytes, in order: message
boundaries mean nothing to the link, which frames its own bytes. Both ends
use L{CallTransport}, over a L{promtwist.grpc.call.ServerCall} on the
proxy and a L{promtwist.grpc.client.ClientCall} on the agent.

Backpressure is the call's flow control, both ways:
  - out: the protocol is the transport's producer, paused once more than
    L{BUFFER_BYTES} written are not yet taken by the peer's HTTP/2 windows
    and resumed when all are, as a TCP transport does with its buffer;
  - in: while the protocol has paused the transport, its next message is
    not taken from the call, whose window then stays shut, which stops the
    peer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Protocol as Typing
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from promtwist.sendnow import PENDING
from promtwist.tls import usesTLS

#: The method that carries the link.
LINK_METHOD = "/promtwist.Link/Connect"

#: The largest run of bytes one message carries: a frame of the link's
#: (up to its 16 MiB maximum) crosses in several, each well within any
#: gRPC peer's message limit (4 MiB by default).
RUN_BYTES = 64 * 1024

#: What may be written and not yet taken before the protocol is paused:
#: a TCP transport's buffer.
BUFFER_BYTES = 64 * 1024


class CallEnded(ConnectionDone):
    """
    The call carrying the link ended well, as a TCP connection closes
    cleanly: the peer ended its half (a server with status C{OK}), or this
    end closed the link and all it wrote had gone.
    """


class MessageStream(Typing):
    """
    What L{CallTransport} needs of a call: both its halves.
    """

    def send(self, message: bytes) -> Deferred[None]:
        """
        Send one message; fires when the peer's windows took it.
        """

    def receive(self) -> Deferred[bytes | None]:
        """
        The next message, or L{None} when the peer ended its half.
        """


class _State(enum.Enum):
    """
    C{OPEN}; C{CLOSING} once the protocol asked to close, until what it
    wrote has gone; C{ENDED} once the call is over for the protocol, which
    hears of it on the next turn of the reactor, as from a TCP transport
    (a protocol that closes its transport does not expect its
    C{connectionLost} inside that call).
    """

    OPEN = "open"
    CLOSING = "closing"
    ENDED = "ended"


@implementer(ITCPTransport, IConsumer, IPushProducer)
class CallTransport:
    """
    A transport whose bytes travel in the messages of one gRPC call.

    The addresses and, under TLS, the peer's certificate are the HTTP/2
    connection's (the transport C{connection}), so what the link checks of
    its peer (its source address, its client certificate) it checks as on
    a connection of its own. (Behind a front end that is the front end's
    connection: see C{docs/grpc-link.md}.)
    """

    def __init__(
        self,
        call: MessageStream,
        connection: ITCPTransport,
        finish: Callable[[], None],
        reset: Callable[[str], None],
        clock: IReactorTime,
    ) -> None:
        """
        @param finish: ends the call well, once all written has gone (the
            proxy's C{OK}, the agent's half-close).
        @param reset: ends the call at once, for the reason given.
        """
        self._call = call
        self._connection = connection
        self._finish = finish
        self._reset = reset
        self._clock = clock
        self._state = _State.OPEN
        self._protocol: IProtocol | None = None
        self._producer: IPushProducer | None = None
        self._producerPaused = False
        self._unsent = 0
        self._readingPaused = False
        self._receiving: Deferred[bytes | None] | None = None
        if usesTLS(connection):
            alsoProvides(self, ISSLTransport)

    def __repr__(self) -> str:
        return f"<CallTransport over {self._call!r} {self._state.value}>"

    @property
    def disconnecting(self) -> bool:
        return self._state is not _State.OPEN

    def start(self, protocol: IProtocol) -> None:
        """
        Connect C{protocol} to the call and start reading.
        """
        self._protocol = protocol
        protocol.makeConnection(self)
        self._receiveNext()

    def callEnded(self, reason: Failure) -> None:
        """
        The call went away from under the protocol (the peer reset it, its
        connection was lost, it failed): the protocol's connection is lost.
        """
        self._end(reason)

    # -- ITransport ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or not data:
            return
        view = memoryview(data)
        for start in range(0, len(view), RUN_BYTES):
            run = view[start : start + RUN_BYTES].tobytes()
            self._unsent += len(run)
            sending = maybeDeferred(self._call.send, run)
            sending.addCallbacks(self._sent, self._notSent, (len(run),), errbackArgs=(len(run),))
        # The call wrote to the connection's transport: a marked
        # dataReceived sends it when it returns (promtwist.sendnow).
        PENDING.wrote(self._connection)
        if self._unsent > BUFFER_BYTES and self._producer is not None:
            if not self._producerPaused:
                self._producerPaused = True
                self._producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        End the call well once what was written has gone.
        """
        if self._state is _State.OPEN:
            self._state = _State.CLOSING
            if not self._unsent:
                self._finished()

    def abortConnection(self) -> None:
        """
        End the call at once: what was not sent is dropped.
        """
        if self._state is not _State.ENDED:
            self._reset("the link was aborted")
            self._end(Failure(ConnectionLost("the link was aborted")))

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self._connection.getPeer()

    def getHost(self) -> IPv4Address | IPv6Address:
        return self._connection.getHost()

    # -- ITCPTransport's options: the HTTP/2 connection's own ------------------

    def setTcpNoDelay(self, enabled: bool) -> None:
        # The HTTP/2 connection's, which the link shares with other calls
        # (on the proxy) or owns (on the agent): small frames should leave
        # at once on both.
        self._connection.setTcpNoDelay(enabled)

    def getTcpNoDelay(self) -> bool:
        return bool(self._connection.getTcpNoDelay())

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._connection.setTcpKeepAlive(enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(self._connection.getTcpKeepAlive())

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    # -- ISSLTransport, provided under TLS ---------------------------------------

    def getPeerCertificate(self) -> object:
        return cast(ISSLTransport, self._connection).getPeerCertificate()

    # -- IConsumer -------------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        # The link is a streaming producer, as on TCP.
        self._producer = cast(IPushProducer, producer)
        self._producerPaused = False

    def unregisterProducer(self) -> None:
        self._producer = None

    # -- IPushProducer: the protocol's wish to read, or not --------------------

    def pauseProducing(self) -> None:
        self._readingPaused = True

    def resumeProducing(self) -> None:
        if self._readingPaused:
            self._readingPaused = False
            self._receiveNext()

    def stopProducing(self) -> None:
        self._readingPaused = True

    # -- Inside ----------------------------------------------------------------

    def _receiveNext(self) -> None:
        if self._state is _State.ENDED or self._readingPaused or self._receiving is not None:
            return
        receiving = self._call.receive()
        self._receiving = receiving
        receiving.addCallbacks(self._received, self._receiveFailed)

    def _received(self, data: bytes | None) -> None:
        self._receiving = None
        if self._state is _State.ENDED:
            return
        if data is None:
            # The peer ended its half: as a TCP peer's close, the end.
            self._finished()
            return
        assert self._protocol is not None
        self._protocol.dataReceived(data)
        self._receiveNext()

    def _receiveFailed(self, failure: Failure) -> None:
        self._receiving = None
        self._end(failure)

    def _sent(self, _: None, size: int) -> None:
        self._unsent -= size
        if self._unsent:
            return
        if self._state is _State.CLOSING:
            self._finished()
        elif self._producerPaused and self._producer is not None:
            self._producerPaused = False
            self._producer.resumeProducing()

    def _notSent(self, failure: Failure, size: int) -> None:
        # The call ended under the send: the protocol hears why from the
        # call's end (callEnded or a failed receive).
        self._unsent -= size

    def _finished(self) -> None:
        """
        All written has gone and the link closes, or the peer ended its
        half: the call ends well, and so does the protocol's connection.
        """
        if self._state is not _State.ENDED:
            self._finish()
            self._end(Failure(CallEnded("the gRPC call ended")))

    def _end(self, reason: Failure) -> None:
        """
        The call is over for the protocol: nothing more is read or sent,
        and the protocol's connection is lost, for C{reason}, next turn.
        """
        if self._state is _State.ENDED:
            return
        self._state = _State.ENDED
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            receiving.cancel()
        self._clock.callLater(0, self._connectionLost, reason)

    def _connectionLost(self, reason: Failure) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        if self._protocol is not None:
            self._protocol.connectionLost(reason)
