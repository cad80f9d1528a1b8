"""
A proxy started by socket activation: a C{twistd} child that inherits its
scrape port's listening socket the way systemd passes one (C{LISTEN_FDS},
C{LISTEN_PID}, C{LISTEN_FDNAMES}, descriptor 3), named as the example
C{.socket} unit names it: C{--listen systemd:domain=INET:name=scrape}.
"""

from __future__ import annotations

import os
import socket

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from promtwist.test.processes import freePort, socketActivatedChild


class SocketActivationTests(TestCase):
    timeout = 60

    def directory(self) -> str:
        path: str = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def listeningSocket(self) -> socket.socket:
        """
        What a C{.socket} unit holds: bound and listening before the
        service starts, so connections wait in its queue meanwhile.
        """
        inherited = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(inherited.close)
        inherited.bind(("127.0.0.1", 0))
        inherited.listen(16)
        return inherited

    async def test_inheritedScrapePort(self) -> None:
        """
        The proxy serves the scrape port on the socket it inherited, and
        its startup line names that socket's address; a request sent while
        it starts waits in the socket's queue instead of being refused.
        """
        inherited = self.listeningSocket()
        port = inherited.getsockname()[1]
        workdir = self.directory()
        child = socketActivatedChild(
            self,
            "proxy",
            "promproxy-proxy",
            ["--listen", "systemd:domain=INET:name=scrape", "--agent_port", str(freePort())],
            workdir,
            inherited.fileno(),
            "scrape",
        )
        child.start()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=pool))
        try:
            response = await http.get(f"http://127.0.0.1:{port}/nothing", timeout=20)
            body = await treq.content(response)
        except Exception as e:
            raise self.failureException(
                f"no answer on the inherited socket: {e!r}\n\n{child.describe()}"
            ) from e
        self.assertEqual(response.code, 404, body)
        self.assertIn(f"listening: scrape 127.0.0.1:{port}", child.log())
