# -*- test-case-name: promtwist.test.test_tls -*-
"""
TLS on the agent link, on the scrape port and towards HTTPS targets,
configured with prometheus-proxy's keys (reference/prometheus-proxy.md §E).

Every file is read and checked once, before the reactor runs. A missing or
unreadable file, a file without the certificate or key it should hold, a key
that is not the certificate's, or an own certificate outside its validity
period is one L{ConfigError} naming the key and the file, rather than a
handshake that fails on every connection later.

Clients check a server the way Twisted's C{optionsForClientTLS} does: OpenSSL
verifies the chain against the trust roots, then C{service_identity} matches
the expected name against the leaf certificate. They do it in a verify
callback of their own rather than through C{optionsForClientTLS}, so as to
say which check failed ("certificate CN=proxy expired on ...", "... is for
proxy.example, not 10.0.0.5") where OpenSSL only says "certificate verify
failed": that sentence is what an operator needs to find in the log.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from promtwist.config.settings import AgentSettings, ConfigError, ProxyEndpoint, ProxySettings
from promtwist.truststore import storeCertificates

if TYPE_CHECKING:
    # Only pyOpenSSL's annotations name the type of NO_OVERLAPPING_PROTOCOLS.
    from OpenSSL.SSL import _NoOverlappingProtocols as NoOverlap

# Both ends of the link and of the scrape port are modern software; nothing
# needs the protocol versions before TLS 1.2.
_MINIMUM_VERSION = TLSVersion.TLSv1_2

_SYSTEM_CAS = "a CA the system trusts"

_UNTRUSTED = frozenset(
    {
        SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT,
        SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        SSL.X509VerificationCodes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
        SSL.X509VerificationCodes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
        SSL.X509VerificationCodes.ERR_SELF_SIGNED_CERT_IN_CHAIN,
        SSL.X509VerificationCodes.ERR_CERT_UNTRUSTED,
    }
)


class CertificateRejected(Exception):
    """
    A server's certificate did not pass verification; the message says why.
    """


# ---------------------------------------------------------------------------
# Reading files.


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{key}: {path}: cannot read the file: {e.strerror or e}") from e


def _parseCertificates(key: str, path: str, data: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion):
        certificates = []
    if not certificates:
        raise ConfigError(f"{key}: {path}: holds no PEM certificate")
    return certificates


def _roots(certificates: list[x509.Certificate]) -> list[Certificate]:
    """
    Trust roots as Twisted's C{trustRootFromCertificates} takes them, from
    certificates whichever file format they came in.
    """
    return [Certificate(crypto.X509.from_cryptography(c)) for c in certificates]


def _authorities(key: str, path: str) -> list[Certificate]:
    """
    The CA certificates of a PEM trust file.
    """
    return _roots(_parseCertificates(key, path, _read(key, path)))


_SigningKey = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


@dataclass(frozen=True)
class _KeyPair:
    """
    An own certificate, the intermediates sent with it, and its key.
    """

    certificate: crypto.X509
    chain: tuple[crypto.X509, ...]
    key: crypto.PKey


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _keyPair(section: str, certPath: str, keyPath: str) -> _KeyPair:
    """
    Read and check an own certificate chain and its private key.

    @param section: where the keys live, e.g. C{proxy.tls}, for messages.
    """
    certKey = f"{section}.certChainFilePath"
    keyKey = f"{section}.privateKeyFilePath"
    leaf, *chain = _parseCertificates(certKey, certPath, _read(certKey, certPath))
    data = _read(keyKey, keyPath)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        # cryptography's way of saying the key needs a password.
        raise ConfigError(
            f"{keyKey}: {keyPath}: the private key is encrypted; promtwist needs it unencrypted"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{keyKey}: {keyPath}: holds no PEM private key") from e
    if not isinstance(key, _SigningKey):
        raise ConfigError(f"{keyKey}: {keyPath}: a {type(key).__name__} cannot sign for TLS")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(f"{keyKey}: {keyPath}: not the key of the certificate in {certPath}")
    now = datetime.datetime.now(datetime.UTC)
    if now >= leaf.not_valid_after_utc:
        raise ConfigError(
            f"{certKey}: {certPath}: the certificate expired on {_when(leaf.not_valid_after_utc)}"
        )
    if now < leaf.not_valid_before_utc:
        raise ConfigError(
            f"{certKey}: {certPath}: the certificate is not valid before"
            f" {_when(leaf.not_valid_before_utc)}"
        )
    return _KeyPair(
        crypto.X509.from_cryptography(leaf),
        tuple(crypto.X509.from_cryptography(c) for c in chain),
        crypto.PKey.from_cryptography_key(key),
    )


def _context(options: CertificateOptions, where: str) -> SSL.Context:
    """
    Build the OpenSSL context now, so that what OpenSSL itself refuses (a key
    too weak for its security level, say) is a configuration error too.
    """
    try:
        return options.getContext()
    except SSL.Error as e:
        reasons = "; ".join(str(reason) for *_, reason in e.args[0]) if e.args else str(e)
        raise ConfigError(f"{where}: OpenSSL refuses it: {reasons}") from e


# ---------------------------------------------------------------------------
# The proxy's listeners.


def answerALPN(context: SSL.Context, protocols: Sequence[bytes]) -> None:
    """
    Answer a client's ALPN offer with the first of C{protocols} it offers,
    or, when it offers none of them, with no protocol at all: the handshake
    goes on, as RFC 7301 lets a server that ignores the extension do.

    Twisted's own callback (26.10) answers "no overlap" with an empty
    protocol name, which OpenSSL turns into an C{internal_error} alert: every
    client that offers ALPN, as Prometheus' Go client (C{h2}, C{http/1.1})
    and curl do, would fail its handshake.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes | NoOverlap:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(select)


