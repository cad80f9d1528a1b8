"""
Tests for L{promtwist.truststore}: PKCS#12 and Java trust stores made by
the tests themselves (L{promtwist.test.certs}), read without a network.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import jks
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config import AGENT, AgentSettings, ConfigError
from promtwist.test.certs import certificates, writeJKS, writePKCS12
from promtwist.truststore import storeCertificates

KEY = "agent.http.trustStorePath"


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
        A Java key store trusts its trusted-certificate entries and the
        certificate of its private-key entries, as Java's trust manager
        does; an empty password reads it without the integrity check, as
        Java does without a password.
        """
        store = writeJKS(self.mktemp(), "changeit", self.certs.ca, key=self.certs.server)
        self.assertEqual(_subjects(self.read(store, "changeit")), ["CN=ca", "CN=localhost"])
        self.assertEqual(_subjects(self.read(store, "")), ["CN=ca", "CN=localhost"])

    def test_wrongPassword(self) -> None:
        jksStore = writeJKS(self.mktemp(), "changeit", self.certs.ca)
        self.assertIn(
            "wrong password for this JKS trust store (agent.http.trustStorePassword)",
            self.refused(jksStore, "changeme"),
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
        store = self.mktemp()
        with open(store, "wb") as f:
            f.write(jks.KeyStore.new("jks", []).saves("changeit"))
        self.assertIn("the trust store holds no certificate", self.refused(store, "changeit"))

    def test_truncated(self) -> None:
        """
        A store cut short anywhere is one line, never a traceback.
        """
        for write in (writeJKS, writePKCS12):
            path = write(self.mktemp(), "changeit", self.certs.ca)
            with open(path, "rb") as f:
                data = f.read()
            for length in range(len(data)):
                self.refused(path, "changeit", data[:length])

    def test_damagedJKS(self) -> None:
        """
        A Java store whose entry is not a certificate is named as damaged,
        with the entry's alias.
        """
        store = jks.KeyStore.new("jks", [jks.TrustedCertEntry.new("broken", b"\x30\x03abc")])
        path = self.mktemp()
        self.assertIn(
            "entry broken of this JKS trust store is not a readable X.509 certificate",
            self.refused(path, "changeit", store.saves("changeit")),
        )

    def test_jceks(self) -> None:
        """
        A JCEKS store (Java's other key store format, which pyjks reads but
        does not write) is read like a JKS one: the same trusted-certificate
        entries behind another magic number, under the same integrity hash.
        """
        path = writeJKS(self.mktemp(), "changeit", self.certs.ca)
        with open(path, "rb") as f:
            body = b"\xce\xce\xce\xce" + f.read()[4:-20]
        whitened = "changeit".encode("utf-16be") + b"Mighty Aphrodite" + body
        data = body + hashlib.sha1(whitened).digest()
        self.assertEqual(_subjects(storeCertificates(KEY, path, data, "changeit")), ["CN=ca"])
        self.assertIn(
            "wrong password for this JCEKS trust store", self.refused(path, "changeme", data)
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
            AGENT.changedKeys(old, new, ()),
            ["agent.http.trustStorePath", "agent.http.trustStorePassword"],
        )
