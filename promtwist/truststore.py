# -*- test-case-name: promtwist.test.test_truststore -*-
"""
The CA certificates of a binary trust store: PKCS#12, or a Java key store
(JKS or JCEKS), as prometheus-proxy's C{agent.http.trustStorePath} took.

The format is told from the file's first bytes, never from its name: a
Java store starts with its magic number, a PKCS#12 file with the DER
sequence of a version-3 PFX. (PEM files are read by L{promtwist.tls} as
they always were; they never get here.) Whatever is wrong with a store,
the password above all, is one L{ConfigError} naming the key and the file.

As Java's default trust manager does, a store trusts the certificate of
every trusted-certificate entry and the end-entity certificate of every
private-key entry, not the rest of that entry's chain: a store holding one
server's key and chain trusts that server's certificate, not every
certificate its CA signed. (The caller verifies with OpenSSL's partial-chain
flag, so a trusted certificate that is not a self-signed root is an anchor,
as it is in Java.) A PKCS#12 file is read the same way: its key's
certificate and every certificate outside that certificate's chain. One
difference: in a PKCS#12 file without a key every certificate counts (Java
skips a certificate bag without its trust attribute, but a file made with
C{openssl pkcs12 -export -nokeys} is meant as a trust store too).

Java stores are read by the small reader below rather than a library: the
one there was (pyjks) needs twofish, which has no wheel, so installing
promtwist would need a C compiler.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import pkcs12

from promtwist.config.settings import ConfigError
from promtwist.logs import clip

_JAVA_MAGIC = {b"\xfe\xed\xfe\xed": "JKS", b"\xce\xce\xce\xce": "JCEKS"}

# The one key that sets the password, for messages.
PASSWORD_KEY = "agent.http.trustStorePassword"


def _isPKCS12(data: bytes) -> bool:
    """
    Whether C{data} starts like a PFX: a DER SEQUENCE (short or long
    length form) whose first element is the INTEGER 3.
    """
    if len(data) < 2 or data[0] != 0x30:
        return False
    header = 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)
    return data[header : header + 3] == b"\x02\x01\x03"


def storeCertificates(key: str, path: str, data: bytes, password: str) -> list[x509.Certificate]:
    """
    The trusted certificates of the store in C{data}, read from C{path}.

    @param key: the configuration key that named C{path}, for messages.
    @param password: the store's password; empty to read a Java store
        without checking its integrity, as Java does without a password,
        and a PKCS#12 file made without one.
    @raise ConfigError: when C{data} is no store promtwist reads, the
        password is wrong, the store is damaged or holds no certificate.
    """
    where = f"{key}: {path}"
    kind = _JAVA_MAGIC.get(data[:4])
    if kind is not None:
        certificates = _javaCertificates(where, kind, data, password)
    elif _isPKCS12(data):
        certificates = _pkcs12Certificates(where, data, password)
    else:
        raise ConfigError(
            f"{where}: not a trust store: neither PEM certificates, PKCS#12 nor a Java key"
            " store (JKS)"
        )
    if not certificates:
        raise ConfigError(f"{where}: the trust store holds no certificate")
    return certificates


class _Truncated(Exception):
    """
    A length or field of a Java store runs past the end of the file.
    """


class _JavaReader:
    """
    A cursor over a Java key store's bytes: every read is bounded by what
    remains, so a hostile or truncated file costs at most its own size.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, length: int) -> bytes:
        if length > len(self.data) - self.offset:
            raise _Truncated()
        chunk = self.data[self.offset : self.offset + length]
        self.offset += length
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def block(self) -> bytes:
        """
        A u32-length-prefixed run of bytes: a certificate or a protected key.
        """
        return self.take(self.number(4))

    def text(self) -> str:
        """
        A u16-length-prefixed string in Java's modified UTF-8 (C{writeUTF}):
        NUL as C{C0 80}, characters past U+FFFF as two encoded surrogates.
        """
        raw = self.take(self.number(2)).replace(b"\xc0\x80", b"\x00")
        return (
            raw.decode("utf-8", "surrogatepass")
            .encode("utf-16-be", "surrogatepass")
            .decode("utf-16-be")
        )


# Java's entry tags.
_PRIVATE_KEY, _TRUSTED_CERTIFICATE, _SECRET_KEY = 1, 2, 3