def _serverOptions(section: str, cert: str, key: str, trust: str) -> CertificateOptions | None:
    """
    Server options from one C{tls} section, or L{None} when it names no
    file. A trust file makes client certificates signed by one of its CAs
    required: connections without one fail in the handshake.
    """
    if not (cert or key or trust):
        return None
    if not (cert and key):
        given = [
            name
            for name, value in (
                ("certChainFilePath", cert),
                ("privateKeyFilePath", key),
                ("trustCertCollectionFilePath", trust),
            )
            if value
        ]
        raise ConfigError(
            f"{section}: TLS needs certChainFilePath and privateKeyFilePath"
            f" (only {' and '.join(given)} set)"
        )
    pair = _keyPair(section, cert, key)
    trustKey = f"{section}.trustCertCollectionFilePath"
    options = CertificateOptions(
        privateKey=pair.key,
        certificate=pair.certificate,
        extraCertChain=list(pair.chain),
        trustRoot=trustRootFromCertificates(_authorities(trustKey, trust)) if trust else None,
        raiseMinimumTo=_MINIMUM_VERSION,
    )
    _context(options, f"{section}.certChainFilePath: {cert}")
    return options


def agentPortTLS(settings: ProxySettings) -> CertificateOptions | None:
    """
    TLS for the agent port (C{proxy.tls.*}), or L{None} for plain TCP.

    @raise ConfigError: for any problem with the files.
    """
    return _serverOptions(
        "proxy.tls",
        settings.tls_cert_chain_file_path,
        settings.tls_private_key_file_path,
        settings.tls_trust_cert_collection_file_path,
    )


def scrapePortTLS(settings: ProxySettings) -> CertificateOptions | None:
    """
    TLS for the scrape port (C{proxy.http.tls.*}), or L{None} for plain HTTP.

    @raise ConfigError: for any problem with the files.
    """
    return _serverOptions(
        "proxy.http.tls",
        settings.http_tls_cert_chain_file_path,
        settings.http_tls_private_key_file_path,
        settings.http_tls_trust_cert_collection_file_path,
    )


