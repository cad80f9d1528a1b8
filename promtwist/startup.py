# -*- test-case-name: promtwist.test.test_startup -*-
"""
Startup failures an operator fixes (a port in use, a directory missing),
said in one line that names the address or file and the fix, instead of
twistd's traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from types import TracebackType


class StartupError(Exception):
    """
    The process cannot start, for a reason the operator fixes: the message
    is one line that says what and how.
    """


def _checkWritable(path: str, what: str, option: str) -> None:
    """
    Raise L{StartupError} unless this user can create or write C{path}.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise StartupError(
            f"cannot write the {what} {path}: the directory {directory} does not exist;"
            f" create it (mkdir -p {directory}) or choose another with {option}"
        )
    # Tried, not judged from permission bits: root passes every access()
    # check, yet cannot write on a read-only or special file system.
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise StartupError(
            f"cannot write the {what} {path}: {(e.strerror or str(e)).lower()} for uid"
            f" {os.getuid()}; give it the directory {directory} or choose another with {option}"
        ) from None
    if not existed:
        os.remove(path)


def checkTwistdFiles(twistd: Mapping[str, object]) -> None:
    """
    Check, before twistd opens them, that its pidfile and log file can be
    written: twistd itself fails on them with a traceback.

    @param twistd: twistd's own options (C{pidfile}, C{logfile}).
    @raise StartupError: naming the file and what to do.
    """
    pidfile = twistd.get("pidfile")
    if isinstance(pidfile, str) and pidfile:
        _checkWritable(pidfile, "pidfile", "--pidfile (--pidfile= for none)")
    logfile = twistd.get("logfile")
    if isinstance(logfile, str) and logfile and logfile != "-":
        _checkWritable(logfile, "log file", "--logfile")


def _showStartupError(
    kind: type[BaseException],
    value: BaseException,
    traceback: TracebackType | None,
    previous: object = sys.excepthook,
) -> None:
    """
    A L{StartupError} that escapes twistd is shown as its one line; any
    other exception as before.
    """
    if isinstance(value, StartupError):
        sys.stderr.write(f"promtwist: {value}\n")
        return
    assert callable(previous)
    previous(kind, value, traceback)


def reportStartupErrors() -> None:
    """
    Make a L{StartupError} raised while twistd starts the service (a port
    that cannot be bound) end the process with its one line and status 1,
    after twistd removed its pidfile, instead of with a traceback.
    """
    sys.excepthook = _showStartupError
