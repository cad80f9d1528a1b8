"""
Tests for L{promtwist.hostkeys}: how targets are spelled and keyed.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from promtwist.hostkeys import (
    BadTarget,
    HostTarget,
    checkHost,
    hostKey,
    isHostKey,
    keyTarget,
    parseHostKey,
    parseHostPort,
)
from promtwist.proxy.registration import RegistrationRefused, checkPath


class HostKeyTests(SynchronousTestCase):
    def test_keys(self) -> None:
        """
        A key is the target in network-path form, lower-cased, an IPv6
        address bracketed; without a port it claims the host on any port.
        """
        self.assertEqual(hostKey("Node1.Example.", 9100), "//node1.example:9100")
        self.assertEqual(hostKey("node1", None), "//node1")
        self.assertEqual(hostKey("::1", 9100), "//[::1]:9100")
        self.assertEqual(hostKey("[0:0::1]", None), "//[::1]")
        self.assertEqual(keyTarget("//node1:9100"), "node1:9100")

    def test_noPathIsAKey(self) -> None:
        """
        Paths and host keys cannot meet: every key is refused as a path.
        """
        for key in (hostKey("node1", 9100), hostKey("node1", None)):
            self.assertTrue(isHostKey(key))
            self.assertRaises(RegistrationRefused, checkPath, key)
        self.assertFalse(isHostKey("node1/metrics"))

    def test_roundTrip(self) -> None:
        for host, port in [("node1", 9100), ("10.0.0.1", 1), ("::1", 65535), ("h", None)]:
            self.assertEqual(parseHostKey(hostKey(host, port)), (host, port))

    def test_parseHostKeyRefuses(self) -> None:
        """
        A key not as L{hostKey} spells it is refused, saying so.
        """
        for key, why in [
            ("node1:9100", "not a host key"),
            ("//Node1:9100", "canonical form (//node1:9100)"),
            ("//node1:0", "out of range"),
            ("//node1:x", "not a number"),
            ("//a b", "not a DNS name"),
        ]:
            e = self.assertRaises(BadTarget, parseHostKey, key)
            self.assertIn(why, str(e))

    def test_hostPort(self) -> None:
        self.assertEqual(parseHostPort("node1:9100"), ("node1", 9100))
        self.assertEqual(parseHostPort("[::1]:80"), ("::1", 80))
        self.assertEqual(parseHostPort("node1", "https"), ("node1", 443))
        self.assertEqual(HostTarget("", "::1", 80).address, "[::1]:80")

    def test_leadingZeros(self) -> None:
        """
        A port with leading zeros is the number they pad, however many (RFC
        3986 allows them), as a URL and as a declaration; out of range is
        out of range whatever its spelling.
        """
        for text, port in [
            ("node1:00080", 80),
            ("node1:019100", 19100),
            ("node1:" + "0" * 30 + "1", 1),
        ]:
            self.assertEqual(parseHostPort(text), ("node1", port), text)
        for text in ("node1:000000", "node1:0065536", "node1:" + "9" * 5000):
            e = self.assertRaises(BadTarget, parseHostPort, text)
            self.assertIn("out of range (1-65535)", str(e), text)

    def test_hostPortRefused(self) -> None:
        """
        Each malformed target is refused with what is wrong with it.
        """
        for text, why in [
            ("node1", "has no port"),
            ("node1:", "has an empty port"),
            ("node1:65536", "out of range (1-65535)"),
            ("node1:+80", "not a number"),
            ("node1:٣", "not a number"),
            ("::1:80", "in brackets"),
            ("[::1", "unclosed"),
            ("[::1]80", "expected ':port'"),
            ("[node1]:80", "not an IPv6 address"),
            (":80", "no host given"),
            ("no_dots..x:80", "not a DNS name"),
            ("a" * 64 + ":80", "not a DNS name"),
            ("-x:80", "not a DNS name"),
            ("%2e:80", "not a DNS name"),
            ("[fe80::1%eth0]:9100", "has an IPv6 zone"),
            ("[fe80::1%25eth0]:9100", "has an IPv6 zone"),
        ]:
            e = self.assertRaises(BadTarget, parseHostPort, text)
            self.assertIn(why, str(e), text)

    def test_longName(self) -> None:
        name = ".".join(["a" * 60] * 5)
        e = self.assertRaises(BadTarget, checkHost, name)
        self.assertIn("more than 253", str(e))
