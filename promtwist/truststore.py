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
every trusted-certificate entry and the first certificate of every
private-key entry; in a PKCS#12 file every certificate counts (Java would
skip a certificate bag without its trust attribute, but a file made with
C{openssl pkcs12 -export -nokeys} is meant as a trust store too).
"""

from __future__ import annotations

from collections.abc import Iterable

import jks
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import pkcs12

from promtwist.config import ConfigError
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


def _javaCertificates(where: str, kind: str, data: bytes, password: str) -> list[x509.Certificate]:
    try:
        # The keys are not needed, only the certificates, which Java stores
        # in clear: nothing is decrypted.
        store = jks.KeyStore.loads(data, password or None, try_decrypt_keys=False)
    except jks.util.KeystoreSignatureException as e:
        raise ConfigError(
            f"{where}: wrong password for this {kind} trust store ({PASSWORD_KEY})"
        ) from e
    except (jks.util.KeystoreException, ValueError) as e:
        # pyjks' own errors, and a name that is not modified UTF-8.
        raise ConfigError(f"{where}: a damaged {kind} trust store: {clip(str(e))}") from e
    chains = [(alias, entry.type, entry.cert) for alias, entry in store.certs.items()]
    chains += [
        (alias, *entry.cert_chain[0])
        for alias, entry in store.private_keys.items()
        if entry.cert_chain
    ]
    return list(_x509(where, kind, chains))


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
        except ValueError as e:
            raise ConfigError(
                f"{where}: entry {clip(alias)} of this {kind} trust store is not a readable"
                " X.509 certificate"
            ) from e


def _pkcs12Certificates(where: str, data: bytes, password: str) -> list[x509.Certificate]:
    try:
        _, certificate, others = pkcs12.load_key_and_certificates(
            data, password.encode("utf-8") if password else None
        )
    except (ValueError, UnsupportedAlgorithm) as e:
        # OpenSSL says the same for a wrong password and a damaged file.
        raise ConfigError(
            f"{where}: wrong password for this PKCS#12 trust store ({PASSWORD_KEY}), or the"
            " file is damaged"
        ) from e
    return ([certificate] if certificate is not None else []) + others
