"""
Reload on SIGHUP, the way init systems ask a daemon to re-read its
configuration.
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
    bytecodes, where touching reactor state is not safe.

    @return: a function that puts the previous handler back.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(reload)

    previous = signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