def usesTLS(transport: object) -> bool:
    """
    Whether a connection is TLS: a TLS-capable TCP transport, or the TLS
    layer L{promtwist.listen.withTLS} puts over plain TCP (which does not
    declare L{ISSLTransport}, though it has what it needs here).
    """
    return ISSLTransport.providedBy(transport) or isinstance(transport, TLSMemoryBIOProtocol)


def peerCommonName(transport: object) -> str | None:
    """
    The subject common name of the client certificate on a connection, or
    L{None} on plain TCP, without a certificate, or when the subject has no
    single common name (two would make the identity ambiguous).

    A listener built from L{agentPortTLS} or L{scrapePortTLS} asks for a
    client certificate only when it has a trust file, and then the handshake
    fails unless the certificate verifies against it: a certificate seen
    here has been verified.
    """
    if not usesTLS(transport):
        return None
    peer = cast(ISSLTransport, transport).getPeerCertificate()
    if not isinstance(peer, crypto.X509):
        return None
    names = peer.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    name = names[0].value
    return name if isinstance(name, str) else name.decode("utf-8", "replace")


# What the proxy's TLS alerts mean for an agent; OpenSSL's own text names
# the alert only.
_PEER_ALERTS = (
    (
        "alert certificate required",
        "the proxy requires a client certificate: set agent.tls.certChainFilePath"
        " and agent.tls.privateKeyFilePath",
    ),
    ("alert unknown ca", "the proxy does not trust the CA that signed this agent's certificate"),
    ("alert certificate expired", "the proxy refused this agent's certificate as expired"),
    ("alert bad certificate", "the proxy refused this agent's certificate"),
    ("alert certificate unknown", "the proxy refused this agent's certificate"),
    ("wrong version number", "the other end does not speak TLS; is TLS on at both ends?"),
)


def describeTLSFailure(failure: Failure) -> str | None:
    """
    A readable cause for a TLS handshake the peer broke off, or L{None}
    when C{failure} is not such an error.
    """
    error = failure.value
    if not isinstance(error, SSL.Error):
        return None
    text = _errorText(error)
    for alert, meaning in _PEER_ALERTS:
        if alert in text:
            return f"{meaning} ({alert})"
    return f"TLS handshake failed: {text}" if text else "TLS handshake failed"


# What OpenSSL says on a TLS port when the client does not speak TLS.
_PLAIN_CLIENTS = (
    (
        "http request",
        "an HTTP client; Prometheus and browsers belong on the scrape port (proxy.http.port)",
    ),
    (
        "peer did not return a certificate",
        "the agent presented no client certificate, which this port requires: give the agent"
        " agent.tls.certChainFilePath and agent.tls.privateKeyFilePath",
    ),
    (
        "wrong version number",
        "the client does not speak TLS: an agent dialling plain TCP needs"
        " agent.tls.enabled = true (and agent.tls.trustCertCollectionFilePath for a"
        " private CA)",
    ),
)


def describeServerTLSFailure(failure: Failure) -> str | None:
    """
    Like L{describeTLSFailure}, for the proxy's side of a handshake that
    failed: a plain-text client on a TLS port is named as such, with the
    option that fixes it.
    """
    if not isinstance(failure.value, SSL.Error):
        return None
    text = _errorText(failure.value)
    for reason, meaning in _PLAIN_CLIENTS:
        if reason in text:
            return f"{meaning} ({reason})"
    return text or "no reason given"


def _errorText(error: SSL.Error) -> str:
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return " ".join(str(part) for entry in entries for part in entry)


# ---------------------------------------------------------------------------
# Clients: the agent's link and its HTTPS targets.


def _isAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _subject(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty name)"


def _alternativeNames(certificate: x509.Certificate) -> str:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no host name at all"
    found = [*names.get_values_for_type(x509.DNSName)]
    found += [str(address) for address in names.get_values_for_type(x509.IPAddress)]
    return ", ".join(found) or "no host name at all"


