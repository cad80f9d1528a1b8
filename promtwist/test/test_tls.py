"""
Tests for L{promtwist.tls}: real TLS handshakes over loopback between the
proxy, the agent, Prometheus' side and targets, with certificates made up
by L{promtwist.test.certs}.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    INegotiated,
    IOpenSSLClientConnectionCreator,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
)
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from promtwist.agent.build import buildAgent
from promtwist.agent.service import AgentService
from promtwist.config.load import loadAgentSettings, loadProxySettings
from promtwist.config.settings import (
    AgentSettings,
    ConfigError,
    Identity,
    PathConfig,
    ProxyEndpoint,
    ProxySettings,
)
from promtwist.proxy.build import buildProxy
from promtwist.proxy.server import ProxyService
from promtwist.test.certs import (
    DAY,
    STORE_SERVER,
    Authority,
    Issued,
    certificates,
    fixture,
    writeJKS,
    writePKCS12,
)
from promtwist.tls import (
    agentPortTLS,
    checkFiles,
    describeServerTLSFailure,
    linkTLS,
    linkUsesTLS,
    peerCommonName,
    scrapePortTLS,
    targetPolicy,
)

# The global reactor's declared type names only what every reactor does.
reactor: Any = _reactor

DATA = FilePath(__file__).sibling("data")
METRICS = b"up 1\n"


class Target(Resource):
    """
    A scrape target: every path is a metrics page.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4")
        return METRICS


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serverOptions(issued: Issued) -> CertificateOptions:
    """
    Server options built without promtwist's checks, so that a test can run
    a server with a certificate promtwist would refuse to use.
    """
    with open(issued.cert, "rb") as cert, open(issued.key, "rb") as key:
        options: CertificateOptions = PrivateCertificate.loadPEM(cert.read() + key.read()).options()
    return options


