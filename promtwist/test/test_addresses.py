"""
Tests for L{promtwist.addresses}: peers and allowed-network entries in one
normal form.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from promtwist.addresses import normalAddress, normalNetworks, peerAddress, peerName


def _networks(entry: str) -> list[str]:
    return [str(network) for network in normalNetworks(entry)]


class NormalAddressTests(SynchronousTestCase):
    def test_mappedIsIPv4(self) -> None:
        self.assertEqual(
            normalAddress(ipaddress.ip_address("::ffff:10.1.2.3")),
            ipaddress.IPv4Address("10.1.2.3"),
        )

    def test_othersUnchanged(self) -> None:
        for text in ("10.1.2.3", "2001:db8::1", "::1", "::10.1.2.3"):
            ip = ipaddress.ip_address(text)
            self.assertEqual(normalAddress(ip), ip)


class PeerAddressTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(
            peerAddress(IPv4Address("TCP", "192.0.2.7", 1)), ipaddress.IPv4Address("192.0.2.7")
        )

    def test_mappedPeer(self) -> None:
        """
        An IPv4 client of a dual-stack listener is its IPv4 address.
        """
        self.assertEqual(
            peerAddress(IPv6Address("TCP", "::ffff:192.0.2.7", 1)),
            ipaddress.IPv4Address("192.0.2.7"),
        )

    def test_zoneDropped(self) -> None:
        self.assertEqual(
            peerAddress(IPv6Address("TCP", "fe80::1%eth0", 1)), ipaddress.IPv6Address("fe80::1")
        )

    def test_noIP(self) -> None:
        self.assertIsNone(peerAddress(UNIXAddress(b"/run/s.sock")))
        self.assertIsNone(peerAddress(None))
        self.assertIsNone(peerAddress(IPv4Address("TCP", "not-an-address", 1)))


class NormalNetworksTests(SynchronousTestCase):
    def test_asWritten(self) -> None:
        self.assertEqual(_networks("10.0.0.0/8"), ["10.0.0.0/8"])
        self.assertEqual(_networks("2001:db8::/32"), ["2001:db8::/32"])
        self.assertEqual(_networks("10.1.2.3/8"), ["10.0.0.0/8"])

    def test_mappedIsIPv4(self) -> None:
        """
        An entry inside C{::ffff:0:0/96} is the IPv4 network it maps.
        """
        self.assertEqual(_networks("::ffff:10.0.0.0/104"), ["10.0.0.0/8"])
        self.assertEqual(_networks("::ffff:192.0.2.7"), ["192.0.2.7/32"])
        self.assertEqual(_networks("::ffff:0:0/96"), ["0.0.0.0/0"])

    def test_holdingTheMappedRange(self) -> None:
        """
        An IPv6 network that holds the whole mapped range holds every IPv4
        address too.
        """
        self.assertEqual(_networks("::/0"), ["::/0", "0.0.0.0/0"])
        self.assertEqual(_networks("::/80"), ["::/80", "0.0.0.0/0"])
        self.assertEqual(_networks("::/96"), ["::/96"])

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, normalNetworks, "10.0.0.0/33")
        self.assertRaises(ValueError, normalNetworks, "somewhere")


class PeerNameTests(SynchronousTestCase):
    """
    L{peerName} writes a peer as the logs show it: dialable, an IPv4 client
    of a dual-stack listener as IPv4, IPv6 in brackets.
    """

    def name(self, address: object) -> str:
        return peerName(StringTransport(peerAddress=address))

    def test_forms(self) -> None:
        self.assertEqual(self.name(IPv4Address("TCP", "192.0.2.7", 41000)), "192.0.2.7:41000")
        self.assertEqual(
            self.name(IPv6Address("TCP", "::ffff:192.0.2.7", 41000)), "192.0.2.7:41000"
        )
        self.assertEqual(self.name(IPv6Address("TCP", "::1", 41000)), "[::1]:41000")
        self.assertEqual(self.name(UNIXAddress(b"/run/promtwist.sock")), "/run/promtwist.sock")
        self.assertEqual(self.name(UNIXAddress(None)), "a unix-socket client")

    def test_noPeer(self) -> None:
        self.assertEqual(peerName(object()), "?")
