"""
Tests for L{promtwist.truststore}: PKCS#12 stores made by the tests
themselves (L{promtwist.test.certs}), and Java stores that pyjks and keytool
wrote once (C{data/make-keystores.py}), so the reader is checked against
other implementations; read without a network.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.keys import AGENT
from promtwist.config.settings import AgentSettings, ConfigError
from promtwist.logs import clip
from promtwist.test.certs import (
    STORE_CA,
    certificates,
    fixture,
    javaStore,
    writeJKS,
    writePKCS12,
)
from promtwist.truststore import storeCertificates

KEY = "agent.http.trustStorePath"
# Written by pyjks (data/make-keystores.py): the CA's trusted-certificate
# entry, and a private-key entry for the server certificate it signed.
JKS = fixture("truststore.jks")


def _subjects(certificates: list[x509.Certificate]) -> list[str]:
    return sorted(c.subject.rfc4514_string() for c in certificates)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.certs = certificates(self)

    def read(self, path: str, password: str) -> list[x509.Certificate]:
        with open(path, "rb") as f:
            return storeCertificates(KEY, path, f.read(), password)

    def refused(self, path: str, password: str, data: bytes | None = None) -> str:
        """
        The one-line error for the store at C{path} (or C{data} said to be
        read from it), which names the key and the file.
        """
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        message = str(self.assertRaises(ConfigError, storeCertificates, KEY, path, data, password))
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"{KEY}: {path}: "), message)
        return message

    def test_pkcs12(self) -> None:
        """
        Every certificate of a PKCS#12 file is trusted, with its password
        or, for a file made without one, with none.
        """
        ca, other = self.certs.ca, self.certs.otherCa
        store = writePKCS12(self.mktemp(), "changeit", ca, other)
        self.assertEqual(_subjects(self.read(store, "changeit")), ["CN=ca", "CN=other-ca"])
        open_ = writePKCS12(self.mktemp(), "", ca)
        self.assertEqual(_subjects(self.read(open_, "")), ["CN=ca"])

    def test_jks(self) -> None:
        """
        A Java key store written by pyjks trusts its trusted-certificate
        entries and the first certificate of its private-key entries (not
        the rest of the chain), as Java's trust manager does; an empty
        password reads it without the integrity check, as Java does
        without a password.
        """
        expected = ["CN=localhost", "CN=promtwist test ca"]
        for password in ("changeit", ""):
            self.assertEqual(_subjects(self.read(fixture("truststore.jks"), password)), expected)
        self.assertEqual(
            self.read(fixture("ca-only.jks"), "changeit"),
            x509.load_pem_x509_certificates(FilePath(STORE_CA).getContent()),
        )

    def test_keyEntryTrustsItsCertificate(self) -> None:
        """
        A store whose one entry is a server's key with its chain trusts the
        server's certificate, not the CA above it, as Java's trust manager
        does: the JKS that keytool converted from an openssl PKCS#12 file,
        and that file itself.
        """
        for store in ("keypair.jks", "keypair.p12"):
            self.assertEqual(
                _subjects(self.read(fixture(store), "changeit")), ["CN=localhost"], store
            )

    def test_pkcs12KeyAndOthers(self) -> None:
        """
        Beside a PKCS#12 file's key entry, every certificate outside the
        key certificate's chain is trusted too.
        """
        store = writePKCS12(
            self.mktemp(), "changeit", self.certs.ca, self.certs.otherCa, pair=self.certs.server
        )
        self.assertEqual(_subjects(self.read(store, "changeit")), ["CN=localhost", "CN=other-ca"])

    def test_jksWritten(self) -> None:
        """
        The tests' own writer (L{writeJKS}) makes a store the reader trusts.
        """
        store = writeJKS(self.mktemp(), "changeit", self.certs.ca, self.certs.otherCa)
        self.assertEqual(_subjects(self.read(store, "changeit")), ["CN=ca", "CN=other-ca"])

    def test_wrongPassword(self) -> None:
        self.assertIn(
            "wrong password for this JKS trust store (agent.http.trustStorePassword), or the"
            " file is damaged",
            self.refused(fixture("truststore.jks"), "changeme"),
        )
        p12 = writePKCS12(self.mktemp(), "changeit", self.certs.ca)
        for password in ("changeme", ""):
            self.assertIn(
                "wrong password for this PKCS#12 trust store (agent.http.trustStorePassword)",
                self.refused(p12, password),
            )

    def test_notAStore(self) -> None:
        """
        Content that is no store, whatever the file is called, is refused
        as such; so is a DER file that is not a PKCS#12 one (a certificate).
        """
        certificate = self.read(writePKCS12(self.mktemp(), "", self.certs.ca), "")[0]
        for data in (b"", b"\x00\x01garbage", b"\x30", certificate.public_bytes(Encoding.DER)):
            self.assertIn(
                "not a trust store: neither PEM certificates, PKCS#12 nor a Java key store",
                self.refused("truststore.jks", "changeit", data),
            )

    def test_empty(self) -> None:
        self.assertIn(
            "the trust store holds no certificate", self.refused(fixture("empty.jks"), "changeit")
        )

    def test_truncated(self) -> None:
        """
        A store cut short anywhere is one line, never a traceback, with a
        password or without (when nothing checks the digest).
        """
        for path in (
            fixture("truststore.jks"),
            writePKCS12(self.mktemp(), "changeit", self.certs.ca),
        ):
            data = FilePath(path).getContent()
            for length in range(len(data)):
                for password in ("changeit", ""):
                    self.refused(path, password, data[:length])
        self.assertIn(
            "a damaged JKS trust store: it ends too early",
            self.refused(JKS, "", FilePath(JKS).getContent()[:-1]),
        )

    def test_flippedByte(self) -> None:
        """
        With a password, any byte changed anywhere in a store is refused in
        one line; one changed inside a certificate, which only the digest
        can tell, is the wrong password or a damaged file.
        """
        data = FilePath(JKS).getContent()
        for offset in range(len(data)):
            damaged = bytearray(data)
            damaged[offset] ^= 0x01
            self.refused(JKS, "changeit", bytes(damaged))
        certificate = self.read(JKS, "")[0].public_bytes(Encoding.DER)
        damaged = bytearray(data)
        damaged[data.index(certificate) + len(certificate) - 1] ^= 0x01
        self.assertIn(
            "wrong password for this JKS trust store (agent.http.trustStorePassword), or the"
            " file is damaged",
            self.refused(JKS, "changeit", bytes(damaged)),
        )

    def test_hugeLengths(self) -> None:
        """
        A count or a length larger than the file is refused as soon as the
        bytes run out, without allocating what it claims.
        """
        header = b"\xfe\xed\xfe\xed" + struct.pack(">I", 2)
        entry = struct.pack(">IH", 2, 1) + b"a" + struct.pack(">QH", 0, 5) + b"X.509"
        for data in (
            header + struct.pack(">I", 0xFFFFFFFF),
            header + struct.pack(">I", 1) + entry + struct.pack(">I", 0xFFFFFFFF),
            header + struct.pack(">I", 1) + struct.pack(">IH", 2, 0xFFFF),
            header + struct.pack(">II", 1, 1) + b"\0\0" + struct.pack(">QI", 0, 0) + b"\xff" * 4,
        ):
            self.assertIn("ends too early", self.refused(JKS, "", data))

    def test_damagedJKS(self) -> None:
        """
        A Java store whose entry is not a certificate is named as damaged,
        with the entry's alias.
        """
        data = javaStore("changeit", [(b"broken", b"\x30\x03abc")])
        self.assertIn(
            "entry broken of this JKS trust store is not a readable X.509 certificate",
            self.refused(self.mktemp(), "changeit", data),
        )

    def test_badCertificateVersion(self) -> None:
        """
        A certificate whose X.509 version is not one (cryptography raises
        its own InvalidVersion, not a ValueError) is named as damaged too.
        """
        good = FilePath(STORE_CA).getContent()
        der = x509.load_pem_x509_certificate(good).public_bytes(Encoding.DER)
        at = der.find(b"\xa0\x03\x02\x01\x02")
        self.assertGreater(at, 0)
        bad = der[: at + 4] + b"\x7e" + der[at + 5 :]
        data = javaStore("changeit", [(b"odd", bad)])
        self.assertIn(
            "entry odd of this JKS trust store is not a readable X.509 certificate",
            self.refused(self.mktemp(), "changeit", data),
        )

    def test_modifiedUTF8(self) -> None:
        """
        Aliases are Java's modified UTF-8: NUL as two bytes, a character
        past U+FFFF as two encoded surrogates; anything else is damage.
        """
        alias = b"a\xc0\x80\xed\xa0\xbd\xed\xb8\x80"
        data = javaStore("changeit", [(alias, b"\x30\x03abc")])
        name = clip("a\x00\U0001f600")
        self.assertIn(
            f"entry {name} of this JKS",
            self.refused(self.mktemp(), "changeit", data),
        )
        data = javaStore("changeit", [(b"\xff\xfe", b"\x30\x03abc")])
        self.assertIn(
            "a damaged JKS trust store: a name is not modified UTF-8",
            self.refused(self.mktemp(), "changeit", data),
        )

    def test_unknownEntry(self) -> None:
        """
        An entry type Java does not write (or a secret key, which only
        JCEKS holds, in a JKS store) is damage.
        """
        data = bytearray(FilePath(fixture("ca-only.jks")).getContent())
        data[12:16] = struct.pack(">I", 3)
        self.assertIn(
            "a damaged JKS trust store: entry ca has the unknown type 3",
            self.refused(JKS, "", bytes(data)),
        )

    def test_version(self) -> None:
        data = bytearray(FilePath(JKS).getContent())
        data[4:8] = struct.pack(">I", 1)
        self.assertIn(
            "a JKS trust store of version 1, which promtwist does not read",
            self.refused(JKS, "", bytes(data)),
        )

    def test_jceks(self) -> None:
        """
        A JCEKS store (Java's other key store format) written by keytool is
        read like a JKS one: the same entries behind another magic number,
        under the same integrity digest.
        """
        path = fixture("truststore.jceks")
        self.assertEqual(_subjects(self.read(path, "changeit")), ["CN=promtwist test ca"])
        self.assertIn("wrong password for this JCEKS trust store", self.refused(path, "changeme"))

    def test_jceksSecretKey(self) -> None:
        """
        A JCEKS secret-key entry is a serialized Java object with no length
        before it, so nothing after it can be found: the store is refused,
        naming the entry, rather than read in part.
        """
        self.assertIn(
            "entry secret of this JCEKS trust store is a secret key, which promtwist does not"
            " read; keep only certificates in a trust store",
            self.refused(fixture("secret.jceks"), "changeit"),
        )


class ReloadTests(SynchronousTestCase):
    def test_restartNeeded(self) -> None:
        """
        The store is read at startup only: a reload that changes its path
        or password names them as needing a restart.
        """
        old = AgentSettings(https_trust_store_path="a.jks", https_trust_store_password="x")
        new = replace(old, https_trust_store_path="b.jks", https_trust_store_password="y")
        self.assertEqual(
            AGENT.changedKeys(old, new),
            ("agent.http.trustStorePath", "agent.http.trustStorePassword"),
        )