def _javaCertificates(where: str, kind: str, data: bytes, password: str) -> list[x509.Certificate]:
    """
    Read a JKS or JCEKS store as C{sun.security.provider.JavaKeyStore}
    does, keeping the C{(alias, type, DER)} of the certificates it trusts.
    Nothing is decrypted: Java stores certificates in clear, and the
    protected keys are skipped.
    """
    reader = _JavaReader(data)
    try:
        reader.take(4)
        version = reader.number(4)
        if version != 2:
            raise ConfigError(
                f"{where}: a {kind} trust store of version {version}, which promtwist does"
                " not read (only version 2, what keytool has written since Java 1.2)"
            )
        chains: list[tuple[str, str, bytes]] = []
        for _ in range(reader.number(4)):
            tag = reader.number(4)
            alias = reader.text()
            reader.take(8)  # the entry's creation time
            if tag == _PRIVATE_KEY:
                reader.block()
                certificates = [(reader.text(), reader.block()) for _ in range(reader.number(4))]
                if certificates:
                    chains.append((alias, *certificates[0]))
            elif tag == _TRUSTED_CERTIFICATE:
                chains.append((alias, reader.text(), reader.block()))
            elif tag == _SECRET_KEY and kind == "JCEKS":
                # A serialized Java object (SealedObject) whose length is
                # nowhere: reading past it needs a Java deserializer.
                raise ConfigError(
                    f"{where}: entry {clip(alias)} of this {kind} trust store is a secret key,"
                    " which promtwist does not read; keep only certificates in a trust store"
                )
            else:
                raise ConfigError(
                    f"{where}: a damaged {kind} trust store: entry {clip(alias)} has the"
                    f" unknown type {tag}"
                )
        digest = reader.take(20)
    except _Truncated:
        raise ConfigError(f"{where}: a damaged {kind} trust store: it ends too early") from None
    except UnicodeError:
        raise ConfigError(
            f"{where}: a damaged {kind} trust store: a name is not modified UTF-8"
        ) from None
    # Java checks integrity only when given a password.
    if password and not _digestMatches(password, data[: reader.offset - 20], digest):
        raise ConfigError(
            f"{where}: wrong password for this {kind} trust store ({PASSWORD_KEY}), or the"
            " file is damaged"
        )
    return list(_x509(where, kind, chains))


def _digestMatches(password: str, signed: bytes, digest: bytes) -> bool:
    """
    Whether C{digest} ends a Java store of C{signed} bytes protected by
    C{password}: Java's SHA-1 over the password's UTF-16BE bytes, the
    words C{"Mighty Aphrodite"} and the store.
    """
    whitened = password.encode("utf-16-be", "surrogatepass") + b"Mighty Aphrodite" + signed
    return hmac.compare_digest(hashlib.sha1(whitened).digest(), digest)


def _x509(
    where: str, kind: str, entries: Iterable[tuple[str, str, bytes]]
) -> Iterable[x509.Certificate]:
    """
    The X.509 certificates among a Java store's C{(alias, type, DER)}
    entries; other certificate types are no use for TLS and are skipped.
    """
    for alias, certificateType, der in entries:
        if certificateType != "X.509":
            continue
        try:
            yield x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion) as e:
            raise ConfigError(
                f"{where}: entry {clip(alias)} of this {kind} trust store is not a readable"
                " X.509 certificate"
            ) from e


def _pkcs12Certificates(where: str, data: bytes, password: str) -> list[x509.Certificate]:
    try:
        _, certificate, others = pkcs12.load_key_and_certificates(
            data, password.encode("utf-8") if password else None
        )
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as e:
        # OpenSSL says the same for a wrong password and a damaged file.
        raise ConfigError(
            f"{where}: wrong password for this PKCS#12 trust store ({PASSWORD_KEY}), or the"
            " file is damaged"
        ) from e
    if certificate is None:
        return others
    chain = _issuers(certificate, others)
    return [certificate] + [other for other in others if other not in chain]


def _issuers(
    certificate: x509.Certificate, candidates: list[x509.Certificate]
) -> list[x509.Certificate]:
    """
    The chain above C{certificate} among C{candidates}, by issuer name: what
    Java keeps as a key entry's chain rather than as trusted certificates.
    """
    chain: list[x509.Certificate] = []
    current = certificate
    while current.issuer != current.subject:
        issuer = next(
            (c for c in candidates if c.subject == current.issuer and c not in chain), None
        )
        if issuer is None:
            break
        chain.append(issuer)
        current = issuer
    return chain