def _chainProblem(certificate: x509.Certificate, error: int, trusted: str) -> str:
    """
    Why OpenSSL refused a certificate of the chain, in words.
    """
    subject = _subject(certificate.subject)
    if error == SSL.X509VerificationCodes.ERR_CERT_HAS_EXPIRED:
        return f"certificate {subject} expired on {_when(certificate.not_valid_after_utc)}"
    if error == SSL.X509VerificationCodes.ERR_CERT_NOT_YET_VALID:
        return (
            f"certificate {subject} is not valid before {_when(certificate.not_valid_before_utc)}"
        )
    if error in _UNTRUSTED:
        return (
            f"certificate {subject} (issuer {_subject(certificate.issuer)})"
            f" is not signed by {trusted}"
        )
    return f"certificate {subject} is not acceptable (OpenSSL X.509 error {error})"


@implementer(IOpenSSLClientConnectionCreator)
class _ClientTLS:
    """
    TLS connections to one server name, sending it as SNI.

    @ivar trusted: whose signature the server's certificate needs, for
        messages (e.g. "a CA in ca.pem"); L{None} turns verification off
        altogether.
    @ivar nameHint: appended to a name mismatch, saying how to change the
        expected name.
    @ivar protocols: offered by ALPN, most preferred first.
    """

    def __init__(
        self,
        context: SSL.Context,
        host: str,
        trusted: str | None,
        nameHint: str = "",
        protocols: Sequence[bytes] = (),
    ) -> None:
        self.context = context
        self.protocols = protocols
        self.host = host
        self.trusted = trusted
        self.nameHint = nameHint
        self.isAddress = _isAddress(host)
        # SNI and service_identity want the ASCII (IDNA) form of a name.
        self.asciiName = host if host.isascii() else host.encode("idna").decode("ascii")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        if self.protocols:
            connection.set_alpn_protos(list(self.protocols))
        if not self.isAddress:
            connection.set_tlsext_host_name(self.asciiName.encode("ascii"))
        if self.trusted is not None:
            connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        """
        OpenSSL's verdict on each certificate of the chain, root first; on
        the server's own certificate (depth 0) that it accepted, the name
        check. A refusal aborts the handshake with the reason, as
        C{optionsForClientTLS} does for a name mismatch.
        """
        if ok and depth > 0:
            return True
        cert = certificate.to_cryptography()
        assert self.trusted is not None
        problem = self._nameProblem(cert) if ok else _chainProblem(cert, error, self.trusted)
        if problem is None:
            return True
        tlsProtocol: TLSMemoryBIOProtocol = connection.get_app_data()
        tlsProtocol.failVerification(Failure(CertificateRejected(problem)))
        return False

    def _nameProblem(self, certificate: x509.Certificate) -> str | None:
        try:
            if self.isAddress:
                verify_certificate_ip_address(certificate, self.host)
            else:
                verify_certificate_hostname(certificate, self.asciiName)
        except (VerificationError, CertificateError):
            return (
                f"certificate {_subject(certificate.subject)} is for"
                f" {_alternativeNames(certificate)}, not {self.host}{self.nameHint}"
            )
        return None


def linkUsesTLS(settings: AgentSettings) -> bool:
    """
    Whether the agent dials its proxies over TLS: when C{agent.tls.enabled}
    says so, or, as in prometheus-proxy, when any C{agent.tls} file is set.
    """
    return settings.tls_enabled or bool(
        settings.tls_cert_chain_file_path
        or settings.tls_private_key_file_path
        or settings.tls_trust_cert_collection_file_path
    )


