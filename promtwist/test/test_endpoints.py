"""
Tests for L{promtwist.endpoints.described}: a Twisted server endpoint
description read by Twisted's own parser, turned into the endpoint promtwist
binds, built on the reactor it is given.
"""

from __future__ import annotations

import os

from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from promtwist.endpoints import UNIX_MODE, BadDescription, described
from promtwist.test.certs import makeCertificates


class DescribedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.factory = ServerFactory()

    def bind(self, description: str, backlog: int = 50) -> str:
        """
        Listen on what C{description} names; return the address it was
        described by.
        """
        where = described(self.reactor, description, backlog)
        self.successResultOf(where.endpoint.listen(self.factory))
        return where.wanted

    def test_tcp(self) -> None:
        """
        Port, interface and backlog as the description gives them, on the
        reactor given.
        """
        wanted = self.bind("tcp:8080:interface=127.0.0.1:backlog=7")
        self.assertEqual(wanted, "127.0.0.1:8080")
        self.assertEqual(self.reactor.tcpServers, [(8080, self.factory, 7, "127.0.0.1")])

    def test_tcpDefaults(self) -> None:
        """
        Without an interface C{tcp:} takes the IPv4 wildcard, C{tcp6:} the
        IPv6 one; the listener's backlog applies when the description sets
        none.
        """
        self.assertEqual(self.bind("tcp:8080", backlog=9), "0.0.0.0:8080")
        self.assertEqual(self.bind("tcp6:8081"), "[::]:8081")
        self.assertEqual(
            self.reactor.tcpServers,
            [(8080, self.factory, 9, "0.0.0.0"), (8081, self.factory, 50, "::")],
        )

    def test_ssl(self) -> None:
        """
        C{ssl:} is plain TCP on its port, interface and backlog, with the
        TLS options made from its certificate and key for promtwist's TLS
        layer: nothing is bound with C{listenSSL}.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        certs = makeCertificates(directory)
        where = described(
            self.reactor,
            f"ssl:8443:interface=127.0.0.1:backlog=5"
            f":privateKey={certs.server.key}:certKey={certs.server.cert}",
        )
        self.assertEqual(where.wanted, "127.0.0.1:8443")
        self.assertIsInstance(where.tls, CertificateOptions)
        self.successResultOf(where.endpoint.listen(self.factory))
        self.assertEqual(self.reactor.tcpServers, [(8443, self.factory, 5, "127.0.0.1")])
        self.assertEqual(self.reactor.sslServers, [])

    def test_sslMissingKey(self) -> None:
        """
        An C{ssl:} description whose key file is not there is refused when
        it is read, naming the file.
        """
        missing = os.path.abspath(self.mktemp())
        error = self.assertRaises(
            BadDescription, described, self.reactor, f"ssl:8443:privateKey={missing}"
        )
        self.assertIn(missing, str(error))

    def test_unix(self) -> None:
        """
        A unix socket gets L{UNIX_MODE} unless the description sets a mode,
        and Twisted's lock file unless it says C{lockfile=0}.
        """
        self.assertEqual(self.bind("unix:/run/p/a.sock"), "unix:/run/p/a.sock")
        self.bind("unix:/run/p/b.sock:mode=600:backlog=3:lockfile=0")
        self.assertEqual(
            self.reactor.unixServers,
            [
                ("/run/p/a.sock", self.factory, 50, UNIX_MODE, True),
                ("/run/p/b.sock", self.factory, 3, 0o600, False),
            ],
        )

    def test_badArgument(self) -> None:
        """
        An argument Twisted's parser does not take is one line naming it.
        """
        error = self.assertRaises(BadDescription, described, self.reactor, "tcp:8080:colour=red")
        self.assertIn("colour", str(error))
        self.assertNotIn("\n", str(error))
