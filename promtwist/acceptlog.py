# -*- test-case-name: promtwist.test.test_listen -*-
"""
What a listening port's accept loop logs when the process is out of file
descriptors, at a bounded rate.

Twisted's accept loop (C{twisted.internet.tcp._accept}, shared by its TCP,
TLS-over-TCP, unix and inherited ports) logs, on each read of a port while
the process is out of file descriptors, that it ran out and took its
reserved descriptor back, then one line for every connection it closes
unanswered, then that it reserves again: under a flood, a line per
connection, as fast as they come (the reviewer's C{fdflood.py}: 708,136
lines, 88 MB, in 30 seconds).
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

from promtwist.logs import RepeatedWarnings, observer

_log = Logger(observer=observer)

# What the accept loop logs, by its format.
_OUT_OF_FILES = "EMFILE encountered; releasing reserved file descriptor."
_CLOSED = "EMFILE recovery: Closed socket from {address}"
_RESERVED_AGAIN = "Re-reserving EMFILE recovery file descriptor."
_NOT_ACCEPTED = "Could not accept new connection ({acceptError})"


@implementer(ILogObserver)
class AcceptLog:
    """
    Where a port's accept loop logs: what it says of running out of file
    descriptors, or of failing to accept, is logged a few times a minute in
    promtwist's words, then counted (L{RepeatedWarnings}); anything else
    goes on to C{passOn}, as Twisted would log it.

    The counts are reported when their interval ends, by a timer that runs
    only while one is open, and at L{flush}, when the port stops.
    """

    def __init__(self, clock: IReactorTime, passOn: ILogObserver) -> None:
        self._clock = clock
        self._passOn = passOn
        self.warnings = RepeatedWarnings(_log, clock)
        self._summary: IDelayedCall | None = None

    def __call__(self, event: LogEvent) -> None:
        format = event.get("log_format")
        if format == _OUT_OF_FILES:
            self.warnings.warn(
                "out of file descriptors",
                "the process is out of file descriptors (its open-file limit is {limit}): "
                "connections waiting to be accepted are closed unanswered; see "
                "'Open files' in docs/deployment.md",
                limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
        elif format == _CLOSED:
            self.warnings.warn(
                "connection closed unanswered",
                "closed a connection from {peer} unanswered: no file descriptor was free",
                peer=_peer(event.get("address")),
            )
        elif format == _NOT_ACCEPTED:
            self.warnings.warn(
                "accept failed",
                "could not accept a connection: {error}",
                error=event.get("acceptError"),
            )
        elif format != _RESERVED_AGAIN:
            self._passOn(event)
            return
        if self._summary is None:
            self._summary = self._clock.callLater(self.warnings.interval, self._summarise)

    def _summarise(self) -> None:
        self._summary = None
        self.warnings.summariseExpired()
        if self.warnings.pending:
            self._summary = self._clock.callLater(self.warnings.interval, self._summarise)

    def flush(self) -> None:
        """
        Report what is counted, and stop the timer.
        """
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        self.warnings.flush()


def _peer(address: object) -> str:
    # An accepted socket's address as Python gives it: (host, port, ...) for
    # TCP, a path (often empty) for a unix socket's client.
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "a unix-socket client"


def watchAccepts(port: IListeningPort, clock: IReactorTime) -> AcceptLog | None:
    """
    Have C{port}'s accept loop log through an L{AcceptLog}, when it is one
    of Twisted's ports (whose loop logs through its C{_logger}); L{None}
    otherwise (a test's fake port).
    """
    if not isinstance(port, tcp.Port):
        return None
    logger: Any = port._logger
    accepts = AcceptLog(clock, logger.observer)
    port._logger = Logger(namespace=logger.namespace, observer=accepts)
    return accepts