def linkTLS(
    settings: AgentSettings, proxy: ProxyEndpoint
) -> IOpenSSLClientConnectionCreator | None:
    """
    TLS for the agent's link to C{proxy}, or L{None} for plain TCP.

    The proxy's certificate must be signed by a CA in
    C{agent.tls.trustCertCollectionFilePath}, or, without that file, by one
    the system trusts (prometheus-proxy cannot do the latter; its issue
    #106). It must be for C{agent.tls.overrideAuthority} when set, else for
    the proxy's host. C{agent.tls.certChainFilePath} and
    C{privateKeyFilePath} are the agent's client certificate, for proxies
    that require one. With C{agent.transport = grpc} it offers ALPN C{h2}.

    @raise ConfigError: for any problem with the files.
    """
    if not linkUsesTLS(settings):
        return None
    section = "agent.tls"
    cert, key = settings.tls_cert_chain_file_path, settings.tls_private_key_file_path
    trust = settings.tls_trust_cert_collection_file_path
    trustKey = f"{section}.trustCertCollectionFilePath"
    trustRoot = (
        trustRootFromCertificates(_authorities(trustKey, trust)) if trust else platformTrust()
    )
    if cert or key:
        pair = _keyPair(section, cert, key)
        options = CertificateOptions(
            privateKey=pair.key,
            certificate=pair.certificate,
            extraCertChain=list(pair.chain),
            trustRoot=trustRoot,
            raiseMinimumTo=_MINIMUM_VERSION,
        )
    else:
        options = CertificateOptions(trustRoot=trustRoot, raiseMinimumTo=_MINIMUM_VERSION)
    where = f"{section}.certChainFilePath: {cert}" if cert else f"{trustKey}: {trust}"
    return _ClientTLS(
        _context(options, where),
        settings.tls_override_authority or proxy.host,
        f"a CA in {trust}" if trust else _SYSTEM_CAS,
        "; agent.tls.overrideAuthority sets the name to expect",
        # gRPC servers and front ends require ALPN h2; the native link
        # offers nothing, as before.
        (b"h2",) if settings.transport == "grpc" else (),
    )


@implementer(IPolicyForHTTPS)
class _TargetPolicy:
    """
    TLS for HTTPS targets: one context shared by all of them.
    """

    def __init__(self, context: SSL.Context, trusted: str | None) -> None:
        self.context = context
        self.trusted = trusted

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _ClientTLS(self.context, hostname.decode("ascii"), self.trusted)


def targetPolicy(settings: AgentSettings) -> IPolicyForHTTPS:
    """
    How the agent checks HTTPS targets: like a browser, against the
    system's CAs and the URL's host; against the CAs in
    C{agent.http.trustStorePath} instead when that is set (PEM, or a
    PKCS#12 or Java store opened with C{agent.http.trustStorePassword}:
    L{promtwist.truststore}); not at all with
    C{agent.http.enableTrustAllX509Certificates}, which wins over the trust
    store as in prometheus-proxy.

    @raise ConfigError: for any problem with the trust store.
    """
    if settings.trust_all_x509_certificates:
        return _TargetPolicy(_context(CertificateOptions(), "agent.http"), None)
    path = settings.https_trust_store_path
    if not path:
        return _TargetPolicy(
            _context(CertificateOptions(trustRoot=platformTrust()), "agent.http"), _SYSTEM_CAS
        )
    key = "agent.http.trustStorePath"
    data = _read(key, path)
    if b"-----BEGIN " in data:
        certificates = _parseCertificates(key, path, data)
    else:
        # prometheus-proxy took a Java trust store here.
        certificates = storeCertificates(key, path, data, settings.https_trust_store_password)
    options = CertificateOptions(trustRoot=trustRootFromCertificates(_roots(certificates)))
    context = _context(options, f"{key}: {path}")
    # Java trusts every certificate of a trust store as an anchor, a server's
    # own certificate from a key entry too; OpenSSL, without this flag, only
    # a self-signed root at the end of the chain.
    store = context.get_cert_store()
    assert store is not None, "the trust root made the context's store"
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    return _TargetPolicy(context, f"a CA in {path}")


def checkFiles(settings: ProxySettings | AgentSettings) -> None:
    """
    Read every certificate, key and trust file the settings name, so that a
    problem with one stops the process before twistd starts it.

    @raise ConfigError: for the first problem found.
    """
    if isinstance(settings, ProxySettings):
        agentPortTLS(settings)
        scrapePortTLS(settings)
    else:
        linkTLS(settings, settings.proxy_endpoints[0])
        targetPolicy(settings)