class FileTests(SynchronousTestCase):
    """
    Every unusable file is one L{ConfigError} line naming the key and the
    file, raised before anything listens or dials.
    """

    def setUp(self) -> None:
        self.certs = certificates(self)

    def refused(self, build: Callable[[], object], *fragments: str) -> str:
        error = self.assertRaises(ConfigError, build)
        message = str(error)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def proxy(self, cert: str, key: str, trust: str = "") -> ProxySettings:
        return ProxySettings(
            tls_cert_chain_file_path=cert,
            tls_private_key_file_path=key,
            tls_trust_cert_collection_file_path=trust,
        )

    def test_missingFile(self) -> None:
        missing = os.path.abspath(self.mktemp())
        server = self.certs.server
        self.refused(
            lambda: agentPortTLS(self.proxy(missing, server.key)),
            f"proxy.tls.certChainFilePath: {missing}: cannot read the file: No such file",
        )
        self.refused(
            lambda: agentPortTLS(self.proxy(server.cert, missing)),
            f"proxy.tls.privateKeyFilePath: {missing}: cannot read",
        )
        self.refused(
            lambda: agentPortTLS(self.proxy(server.cert, server.key, missing)),
            f"proxy.tls.trustCertCollectionFilePath: {missing}: cannot read",
        )

    def test_unreadableFile(self) -> None:
        """
        A directory where a file belongs is reported like a missing file.
        """
        directory = os.path.dirname(self.certs.ca)
        self.refused(
            lambda: linkTLS(
                AgentSettings(tls_trust_cert_collection_file_path=directory),
                ProxyEndpoint("localhost"),
            ),
            f"agent.tls.trustCertCollectionFilePath: {directory}: cannot read the file",
        )

    def test_noCertificate(self) -> None:
        server = self.certs.server
        self.refused(
            lambda: agentPortTLS(self.proxy(server.key, server.key)),
            f"proxy.tls.certChainFilePath: {server.key}: holds no PEM certificate",
        )
        self.refused(
            lambda: agentPortTLS(self.proxy(server.cert, server.key, server.key)),
            f"proxy.tls.trustCertCollectionFilePath: {server.key}: holds no PEM certificate",
        )
        garbage = self.mktemp()
        FilePath(garbage).setContent(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        self.refused(
            lambda: agentPortTLS(self.proxy(garbage, server.key)),
            f"{garbage}: holds no PEM certificate",
        )

    def test_noKey(self) -> None:
        server = self.certs.server
        self.refused(
            lambda: agentPortTLS(self.proxy(server.cert, server.cert)),
            f"proxy.tls.privateKeyFilePath: {server.cert}: holds no PEM private key",
        )

    def test_encryptedKey(self) -> None:
        server = self.certs.server
        with open(server.key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        encrypted = self.mktemp()
        FilePath(encrypted).setContent(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        self.refused(
            lambda: agentPortTLS(self.proxy(server.cert, encrypted)),
            f"{encrypted}: the private key is encrypted",
        )

    def test_keyMismatch(self) -> None:
        server, client = self.certs.server, self.certs.client
        self.refused(
            lambda: agentPortTLS(self.proxy(server.cert, client.key)),
            f"proxy.tls.privateKeyFilePath: {client.key}: not the key of the certificate"
            f" in {server.cert}",
        )

    def test_expired(self) -> None:
        expired = self.certs.expiredServer
        self.refused(
            lambda: agentPortTLS(self.proxy(expired.cert, expired.key)),
            f"proxy.tls.certChainFilePath: {expired.cert}: the certificate expired on ",
        )

    def test_notYetValid(self) -> None:
        authority = Authority(os.path.dirname(self.certs.ca), "later-ca")
        now = datetime.datetime.now(datetime.UTC)
        later = authority.issue("later", "localhost", ("localhost",), notBefore=now + DAY)
        self.refused(
            lambda: agentPortTLS(self.proxy(later.cert, later.key)),
            f"{later.cert}: the certificate is not valid before ",
        )

    def test_trustWithoutCertificate(self) -> None:
        """
        A proxy trust file asks for client certificates, which needs TLS,
        which needs the proxy's own certificate.
        """
        self.refused(
            lambda: agentPortTLS(self.proxy("", "", self.certs.ca)),
            "proxy.tls: TLS needs certChainFilePath and privateKeyFilePath"
            " (only trustCertCollectionFilePath set)",
        )

    def test_sectionsNamed(self) -> None:
        """
        The scrape port's and the agent's files are reported under their own
        keys.
        """
        missing = self.mktemp()
        server = self.certs.server
        self.refused(
            lambda: scrapePortTLS(
                ProxySettings(
                    http_tls_cert_chain_file_path=server.cert,
                    http_tls_private_key_file_path=missing,
                )
            ),
            f"proxy.http.tls.privateKeyFilePath: {missing}: cannot read",
        )
        self.refused(
            lambda: linkTLS(
                AgentSettings(
                    tls_cert_chain_file_path=self.certs.expiredServer.cert,
                    tls_private_key_file_path=self.certs.expiredServer.key,
                ),
                ProxyEndpoint("localhost"),
            ),
            f"agent.tls.certChainFilePath: {self.certs.expiredServer.cert}: the certificate"
            " expired",
        )
        self.refused(
            lambda: checkFiles(AgentSettings(https_trust_store_path=missing)),
            f"agent.http.trustStorePath: {missing}: cannot read",
        )
        self.refused(
            lambda: checkFiles(self.proxy(server.cert, missing)),
            f"proxy.tls.privateKeyFilePath: {missing}",
        )

    def test_notATrustStore(self) -> None:
        """
        A target trust store that is neither PEM, PKCS#12 nor a Java key
        store is one line naming the key and the file.
        """
        store = self.mktemp()
        FilePath(store).setContent(b"\x00garbage\n" * 8)
        self.refused(
            lambda: checkFiles(AgentSettings(https_trust_store_path=store)),
            f"agent.http.trustStorePath: {store}: not a trust store",
        )

    def test_trustStoreWrongPassword(self) -> None:
        """
        A Java or PKCS#12 store opened with the wrong password is one line
        naming the file and the password's key.
        """
        for write in (writeJKS, writePKCS12):
            store = write(self.mktemp(), "changeit", self.certs.ca)
            settings = AgentSettings(https_trust_store_path=store, https_trust_store_password="x")
            self.refused(
                partial(checkFiles, settings),
                f"agent.http.trustStorePath: {store}: wrong password",
                "agent.http.trustStorePassword",
            )

    def test_trustStoreWithoutCertificate(self) -> None:
        key = self.certs.server.key
        self.refused(
            lambda: targetPolicy(AgentSettings(https_trust_store_path=key)),
            f"agent.http.trustStorePath: {key}: holds no PEM certificate",
        )

    def test_goodFiles(self) -> None:
        """
        Usable files build options; no file means no TLS.
        """
        certs = self.certs
        self.assertIsNone(agentPortTLS(ProxySettings()))
        self.assertIsNone(scrapePortTLS(ProxySettings()))
        self.assertIsNone(linkTLS(AgentSettings(), ProxyEndpoint("localhost")))
        self.assertIsNotNone(agentPortTLS(self.proxy(certs.server.cert, certs.server.key)))
        self.assertIsNotNone(
            agentPortTLS(self.proxy(certs.server.cert, certs.server.key, certs.ca))
        )
        link = AgentSettings(
            tls_cert_chain_file_path=certs.client.cert,
            tls_private_key_file_path=certs.client.key,
            tls_trust_cert_collection_file_path=certs.ca,
        )
        self.assertTrue(
            IOpenSSLClientConnectionCreator.providedBy(linkTLS(link, ProxyEndpoint("localhost")))
        )
        checkFiles(link)
        checkFiles(self.proxy(certs.server.cert, certs.server.key, certs.ca))

    def test_linkUsesTLS(self) -> None:
        """
        The link is TLS when C{agent.tls.enabled} says so or any agent TLS
        file is set, as in prometheus-proxy.
        """
        self.assertFalse(linkUsesTLS(AgentSettings()))
        self.assertTrue(linkUsesTLS(AgentSettings(tls_enabled=True)))
        self.assertTrue(linkUsesTLS(AgentSettings(tls_trust_cert_collection_file_path="ca")))
        self.assertTrue(linkUsesTLS(AgentSettings(tls_cert_chain_file_path="c")))

    def test_enabledKey(self) -> None:
        """
        C{agent.tls.enabled} feeds C{tls_enabled}.
        """
        config = self.mktemp()
        FilePath(config).setContent(b"agent.tls.enabled = true\n")
        settings = loadAgentSettings({"config": config}, {})
        self.assertTrue(settings.tls_enabled)
        self.assertFalse(
            loadAgentSettings({"config": DATA.child("myapps.conf").path}, {}).tls_enabled
        )


class _Recorder(Protocol):
    """
    A server that answers nothing, records what it receives and the client
    certificate's common name, and says when the connection is gone.
    """

    def __init__(self) -> None:
        self.received = b""
        self.commonNames: list[str | None] = []
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.commonNames.append(peerCommonName(self.transport))

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.callback(None)


class _Hello(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello")


@implementer(IHandshakeListener)
class _Offering(Protocol):
    """
    A TLS client that offers ALPN protocols and says what the server chose
    once the handshake is done, or why it failed.
    """

    def __init__(self) -> None:
        self.chosen: Deferred[bytes | None] = Deferred()

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        self.chosen.callback(INegotiated(self.transport).negotiatedProtocol)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if not self.chosen.called:
            self.chosen.errback(reason)


class _Loopback(TestCase):
    """
    Targets, proxies and agents on loopback, all stopped when the test ends.
    """

    timeout = 30

    def setUp(self) -> None:
        self.certs = certificates(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def logged(self, fragment: str, level: LogLevel | None = None) -> list[str]:
        """
        The log lines so far that contain C{fragment}.
        """
        return [
            text
            for event in self.events
            if fragment in (text := formatEvent(event))
            and (level is None or event["log_level"] == level)
        ]

    async def until(self, condition: Callable[[], object]) -> None:
        while not condition():
            await deferLater(reactor, 0.01)

    def listen(self, port: IListeningPort) -> int:
        """
        Stop listening on C{port} when the test ends; return its number.
        """
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    def target(self, tls: Issued | None = None) -> str:
        """
        Start a target; return the URL base of its C{/metrics}.
        """
        site = Site(Target())
        if tls is None:
            port = self.listen(reactor.listenTCP(0, site, interface="127.0.0.1"))
            return f"http://127.0.0.1:{port}"
        port = self.listen(reactor.listenSSL(0, site, serverOptions(tls), interface="127.0.0.1"))
        return f"https://localhost:{port}"

    def recorder(self, options: CertificateOptions) -> tuple[int, list[_Recorder]]:
        """
        Start a TLS server that is not a proxy; return its port and the
        connections it accepted.
        """
        accepted: list[_Recorder] = []

        def build() -> _Recorder:
            protocol = _Recorder()
            accepted.append(protocol)
            return protocol

        port = self.listen(
            reactor.listenSSL(0, Factory.forProtocol(build), options, interface="127.0.0.1")
        )

        async def allClosed() -> None:
            for protocol in accepted:
                await protocol.lost

        self.addCleanup(lambda: Deferred.fromCoroutine(allClosed()))
        return port, accepted

    def proxy(self, **tls: Any) -> ProxyService:
        return self.startProxy(ProxySettings(http_port=0, agent_port=0, **tls))

    async def offer(self, port: int, protocols: list[bytes]) -> bytes | None:
        """
        Complete a TLS handshake with the server on C{port} offering
        C{protocols} by ALPN; return the one it chose.
        """
        creator = optionsForClientTLS(
            "localhost",
            trustRoot=Certificate.loadPEM(FilePath(self.certs.ca).getContent()),
            acceptableProtocols=protocols,
        )
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        client = _Offering()
        await connectProtocol(endpoint, client)
        return await client.chosen

    def startProxy(self, settings: ProxySettings) -> ProxyService:
        proxy = buildProxy(settings, reactor, interface="127.0.0.1")
        proxy.startService()
        self.addCleanup(lambda: proxy.stopService() if proxy.running else None)
        return proxy

    def agent(
        self, port: int, host: str = "127.0.0.1", url: str = "", path: str = "app", **tls: Any
    ) -> AgentService:
        return self.startAgent(
            AgentSettings(
                name=f"agent-{path}",
                proxy_endpoints=(ProxyEndpoint(host, port),),
                path_configs=(PathConfig(path, path, url or f"{self.target()}/metrics"),),
                **tls,
            )
        )

    def startAgent(self, settings: AgentSettings) -> AgentService:
        agent = buildAgent(settings, reactor)
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        return agent

    async def get(
        self,
        url: str,
        policy: IPolicyForHTTPS | None = None,
    ) -> tuple[int, bytes]:
        client = (
            Agent(reactor, pool=self.pool)
            if policy is None
            else Agent(reactor, contextFactory=policy, pool=self.pool)
        )
        response = await client.request(b"GET", url.encode("ascii"))
        return response.code, await readBody(response)

    async def scrape(self, proxy: ProxyService, path: str = "app") -> tuple[int, bytes]:
        return await self.get(f"http://127.0.0.1:{proxy.httpListener.portNumber}/{path}")

    async def linkFailure(self, fragment: str) -> str:
        """
        Wait for the agent to log that its link did not come up for a reason
        containing C{fragment}.
        """

        def failures() -> list[str]:
            return [
                line for line in self.logged("no link to proxy", LogLevel.warn) if fragment in line
            ]

        await self.until(failures)
        return failures()[0]


class PeerCommonNameTests(_Loopback):
    def test_plainTCP(self) -> None:
        self.assertIsNone(peerCommonName(StringTransport()))
        self.assertIsNone(peerCommonName(None))

    async def connect(self, trust: str | None, client: Issued | None) -> list[str | None]:
        options = agentPortTLS(
            ProxySettings(
                tls_cert_chain_file_path=self.certs.server.cert,
                tls_private_key_file_path=self.certs.server.key,
                tls_trust_cert_collection_file_path=trust or "",
            )
        )
        assert options is not None
        port, accepted = self.recorder(options)
        link = linkTLS(
            AgentSettings(
                tls_trust_cert_collection_file_path=self.certs.ca,
                tls_cert_chain_file_path=client.cert if client else "",
                tls_private_key_file_path=client.key if client else "",
            ),
            ProxyEndpoint("localhost"),
        )
        assert link is not None
        endpoint = wrapClientTLS(link, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        hello = await connectProtocol(endpoint, _Hello())
        await self.until(lambda: accepted and accepted[0].received == b"hello")
        assert hello.transport is not None
        hello.transport.loseConnection()
        [server] = accepted
        await server.lost
        return server.commonNames

    async def test_clientCertificate(self) -> None:
        """
        With a trust file, the verified client certificate's common name.
        """
        self.assertEqual(await self.connect(self.certs.ca, self.certs.client), ["team_a"])

    async def test_notAsked(self) -> None:
        """
        Without a trust file the proxy asks for no certificate, so a client
        that has one does not send it.
        """
        self.assertEqual(await self.connect(None, self.certs.client), [None])


class LinkTests(_Loopback):
    """
    The agent link over TLS, with prometheus-proxy's keys.
    """

    def serverTLS(self, issued: Issued | None = None, trust: str = "") -> dict[str, str]:
        issued = issued or self.certs.server
        return {
            "tls_cert_chain_file_path": issued.cert,
            "tls_private_key_file_path": issued.key,
            "tls_trust_cert_collection_file_path": trust,
        }

    def clientTLS(self, issued: Issued | None = None) -> dict[str, str]:
        """
        The agent trusts the test CA and presents C{issued}, if given.
        """
        return {
            "tls_cert_chain_file_path": issued.cert if issued else "",
            "tls_private_key_file_path": issued.key if issued else "",
            "tls_trust_cert_collection_file_path": self.certs.ca,
        }

    async def test_alpnOffered(self) -> None:
        """
        A client offering ALPN protocols (a TLS front end, a probe) completes
        its handshake with the agent port, which answers C{h2} (the gRPC
        agents it serves require it) and nothing else.
        """
        proxy = self.proxy(**self.serverTLS())
        port = proxy.agentListener.portNumber
        self.assertEqual(await self.offer(port, [b"h2", b"http/1.1"]), b"h2")
        self.assertIsNone(await self.offer(port, [b"http/1.1"]))

    async def test_alpnWithoutGrpc(self) -> None:
        """
        With gRPC agents off, the agent port answers no ALPN protocol.
        """
        proxy = self.proxy(agent_grpc_enabled=False, **self.serverTLS())
        self.assertIsNone(await self.offer(proxy.agentListener.portNumber, [b"h2", b"http/1.1"]))

    async def test_scrape(self) -> None:
        proxy = self.proxy(**self.serverTLS())
        agent = self.agent(proxy.agentListener.portNumber, **self.clientTLS())
        await agent.whenConnected()
        self.assertEqual(await self.scrape(proxy), (200, METRICS))
        connection = agent.factory.current
        assert connection is not None
        self.assertTrue(ISSLTransport.providedBy(connection.transport))
        self.assertTrue(
            self.logged("dialling 127.0.0.1:", LogLevel.info)[0].endswith("over TLS for 1 path(s)")
        )

    async def test_hostName(self) -> None:
        """
        A proxy dialled by name is checked against that name.
        """
        proxy = self.proxy(**self.serverTLS())
        agent = self.agent(proxy.agentListener.portNumber, "localhost", **self.clientTLS())
        await agent.whenConnected()
        self.assertEqual(await self.scrape(proxy), (200, METRICS))

    async def test_mutual(self) -> None:
        proxy = self.proxy(**self.serverTLS(trust=self.certs.ca))
        self.assertTrue(
            self.logged(
                f"agent port: TLS with {self.certs.server.cert}, client certificates from a CA"
                f" in {self.certs.ca} required"
            )
        )
        agent = self.agent(proxy.agentListener.portNumber, **self.clientTLS(self.certs.client))
        await agent.whenConnected()
        self.assertEqual(await self.scrape(proxy), (200, METRICS))

    async def test_certificateNamesIdentity(self) -> None:
        """
        With mutual TLS, the client certificate's common name ("team_a")
        names the agent's identity without a token, and that identity's
        path globs apply.
        """
        proxy = self.proxy(
            identities=(Identity("team_a", "", ("app",)),),
            **self.serverTLS(trust=self.certs.ca),
        )
        allowed = self.agent(proxy.agentListener.portNumber, **self.clientTLS(self.certs.client))
        await allowed.whenConnected()
        (link,) = proxy.registry.lookup("app")
        self.assertEqual(link.identity.name, "team_a")
        self.assertEqual(await self.scrape(proxy), (200, METRICS))
        refused = self.agent(
            proxy.agentListener.portNumber, path="other", **self.clientTLS(self.certs.client)
        )
        await refused.whenConnected()
        self.assertEqual(proxy.registry.lookup("other"), ())
        self.assertEqual(
            proxy.metrics.registry.get_sample_value(
                "proxy_rejections_total", {"reason": "path_unauthorized"}
            ),
            1,
        )
        self.assertTrue(
            self.logged("the proxy refused path /other: agent identity 'team_a' is not authorized")
        )

    async def intruderRefused(self, intruderCertificate: Issued | None, reason: str) -> None:
        """
        A proxy requiring client certificates serves an agent with a good
        one, refuses another agent, and keeps serving the first.
        """
        proxy = self.proxy(**self.serverTLS(trust=self.certs.ca))
        port = proxy.agentListener.portNumber
        good = self.agent(port, **self.clientTLS(self.certs.client))
        await good.whenConnected()
        self.agent(port, path="intruder", **self.clientTLS(intruderCertificate))
        line = await self.linkFailure(reason)
        self.assertNotIn("without a word", line, "a TLS cause is not a silent close")
        self.assertEqual((await self.scrape(proxy, "intruder"))[0], 404)
        self.assertEqual(await self.scrape(proxy), (200, METRICS))

    async def test_agentWithoutCertificate(self) -> None:
        await self.intruderRefused(
            None,
            "the proxy requires a client certificate: set agent.tls.certChainFilePath"
            " and agent.tls.privateKeyFilePath (alert certificate required)",
        )

    async def test_agentCertificateFromAnotherCA(self) -> None:
        await self.intruderRefused(
            self.certs.otherClient,
            "the proxy does not trust the CA that signed this agent's certificate",
        )

    async def refusedProxy(self, certificate: Issued, host: str = "127.0.0.1", **tls: Any) -> str:
        """
        The agent refuses a server with C{certificate} and says why, before
        sending it anything.
        """
        port, accepted = self.recorder(serverOptions(certificate))
        self.agent(port, host, **(tls or self.clientTLS()))
        line = await self.linkFailure("certificate")
        self.assertNotIn("without a word", line, "a TLS cause is not a silent close")
        self.assertTrue(accepted)
        self.assertEqual([a.received for a in accepted], [b""] * len(accepted))
        return line

    async def test_proxyCertificateExpired(self) -> None:
        line = await self.refusedProxy(self.certs.expiredServer)
        self.assertIn("certificate CN=localhost expired on ", line)

    async def test_proxyWrongHost(self) -> None:
        line = await self.refusedProxy(self.certs.wrongHostServer, "localhost")
        self.assertIn(
            "certificate CN=elsewhere.example is for elsewhere.example, not localhost;"
            " agent.tls.overrideAuthority sets the name to expect",
            line,
        )

    async def test_proxyWrongAddress(self) -> None:
        line = await self.refusedProxy(self.certs.googleServer)
        self.assertIn("is for *.test.google.fr, not 127.0.0.1", line)

    async def test_proxyFromAnotherCA(self) -> None:
        line = await self.refusedProxy(self.certs.otherServer)
        self.assertIn(
            f"certificate CN=localhost (issuer CN=other-ca) is not signed by a CA in"
            f" {self.certs.ca}",
            line,
        )

    async def test_overrideAuthority(self) -> None:
        """
        prometheus-proxy's test certificates are for C{*.test.google.fr};
        C{overrideAuthority} makes them acceptable from any address.
        """
        proxy = self.proxy(**self.serverTLS(self.certs.googleServer))
        agent = self.agent(
            proxy.agentListener.portNumber,
            tls_override_authority="foo.test.google.fr",
            **self.clientTLS(),
        )
        await agent.whenConnected()
        self.assertEqual(await self.scrape(proxy), (200, METRICS))

    async def test_systemCAs(self) -> None:
        """
        With C{agent.tls.enabled} and no trust file, the proxy's certificate
        is checked against the system's CAs: the test CA is not one of them.
        """
        line = await self.refusedProxy(self.certs.server, tls_enabled=True)
        self.assertIn("is not signed by a CA the system trusts", line)

    async def test_systemCAsTrusted(self) -> None:
        """
        OpenSSL's system CAs come from C{SSL_CERT_FILE} when it is set; the
        agent uses them when it has no trust file.
        """
        saved = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = self.certs.ca

        def restore() -> None:
            if saved is None:
                del os.environ["SSL_CERT_FILE"]
            else:
                os.environ["SSL_CERT_FILE"] = saved

        self.addCleanup(restore)
        proxy = self.proxy(**self.serverTLS())
        agent = self.agent(proxy.agentListener.portNumber, "localhost", tls_enabled=True)
        await agent.whenConnected()
        self.assertEqual(await self.scrape(proxy), (200, METRICS))

    async def test_stopWhileNotReady(self) -> None:
        """
        An agent stopped while its link waits for the proxy's welcome drops
        the connection.
        """
        port, accepted = self.recorder(serverOptions(self.certs.server))
        agent = self.agent(port, **self.clientTLS())
        await self.until(lambda: accepted and accepted[0].received)
        await agent.stopService()
        await accepted[0].lost
        self.assertFalse(self.logged("no link to proxy"))

    # TLS at one end of the agent link only: each end says in one line what
    # is probably misconfigured, and which option fixes it.

    async def test_plainAgentOnTLSPort(self) -> None:
        """
        An agent without TLS does not get through to a TLS agent port, and
        both ends say why.
        """
        proxy = self.proxy(**self.serverTLS())
        self.agent(proxy.agentListener.portNumber)
        line = await self.linkFailure("link lost before it was ready")
        self.assertIn("if its agent port uses TLS, set agent.tls.enabled = true", line)
        await self.until(lambda: self.logged("TLS handshake with"))
        (proxyLine,) = self.logged("TLS handshake with", LogLevel.warn)[:1]
        self.assertIn("the client does not speak TLS", proxyLine)
        self.assertIn("agent.tls.enabled = true", proxyLine)
        self.assertEqual((await self.scrape(proxy))[0], 404)

    async def test_tlsAgentOnPlainPort(self) -> None:
        """
        A TLS agent on a plain agent port: the proxy recognises the
        ClientHello.
        """
        proxy = self.proxy()
        self.agent(proxy.agentListener.portNumber, **self.clientTLS())
        line = await self.linkFailure("link lost before it was ready")
        self.assertIn("if its agent port is plain TCP", line)
        await self.until(lambda: self.logged("speaks TLS"))
        (proxyLine,) = self.logged("speaks TLS", LogLevel.warn)[:1]
        self.assertIn("proxy.tls.certChainFilePath", proxyLine)


class ExampleFileTests(_Loopback):
    """
    prometheus-proxy's TLS examples (reference §G) run as they are, with
    their certificate paths and ports replaced.
    """

    async def runExample(self, name: str, clientCertificate: bool) -> None:
        certs = self.certs
        example = DATA.child(name).path
        agentPort, httpPort = freePort(), freePort()
        proxy = loadProxySettings(
            {
                "config": example,
                "defines": [
                    f"proxy.agent.port={agentPort}",
                    f"proxy.http.port={httpPort}",
                    f"proxy.tls.certChainFilePath={certs.googleServer.cert}",
                    f"proxy.tls.privateKeyFilePath={certs.googleServer.key}",
                    *(
                        [f"proxy.tls.trustCertCollectionFilePath={certs.ca}"]
                        if clientCertificate
                        else []
                    ),
                ],
            },
            {},
        )
        self.assertEqual(bool(proxy.tls_trust_cert_collection_file_path), clientCertificate)
        # Lists cannot be set with -D: the agent's paths come from a file
        # that includes the example.
        config = FilePath(self.mktemp())
        url = json.dumps(f"{self.target()}/metrics")
        config.setContent(
            f"include file({json.dumps(example)})\n"
            f"agent.pathConfigs = [{{name: app, path: app, url: {url}}}]\n".encode()
        )
        defines = [
            f"agent.proxy.port={agentPort}",
            f"agent.tls.trustCertCollectionFilePath={certs.ca}",
        ]
        if clientCertificate:
            defines += [
                f"agent.tls.certChainFilePath={certs.client.cert}",
                f"agent.tls.privateKeyFilePath={certs.client.key}",
            ]
        agent = loadAgentSettings({"config": config.path, "defines": defines}, {})
        self.assertEqual(agent.tls_override_authority, "foo.test.google.fr")
        self.assertEqual(agent.proxy_endpoints, (ProxyEndpoint("localhost", agentPort),))
        checkFiles(proxy)
        checkFiles(agent)
        service = self.startProxy(proxy)
        await self.startAgent(agent).whenConnected()
        self.assertEqual(await self.scrape(service), (200, METRICS))

    async def test_noMutualAuth(self) -> None:
        await self.runExample("tls-no-mutual-auth.conf", clientCertificate=False)

    async def test_withMutualAuth(self) -> None:
        await self.runExample("tls-with-mutual-auth.conf", clientCertificate=True)


@implementer(IPolicyForHTTPS)
class _Prometheus:
    """
    How Prometheus' C{tls_config} would reach the scrape port: trusting the
    test CA, with a client certificate or without.
    """

    def __init__(self, ca: str, client: Issued | None = None) -> None:
        with open(ca, "rb") as f:
            self.trustRoot = Certificate.loadPEM(f.read())
        self.client = None
        if client is not None:
            with open(client.cert, "rb") as cert, open(client.key, "rb") as key:
                self.client = PrivateCertificate.loadPEM(cert.read() + key.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        # Offering h2 first, as Prometheus' Go client and curl do: the port
        # must answer http/1.1.
        return optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self.trustRoot,
            clientCertificate=self.client,
            acceptableProtocols=[b"h2", b"http/1.1"],
        )


class ScrapePortTests(_Loopback):
    async def startAll(self, trust: str = "") -> str:
        proxy = self.proxy(
            http_tls_cert_chain_file_path=self.certs.server.cert,
            http_tls_private_key_file_path=self.certs.server.key,
            http_tls_trust_cert_collection_file_path=trust,
        )
        self.proxyService = proxy
        await self.agent(proxy.agentListener.portNumber).whenConnected()
        return f"https://localhost:{proxy.httpListener.portNumber}/app"

    async def test_https(self) -> None:
        url = await self.startAll()
        self.assertEqual(await self.get(url, _Prometheus(self.certs.ca)), (200, METRICS))

    async def test_alpn(self) -> None:
        """
        The scrape port answers an ALPN offer with http/1.1 and completes a
        handshake that offers nothing it speaks, without a protocol.
        """
        await self.startAll()
        port = self.proxyService.httpListener.portNumber
        self.assertEqual(await self.offer(port, [b"h2", b"http/1.1"]), b"http/1.1")
        self.assertIsNone(await self.offer(port, [b"h2"]))

    async def test_clientCertificateRequired(self) -> None:
        url = await self.startAll(trust=self.certs.ca)
        client = _Prometheus(self.certs.ca, self.certs.client)
        self.assertEqual(await self.get(url, client), (200, METRICS))
        for refused in (
            _Prometheus(self.certs.ca),
            _Prometheus(self.certs.ca, self.certs.otherClient),
        ):
            await self.assertFailure(
                Deferred.fromCoroutine(self.get(url, refused)),
                ResponseNeverReceived,
                ResponseFailed,
            )


class TargetTests(_Loopback):
    """
    HTTPS targets are verified like a browser does, unless told otherwise.
    """

    async def scrapeTarget(
        self, server: Issued | None = None, **settings: Any
    ) -> tuple[int, bytes]:
        """
        Scrape, through a proxy and an agent with C{settings}, an HTTPS
        target serving C{server} (by default C{self.certs.server}).
        """
        proxy = self.proxy()
        url = f"{self.target(server or self.certs.server)}/metrics"
        await self.agent(proxy.agentListener.portNumber, url=url, **settings).whenConnected()
        return await self.scrape(proxy)

    async def test_systemCAsByDefault(self) -> None:
        code, body = await self.scrapeTarget()
        self.assertEqual(code, 503)
        self.assertIn(
            b"unreachable: certificate CN=localhost (issuer CN=ca) is not signed by a CA the"
            b" system trusts",
            body,
        )

    async def test_trustStore(self) -> None:
        self.assertEqual(
            await self.scrapeTarget(https_trust_store_path=self.certs.ca), (200, METRICS)
        )

    async def test_trustStoreOtherCA(self) -> None:
        code, body = await self.scrapeTarget(https_trust_store_path=self.certs.otherCa)
        self.assertEqual(code, 503)
        self.assertIn(f"is not signed by a CA in {self.certs.otherCa}".encode(), body)

    async def test_binaryTrustStores(self) -> None:
        """
        A PKCS#12 and a Java trust store (upstream's documented
        C{--https_truststore truststore.jks --https_truststore_password
        changeit}) verify an HTTPS target like the PEM file of their CAs,
        whatever the file is called; a store of another CA does not.
        """
        ca, other = self.certs.ca, self.certs.otherCa
        for write in (writePKCS12, writeJKS):
            store = write(self.mktemp() + ".pem", "changeit", ca)
            self.assertEqual(
                await self.scrapeTarget(
                    https_trust_store_path=store, https_trust_store_password="changeit"
                ),
                (200, METRICS),
            )
            store = write(self.mktemp(), "changeit", other)
            code, body = await self.scrapeTarget(
                https_trust_store_path=store, https_trust_store_password="changeit"
            )
            self.assertEqual(code, 503)
            self.assertIn(f"is not signed by a CA in {store}".encode(), body)

    async def test_committedStores(self) -> None:
        """
        The stores that pyjks, keytool and openssl wrote verify an HTTPS
        target serving the committed certificate: the Java stores of its CA
        (JKS and JCEKS), and those holding only the server's key entry (its
        certificate, then its CA), whose certificate is trusted as an
        anchor as Java does: the JKS keytool converted from an openssl
        PKCS#12 file, and that file.
        """
        for store in ("truststore.jks", "truststore.jceks", "keypair.jks", "keypair.p12"):
            self.assertEqual(
                await self.scrapeTarget(
                    STORE_SERVER,
                    https_trust_store_path=fixture(store),
                    https_trust_store_password="changeit",
                ),
                (200, METRICS),
                store,
            )

    async def test_keyEntryDoesNotTrustItsCA(self) -> None:
        """
        A key entry's chain is not trusted: a store of one server's key and
        chain does not verify another server its CA signed (Java's trust
        manager does not either).
        """
        store = writePKCS12(
            self.mktemp(), "changeit", self.certs.ca, pair=self.certs.wrongHostServer
        )
        code, body = await self.scrapeTarget(
            https_trust_store_path=store, https_trust_store_password="changeit"
        )
        self.assertEqual(code, 503)
        self.assertIn(b"(issuer CN=ca) is not signed by a CA in", body)

    async def test_trustAll(self) -> None:
        """
        C{enableTrustAllX509Certificates} accepts any certificate, and says
        loudly at startup that it does.
        """
        proxy = self.proxy()
        url = f"{self.target(self.certs.otherServer)}/metrics"
        agent = self.agent(
            proxy.agentListener.portNumber,
            url=url,
            trust_all_x509_certificates=True,
            https_trust_store_path=self.certs.ca,
        )
        [warning] = self.logged("enableTrustAllX509Certificates", LogLevel.warn)
        self.assertIn("NOT verified", warning)
        self.assertIn(f"({self.certs.ca} is not used)", warning)
        await agent.whenConnected()
        self.assertEqual(await self.scrape(proxy), (200, METRICS))


class ServerFailureTests(SynchronousTestCase):
    def test_missingClientCertificate(self) -> None:
        """
        The proxy names what the agent must set when it presented no
        certificate to a port that requires one.
        """
        error = SSL.Error([("SSL routines", "", "peer did not return a certificate")])
        text = describeServerTLSFailure(Failure(error))
        assert text is not None
        self.assertIn("agent.tls.certChainFilePath and agent.tls.privateKeyFilePath", text)
        self.assertNotIn("  ", text)
