"""
Tests for where promtwist listens: the dual-stack default, and listeners
from Twisted endpoint descriptions (L{promtwist.endpoints}).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import socket
import stat
import tempfile

from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from promtwist.config.load import loadProxySettings
from promtwist.config.settings import ConfigError, ProxySettings
from promtwist.endpoints import DualStackEndpoint, ipv6Available, wildcard
from promtwist.httpguard import AllowedNetworks
from promtwist.listen import Listener
from promtwist.proxy.build import buildProxy
from promtwist.proxy.server import ProxyService
from promtwist.startup import StartupError
from promtwist.test.certs import Certificates, makeCertificates
from promtwist.test.helpers import RawClient

_REQUEST = b"GET /nothing HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"


def requireLoopbackIPv6(case: SynchronousTestCase) -> None:
    """
    Fail, saying why, on a machine where C{::1} cannot be bound: the
    dual-stack tests must not pass by testing IPv4 alone.
    """
    probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        probe.bind(("::1", 0))
    except OSError as e:
        case.fail(f"this machine has no ::1 ({e}): the dual-stack tests cannot run here")
    finally:
        probe.close()


class DefaultListenerTests(TestCase):
    """
    With no interface and no description a listener takes every address of
    both families, as prometheus-proxy's do.
    """

    def proxy(self, **settings: object) -> ProxyService:
        proxy = buildProxy(
            ProxySettings(http_port=0, agent_port=0, **settings),  # type: ignore[arg-type]
            reactor,
        )
        proxy.startService()
        self.addCleanup(proxy.stopService)
        return proxy

    def socketPath(self) -> str:
        """
        A fresh socket file path, short enough for a unix address wherever
        trial's temporary directory is.
        """
        directory = tempfile.mkdtemp(prefix="promtwist-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "s.sock")

    async def ask(self, endpoint: IStreamClientEndpoint, request: bytes = _REQUEST) -> bytes:
        client = RawClient()
        await connectProtocol(endpoint, client)
        client.send(request)
        await client.closed
        return client.received

    async def test_bothFamiliesReachADefaultProxy(self) -> None:
        """
        C{127.0.0.1} and C{[::1]} both reach the scrape port of a proxy
        started with the defaults, and the startup line names the IPv6
        wildcard.
        """
        requireLoopbackIPv6(self)
        proxy = self.proxy()
        port = proxy.httpListener.portNumber
        self.assertEqual(proxy.httpListener.address, f"[::]:{port}")
        overIPv4 = await self.ask(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        overIPv6 = await self.ask(TCP6ClientEndpoint(reactor, "::1", port))
        self.assertTrue(overIPv4.startswith(b"HTTP/1.1 404 "), overIPv4[:80])
        self.assertTrue(overIPv6.startswith(b"HTTP/1.1 404 "), overIPv6[:80])

    async def test_ipv4NetworksMatchMappedClients(self) -> None:
        """
        An IPv4 client of the dual-stack port arrives as C{::ffff:127.0.0.1}
        and is still matched by an IPv4 network, and refused by another.
        """
        proxy = self.proxy(http_allowed_networks=("127.0.0.0/8",))
        port = proxy.httpListener.portNumber
        served = await self.ask(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        self.assertTrue(served.startswith(b"HTTP/1.1 404 "), served[:80])
        other = self.proxy(http_allowed_networks=("10.0.0.0/8",))
        refused = await self.ask(
            TCP4ClientEndpoint(reactor, "127.0.0.1", other.httpListener.portNumber)
        )
        self.assertEqual(refused, b"")

    async def test_unixScrapeListener(self) -> None:
        """
        C{unix:} puts the scrape port on a socket file, named in the startup
        line.
        """
        path = self.socketPath()
        proxy = self.proxy(http_listen=f"unix:{path}")
        self.assertEqual(proxy.httpListener.address, f"unix:{path}")
        # Its user and group may connect, not every local user.
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        received = await self.ask(UNIXClientEndpoint(reactor, path))
        self.assertTrue(received.startswith(b"HTTP/1.1 404 "), received[:80])
        # The debug page says where, not the port number it does not use.
        debug = proxy.debugText()
        self.assertIn(f"Proxy port: unix:{path}", debug)
        self.assertIn(f"scrape port unix:{path}, agent port ", debug)

    def test_unixModeNotFooledByPath(self) -> None:
        """
        A socket path holding C{mode=} still gets the default mode: only a
        C{mode} argument sets it.
        """
        directory = os.path.join(os.path.dirname(self.socketPath()), "mode=x")
        os.mkdir(directory)
        path = os.path.join(directory, "s.sock")
        self.proxy(http_listen=f"unix:address={path}")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)

    async def test_operationsListeners(self) -> None:
        """
        The admin and metrics ports take descriptions too, and the startup
        line names where they listen.
        """
        path = self.socketPath()
        proxy = self.proxy(
            admin_enabled=True,
            admin_listen=f"unix:{path}",
            metrics_enabled=True,
            metrics_listen="tcp:0:interface=127.0.0.1",
        )
        admin, metrics = proxy.listeners[2:]
        self.assertEqual((admin.purpose, admin.address), ("admin", f"unix:{path}"))
        self.assertEqual(metrics.address, f"127.0.0.1:{metrics.portNumber}")
        ping = b"GET /ping HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
        pong = await self.ask(UNIXClientEndpoint(reactor, path), ping)
        self.assertTrue(pong.startswith(b"HTTP/1.1 200 "), pong[:80])
        self.assertTrue(pong.endswith(b"pong\n"), pong[-80:])

    async def test_unixClientsAndAllowedNetworks(self) -> None:
        """
        A unix-socket client has no IP address: a list of IP networks
        refuses it, and the entry C{unix} admits it.
        """
        refusing = self.socketPath()
        self.proxy(http_listen=f"unix:{refusing}", http_allowed_networks=("127.0.0.0/8",))
        self.assertEqual(await self.ask(UNIXClientEndpoint(reactor, refusing)), b"")
        admitting = self.socketPath()
        self.proxy(http_listen=f"unix:{admitting}", http_allowed_networks=("10.0.0.0/8", "unix"))
        received = await self.ask(UNIXClientEndpoint(reactor, admitting))
        self.assertTrue(received.startswith(b"HTTP/1.1 404 "), received[:80])

    def certificates(self) -> tuple[Certificates, Certificate]:
        directory = self.mktemp()
        os.makedirs(directory)
        certs = makeCertificates(directory)
        with open(certs.ca, "rb") as f:
            return certs, Certificate.loadPEM(f.read())

    async def test_sslDescription(self) -> None:
        """
        C{ssl:} serves TLS through promtwist's own TLS layer: a TLS client
        is answered, and a client outside the allowed networks is closed
        before its handshake instead of being left open.
        """
        certs, trust = self.certificates()
        description = (
            f"ssl:0:interface=127.0.0.1:privateKey={certs.server.key}:certKey={certs.server.cert}"
        )
        proxy = self.proxy(http_listen=description)
        self.assertTrue(proxy.httpListener.tls)
        port = proxy.httpListener.portNumber
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        received = await self.ask(endpoint)
        self.assertTrue(received.startswith(b"HTTP/1.1 404 "), received[:80])
        guarded = self.proxy(http_listen=description, http_allowed_networks=("10.0.0.0/8",))
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", guarded.httpListener.portNumber)
        # A ClientHello's first bytes; nothing comes back.
        self.assertEqual(await self.ask(plain, b"\x16\x03\x01"), b"")


class DescriptionTests(SynchronousTestCase):
    """
    Descriptions that cannot work are refused at startup, naming the key.
    """

    def listener(self, description: str, **kwargs: object) -> Listener:
        return Listener(
            reactor,
            8080,
            ServerFactory(),
            purpose="scrape",
            key="proxy.http.port",
            description=description,
            descriptionKey="proxy.http.listen",
            **kwargs,  # type: ignore[arg-type]
        )

    def test_unknownType(self) -> None:
        error = self.assertRaises(StartupError, self.listener, "udp:8080")
        self.assertEqual(
            str(error),
            "proxy.http.listen 'udp:8080': the endpoint type must be one of"
            " tcp, tcp6, unix, ssl, systemd",
        )

    def test_badArguments(self) -> None:
        error = self.assertRaises(StartupError, self.listener, "tcp:notaport")
        self.assertIn("proxy.http.listen 'tcp:notaport': ", str(error))
        self.assertNotIn("\n", str(error))

    def test_noInheritedSocket(self) -> None:
        """
        C{systemd:} in a process systemd did not start says there is no
        such socket instead of failing with an index error.
        """
        error = self.assertRaises(StartupError, self.listener, "systemd:domain=INET:index=0")
        self.assertIn(
            "proxy.http.listen 'systemd:domain=INET:index=0': no such inherited", str(error)
        )

    def test_sslAndPromtwistTLS(self) -> None:
        """
        C{ssl:} on a port that promtwist's TLS settings already cover is
        refused: which certificate would be served is not guessed.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        certs = makeCertificates(directory)
        settings = ProxySettings(
            http_port=0,
            agent_port=0,
            http_listen=f"ssl:0:privateKey={certs.server.key}:certKey={certs.server.cert}",
            http_tls_cert_chain_file_path=certs.server.cert,
            http_tls_private_key_file_path=certs.server.key,
        )
        error = self.assertRaises(StartupError, buildProxy, settings, reactor)
        self.assertIn("promtwist's TLS settings already cover", str(error))

    def test_unixPathTooLong(self) -> None:
        error = self.assertRaises(StartupError, self.listener, "unix:/" + "x" * 107)
        self.assertIn("the socket path is longer than the 107 bytes", str(error))

    def test_unixDirectoryMissing(self) -> None:
        """
        checkAvailable names a socket file's missing directory before twistd
        daemonises.
        """
        directory = os.path.join(tempfile.gettempdir(), "promtwist-No-Such-Directory")
        path = os.path.join(directory, "s.sock")
        listener = self.listener(f"unix:{path}")
        error = self.assertRaises(StartupError, listener.checkAvailable)
        self.assertEqual(
            str(error),
            f"cannot listen on unix:{path} for the scrape port: the directory {directory}"
            " does not exist; check proxy.http.listen",
        )

    def test_takenDualStackPort(self) -> None:
        """
        checkAvailable of the default listener fails when an IPv4-only
        socket holds the port: the dual-stack bind would.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = Listener(reactor, port, ServerFactory(), purpose="scrape", key="proxy.http.port")
        error = self.assertRaises(StartupError, listener.checkAvailable)
        wildcard = f"[::]:{port}" if ipv6Available() else f"0.0.0.0:{port}"
        self.assertEqual(
            str(error),
            f"cannot listen on {wildcard} for the scrape port: address already in use;"
            " stop what holds it, or choose another port with proxy.http.port",
        )

    def test_configRule(self) -> None:
        """
        The key takes the types a listener accepts, and refuses others when
        the file is read.
        """
        settings = loadProxySettings({"listen": "tcp6:8080:interface=\\:\\:"}, {})
        self.assertEqual(settings.http_listen, "tcp6:8080:interface=\\:\\:")
        error = self.assertRaises(ConfigError, loadProxySettings, {"agent_listen": "udp:1"}, {})
        self.assertIn("proxy.agent.listen", str(error))


class DualStackTests(SynchronousTestCase):
    def test_v6OnlyOff(self) -> None:
        """
        The default listener's socket accepts IPv4 whatever the host's
        C{bindv6only} default.
        """
        requireLoopbackIPv6(self)
        port = self.successResultOf(DualStackEndpoint(reactor, 0).listen(ServerFactory()))
        self.addCleanup(port.stopListening)
        assert isinstance(port, tcp.Port)
        only = port.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        self.assertEqual(only, 0)

    def test_noIPv6(self) -> None:
        """
        On a host without IPv6 the default listener is the IPv4 wildcard,
        not a startup failure.
        """
        self.patch(socket, "has_ipv6", False)
        self.assertFalse(ipv6Available())
        where = wildcard(reactor, 8080)
        self.assertIsInstance(where.endpoint, TCP4ServerEndpoint)
        self.assertEqual(
            (where.wanted, where.probe), ("0.0.0.0:8080", (socket.AF_INET, ("", 8080)))
        )

    def test_ipv6Refused(self) -> None:
        """
        A kernel that refuses IPv6 sockets (C{ipv6.disable=1}) counts as
        no IPv6.
        """

        def refused(*args: object) -> socket.socket:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

        self.patch(socket, "socket", refused)
        self.assertFalse(ipv6Available())


class UnixPeerTests(SynchronousTestCase):
    def test_unixPeer(self) -> None:
        """
        A unix peer matches no IP network; only the C{unix} entry admits
        it, and an empty list admits everyone as before.
        """
        clock = Clock()
        peer = UNIXAddress(None)
        self.assertFalse(AllowedNetworks(["127.0.0.0/8"], clock).admits(peer))
        self.assertTrue(AllowedNetworks(["127.0.0.0/8", "unix"], clock).admits(peer))
        self.assertTrue(AllowedNetworks([], clock).admits(peer))
        self.assertFalse(
            AllowedNetworks(["unix"], clock).admits(IPv4Address("TCP", "127.0.0.1", 1))
        )


class _Reservation:
    """
    Twisted's reserved file descriptor, always there to give back.
    """

    def available(self) -> bool:
        return True

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


class _Client:
    closed = 0

    def close(self) -> None:
        _Client.closed += 1


class _OutOfFiles:
    """
    A listening socket whose process is out of file descriptors: its first
    accept fails with C{EMFILE}, then C{clients} connections are accepted
    (to be closed at once), then there are no more.
    """

    def __init__(self, clients: int) -> None:
        self.left = clients
        self.failed = False

    def accept(self) -> tuple[_Client, tuple[str, int]]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        if not self.left:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        self.left -= 1
        return _Client(), ("127.0.0.3", 40000 + self.left)


class OutOfFilesTests(TestCase):
    """
    What a port logs when the process is out of file descriptors (the
    reviewer's C{fdflood.py}: 708,136 lines in 30 seconds, one for each
    connection Twisted's accept loop closed).
    """

    async def test_logBounded(self) -> None:
        """
        A flood of connections the accept loop closes for want of a file
        descriptor costs a few lines a minute naming the address and the
        limit, then a count reported when the port stops; what else the
        port logs passes on.
        """
        listener = Listener(reactor, 0, ServerFactory(), "127.0.0.1")
        listener.privilegedStartService()
        listener.startService()
        port = listener.port
        assert isinstance(port, tcp.Port)
        self.patch(tcp, "_reservedFD", _Reservation())
        listening = port.socket
        _Client.closed = 0
        with capturedLogs() as events:
            for _ in range(10):
                port.socket = _OutOfFiles(100)
                # As many accepts a read as a busy port grows to.
                port.numberAccepts = 200
                port.doRead()
            port.socket = listening
            port._logger.info("something else {n}", n=1)
            await listener.stopService()
        self.assertEqual(_Client.closed, 1000)
        lines = [formatEvent(e) for e in events]
        for start in ("closed a connection", "the process is out of file descriptors"):
            self.assertEqual(len([line for line in lines if line.startswith(start)]), 5, lines)
        self.assertFalse([line for line in lines if "EMFILE" in line], lines)
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.assertIn(
            f"the process is out of file descriptors (its open-file limit is {limit}): "
            "connections waiting to be accepted are closed unanswered; see 'Open files' "
            "in docs/deployment.md",
            lines,
        )
        self.assertIn(
            "closed a connection from 127.0.0.3 unanswered: no file descriptor was free", lines
        )
        self.assertIn("995 more connection closed unanswered message(s) suppressed in 0s", lines)
        self.assertIn("5 more out of file descriptors message(s) suppressed in 0s", lines)
        self.assertIn("something else 1", lines)
