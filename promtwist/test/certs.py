"""
Certificates made up for the TLS tests.

They are generated at test time with C{cryptography} rather than checked in,
so no test key material lives in the repository and none of it expires under
the test suite. Keys are P-256: generating one takes well under a
millisecond, so every test can have its own set.

The exception is the Java key store fixtures in C{data/}, which pyjks and
keytool wrote once (C{data/make-keystores.py}) so that promtwist's own
reader is checked against other implementations: their certificates
(L{STORE_CA}, L{STORE_SERVER}) are committed with them, valid for 100
years.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

DAY = datetime.timedelta(days=1)
DATA = os.path.join(os.path.dirname(__file__), "data")


def fixture(name: str) -> str:
    """
    The path of the committed test file C{name} in C{data/}.
    """
    return os.path.join(DATA, name)


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _alternativeName(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def writePEM(path: str, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> str:
    """
    Write certificates and keys to C{path} as PEM, in order.

    @return: C{path}
    """
    with open(path, "wb") as f:
        for item in items:
            if isinstance(item, x509.Certificate):
                f.write(item.public_bytes(serialization.Encoding.PEM))
            else:
                f.write(
                    item.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
    return path


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its private key, each in its own PEM file, as
    C{certChainFilePath} and C{privateKeyFilePath} expect them.
    """

    cert: str
    key: str


class Authority:
    """
    A certificate authority whose certificate is in the PEM file at C{path}:
    the file a peer names as its C{trustCertCollectionFilePath}.
    """

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = writePEM(os.path.join(directory, f"{name}.pem"), self.certificate)

    def issue(
        self,
        filename: str,
        commonName: str,
        hosts: Sequence[str] = (),
        *,
        client: bool = False,
        notBefore: datetime.datetime | None = None,
        notAfter: datetime.datetime | None = None,
    ) -> Issued:
        """
        Issue a certificate for a server (named by C{hosts}, host names or IP
        addresses) or, with C{client}, for a client known by C{commonName}.
        The validity defaults to yesterday until next month.
        """
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(commonName))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore or now - DAY)
            .not_valid_after(notAfter or now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_alternativeName(h) for h in hosts]),
                critical=False,
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        base = os.path.join(self.directory, filename)
        return Issued(writePEM(f"{base}.pem", certificate), writePEM(f"{base}.key", key))


# The certificates of the committed Java key stores: a CA, and a server
# certificate it signed for localhost and 127.0.0.1.
STORE_CA = fixture("store-ca.pem")
STORE_SERVER = Issued(fixture("store-server.pem"), fixture("store-server.key"))


@dataclass(frozen=True)
class Certificates:
    """
    Everything the TLS tests need, signed by C{ca} unless said otherwise.

    @ivar ca: the CA's certificate file.
    @ivar server: for C{localhost} and C{127.0.0.1}.
    @ivar googleServer: for C{*.test.google.fr}, like prometheus-proxy's
        test certificates, which its examples accept with
        C{overrideAuthority = "foo.test.google.fr"}.
    @ivar client: a client certificate for C{team_a}.
    @ivar expiredServer: like C{server}, but expired yesterday.
    @ivar wrongHostServer: a valid server certificate for another host.
    @ivar otherCa: an unrelated CA's certificate file.
    @ivar otherClient: a client certificate for C{team_a} from C{otherCa}.
    @ivar otherServer: like C{server}, but from C{otherCa}.
    """

    ca: str
    server: Issued
    googleServer: Issued
    client: Issued
    expiredServer: Issued
    wrongHostServer: Issued
    otherCa: str
    otherClient: Issued
    otherServer: Issued


def makeCertificates(directory: str) -> Certificates:
    """
    Create a fresh set of L{Certificates} in C{directory}, which must exist.
    """
    ca = Authority(directory, "ca")
    other = Authority(directory, "other-ca")
    now = datetime.datetime.now(datetime.UTC)
    local = ("localhost", "127.0.0.1")
    return Certificates(
        ca=ca.path,
        server=ca.issue("server", "localhost", local),
        googleServer=ca.issue("server1", "*.test.google.fr", ("*.test.google.fr",)),
        client=ca.issue("client", "team_a", client=True),
        expiredServer=ca.issue(
            "expired", "localhost", local, notBefore=now - 30 * DAY, notAfter=now - DAY
        ),
        wrongHostServer=ca.issue("wrong-host", "elsewhere.example", ("elsewhere.example",)),
        otherCa=other.path,
        otherClient=other.issue("other-client", "team_a", client=True),
        otherServer=other.issue("other-server", "localhost", local),
    )


def certificates(testCase: SynchronousTestCase) -> Certificates:
    """
    A fresh set of L{Certificates} in a new directory of C{testCase}'s.
    """
    directory = testCase.mktemp()
    os.makedirs(directory)
    return makeCertificates(directory)


def _certificates(pemPaths: Sequence[str]) -> list[x509.Certificate]:
    certificates = []
    for path in pemPaths:
        with open(path, "rb") as f:
            certificates += x509.load_pem_x509_certificates(f.read())
    return certificates


def writePKCS12(path: str, password: str, *pemPaths: str, pair: Issued | None = None) -> str:
    """
    Write the certificates of the PEM files C{pemPaths} to C{path} as a
    PKCS#12 trust store, protected by C{password} unless it is empty.

    @param pair: a key and certificate to store as the file's key entry,
        as C{openssl pkcs12 -export -in -inkey -certfile} does, C{pemPaths}
        then being its chain; without it, certificate bags only.
    @return: C{path}
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode("utf-8"))
        if password
        else serialization.NoEncryption()
    )
    key, certificate = None, None
    if pair is not None:
        with open(pair.key, "rb") as f:
            loaded = serialization.load_pem_private_key(f.read(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        key, (certificate,) = loaded, _certificates([pair.cert])
    with open(path, "wb") as f:
        f.write(
            pkcs12.serialize_key_and_certificates(
                b"server" if pair else None, key, certificate, _certificates(pemPaths), encryption
            )
        )
    return path


def javaStore(
    password: str, entries: Sequence[tuple[bytes, bytes]], magic: bytes = b"\xfe\xed\xfe\xed"
) -> bytes:
    """
    A version-2 Java key store (JKS, or JCEKS with its C{magic}) of
    trusted-certificate entries, each an C{(alias, DER)} pair with the
    alias already in modified UTF-8, as C{keytool -importcert} writes
    them, closed by the SHA-1 integrity digest under C{password}.

    This writer serves tests that need a store made at test time; the
    reader's independent check is the fixtures that pyjks and keytool
    wrote (C{data/make-keystores.py}).
    """
    body = [magic, struct.pack(">II", 2, len(entries))]
    for alias, der in entries:
        body += [struct.pack(">IH", 2, len(alias)), alias, struct.pack(">QH", 0, 5), b"X.509"]
        body += [struct.pack(">I", len(der)), der]
    signed = b"".join(body)
    digest = hashlib.sha1(password.encode("utf-16-be") + b"Mighty Aphrodite" + signed).digest()
    return signed + digest


def writeJKS(path: str, password: str, *pemPaths: str) -> str:
    """
    Write the certificates of the PEM files C{pemPaths} to C{path} as a
    Java key store of trusted-certificate entries with C{password}
    (L{javaStore}).

    @return: C{path}
    """
    der = serialization.Encoding.DER
    entries = [
        (f"ca{n}".encode(), certificate.public_bytes(der))
        for n, certificate in enumerate(_certificates(pemPaths))
    ]
    with open(path, "wb") as f:
        f.write(javaStore(password, entries))
    return path
