"""
Tests for L{promtwist.startup} and the startup errors of L{promtwist.listen}
and L{promtwist.cli}: one line naming the address or file and the fix.
"""

from __future__ import annotations

import io
import os
import socket
import sys

from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from promtwist.cli import ProxyOptions
from promtwist.listen import Listener
from promtwist.startup import (
    StartupError,
    _showStartupError,
    checkTwistdFiles,
    reportStartupErrors,
)


class ListenFailureTests(SynchronousTestCase):
    def test_portInUse(self) -> None:
        """
        A port in use names the address, what the port is for, and the
        setting that moves it.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = Listener(
            reactor, port, ServerFactory(), "127.0.0.1", purpose="scrape", key="proxy.http.port"
        )
        error = self.assertRaises(StartupError, listener.privilegedStartService)
        self.assertEqual(
            str(error),
            f"cannot listen on 127.0.0.1:{port} for the scrape port: address already in use;"
            " stop what holds it, or choose another port with proxy.http.port",
        )


class TwistdFilesTests(SynchronousTestCase):
    def test_missingDirectory(self) -> None:
        """
        The deployment guide's C{/var/log/promtwist} before anyone created
        it: the directory and the command that creates it are named.
        """
        missing = FilePath(self.mktemp()).child("promtwist")
        error = self.assertRaises(
            StartupError, checkTwistdFiles, {"logfile": missing.child("proxy.log").path}
        )
        self.assertIn(f"the directory {missing.path} does not exist", str(error))
        self.assertIn(f"mkdir -p {missing.path}", str(error))
        self.assertIn("--logfile", str(error))
        error = self.assertRaises(
            StartupError, checkTwistdFiles, {"pidfile": missing.child("proxy.pid").path}
        )
        self.assertIn("cannot write the pidfile", str(error))
        self.assertIn("--pidfile= for none", str(error))

    def test_unwritable(self) -> None:
        """
        A directory this user may not write in is named with the cause.
        Root may write in any ordinary directory, but not in sysfs, so the
        test holds whoever runs it (CI runs as root).
        """
        if os.getuid() == 0:
            pidfile = "/sys/promtwist-test.pid"
        else:
            directory = FilePath(self.mktemp())
            directory.makedirs()
            directory.chmod(0o500)
            self.addCleanup(directory.chmod, 0o700)
            pidfile = directory.child("p.pid").path
        error = self.assertRaises(StartupError, checkTwistdFiles, {"pidfile": pidfile})
        self.assertIn("permission denied", str(error))

    def test_fine(self) -> None:
        """
        Writable files, stdout, and no pidfile pass.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        checkTwistdFiles(
            {"pidfile": directory.child("p.pid").path, "logfile": directory.child("l").path}
        )
        checkTwistdFiles({"pidfile": "", "logfile": "-"})
        checkTwistdFiles({"pidfile": None, "logfile": None})

    def test_options(self) -> None:
        """
        The plugin's options check twistd's before twistd opens them: one
        line and status 1.
        """

        twistd = usage.Options()
        twistd.update(pidfile=FilePath(self.mktemp()).child("x.pid").path, logfile=None)
        options = ProxyOptions()
        options._environ = {}
        options._stderr = io.StringIO()
        options.parent = twistd
        exit = self.assertRaises(SystemExit, options.parseOptions, [])
        self.assertEqual(exit.code, 1)
        lines = options._stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("promtwist: cannot write the pidfile"), lines)


class ExceptHookTests(SynchronousTestCase):
    def test_oneLine(self) -> None:
        """
        A L{StartupError} escaping twistd is shown as one line.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        _showStartupError(StartupError, StartupError("cannot listen"), None)
        self.assertEqual(err.getvalue(), "promtwist: cannot listen\n")

    def test_othersAsBefore(self) -> None:
        seen: list[BaseException] = []
        error = ValueError("x")
        _showStartupError(ValueError, error, None, lambda k, v, t: seen.append(v))
        self.assertEqual(seen, [error])

    def test_installed(self) -> None:
        self.patch(sys, "excepthook", sys.excepthook)
        reportStartupErrors()
        self.assertIs(sys.excepthook, _showStartupError)
