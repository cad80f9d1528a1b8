"""
Signals from the init system: SIGHUP to re-read the configuration, and
SIGTERM ending in a normal exit once the service has drained.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any


def onHangup(reactor: Any, reload: Callable[[], object]) -> Callable[[], None]:
    """
    Run C{reload} in the reactor thread whenever the process gets SIGHUP.

    The signal handler only schedules the work: it may run between any two
    bytecodes, where touching reactor state is not safe. Outside the main
    thread (an agent embedded in another program) signals cannot be
    handled, and nothing is installed.

    @return: a function that puts the previous handler back.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(reload)

    try:
        previous = signal.signal(signal.SIGHUP, handler)
    except ValueError:
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore


def exitNormally(reactor: Any) -> None:
    """
    Once a service has drained after SIGTERM or SIGINT, let twistd exit with
    status 0: by default it re-raises the signal after the reactor stops,
    so even a clean shutdown ends as "killed by signal" to an init system.
    """
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None


def exitNormallyOnShutdown(reactor: Any) -> None:
    """
    Call L{exitNormally} once the reactor's shutdown has stopped the
    services: twistd stops them "before" shutdown and waits for their
    drains, so "after" shutdown they have drained.

    Only a process's entry point (a tap's C{makeService}) asks for this:
    a service embedded in another program leaves that program's exit
    status alone.
    """
    reactor.addSystemEventTrigger("after", "shutdown", exitNormally, reactor)
