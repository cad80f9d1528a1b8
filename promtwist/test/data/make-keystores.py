"""
Make the Java key store fixtures of promtwist.test.test_truststore, once,
with tools other than promtwist's own reader: pyjks (JKS) and, when they
are installed, Java's keytool (JCEKS, and keypair.jks) and openssl
(keypair.p12). The tests read these files without either, so they are an
independent check of promtwist.truststore.

    python3 -m venv /tmp/venv-jks
    /tmp/venv-jks/bin/pip install pyjks cryptography
    cd promtwist/test/data && /tmp/venv-jks/bin/python make-keystores.py

The certificates (store-ca.pem; store-server.pem and store-server.key, for localhost and
127.0.0.1, signed by store-ca.pem) are made only when absent, valid for 100
years, so the committed stores never expire; rerunning the script remakes
the stores from the committed certificates. They are test material only.
"""

import datetime
import ipaddress
import os
import shutil
import subprocess
from typing import Any

# Installed only in the venv that runs this script, not promtwist's.
import jks  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSWORD = "changeit"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


def name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def writeKey(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


def makeCertificates() -> None:
    start = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    end = start + datetime.timedelta(days=36525)
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("promtwist test ca"))
        .issuer_name(name("promtwist test ca"))
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(caKey, hashes.SHA256())
    )
    serverKey = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(serverKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    # The CA's key is not kept: nothing else is to be signed by it.
    with open("store-ca.pem", "wb") as f:
        f.write(ca.public_bytes(PEM))
    with open("store-server.pem", "wb") as f:
        f.write(server.public_bytes(PEM))
    writeKey("store-server.key", serverKey)


def load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def save(path: str, entries: list[Any]) -> None:
    with open(path, "wb") as f:
        f.write(jks.KeyStore.new("jks", entries).saves(PASSWORD))
    # Read back by pyjks, integrity included, as a check of the fixture.
    jks.KeyStore.load(path, PASSWORD)


def makeStores() -> None:
    ca, server = load("store-ca.pem"), load("store-server.pem")
    with open("store-server.key", "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    pkcs8 = key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    trusted = jks.TrustedCertEntry.new("ca", ca.public_bytes(DER))
    # keytool -importcert of the CA and keytool -genkeypair's entry.
    own = jks.PrivateKeyEntry.new(
        "server", [server.public_bytes(DER), ca.public_bytes(DER)], pkcs8, "pkcs8"
    )
    save("truststore.jks", [trusted, own])
    save("ca-only.jks", [trusted])
    save("empty.jks", [])
    keytool = shutil.which("keytool")
    if keytool is None:
        print("no keytool: the JCEKS fixtures are left as they are")
        return
    for path in ("truststore.jceks", "secret.jceks"):
        if os.path.exists(path):
            os.remove(path)

    def run(*argv: str) -> None:
        common = ["-noprompt", "-storetype", "JCEKS", "-storepass", PASSWORD]
        subprocess.run([keytool, *argv, *common], check=True)

    run("-importcert", "-keystore", "truststore.jceks", "-alias", "ca", "-file", "store-ca.pem")
    run("-importcert", "-keystore", "secret.jceks", "-alias", "ca", "-file", "store-ca.pem")
    run(
        "-genseckey",
        "-keystore",
        "secret.jceks",
        "-alias",
        "secret",
        "-keyalg",
        "AES",
        "-keysize",
        "128",
        "-keypass",
        PASSWORD,
    )
    for path in ("truststore.jceks", "secret.jceks"):
        jks.KeyStore.load(path, PASSWORD)
    makeKeyPairStores(keytool)


def makeKeyPairStores(keytool: str) -> None:
    """
    keypair.p12 and keypair.jks: one private-key entry, the server's key with
    its certificate and the CA's as its chain, and nothing else; the JKS one
    converted from the PKCS#12 one by keytool, as a user moving a key pair
    into a Java store does. Java trusts the server's certificate of such a
    store (the entry's first), not its CA.
    """
    for path in ("keypair.p12", "keypair.jks"):
        if os.path.exists(path):
            os.remove(path)
    export = "openssl pkcs12 -export -in store-server.pem -inkey store-server.key"
    export += f" -certfile store-ca.pem -name server -passout pass:{PASSWORD} -out keypair.p12"
    subprocess.run(export.split(), check=True)
    convert = "-importkeystore -noprompt -srckeystore keypair.p12 -srcstoretype PKCS12"
    convert += f" -srcstorepass {PASSWORD} -destkeystore keypair.jks -deststoretype JKS"
    convert += f" -deststorepass {PASSWORD}"
    subprocess.run([keytool, *convert.split()], check=True)
    jks.KeyStore.load("keypair.jks", PASSWORD)


if __name__ == "__main__":
    if not os.path.exists("store-ca.pem"):
        makeCertificates()
    makeStores()
