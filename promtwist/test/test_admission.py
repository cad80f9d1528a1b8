"""
Tests for L{promtwist.proxy.admission}'s counting of connections by source.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from promtwist.proxy.admission import hostOf


class HostOfTests(SynchronousTestCase):
    def test_ipv4OneSourceHoweverItArrives(self) -> None:
        """
        An IPv4 client counts as its address, plain or mapped: the same
        host is one source on an IPv4 and on a dual-stack listener.
        """
        self.assertEqual(hostOf(IPv4Address("TCP", "192.0.2.7", 1)), "192.0.2.7")
        self.assertEqual(hostOf(IPv6Address("TCP", "::ffff:192.0.2.7", 1)), "192.0.2.7")

    def test_ipv6ByItsSlash64(self) -> None:
        one = hostOf(IPv6Address("TCP", "2001:db8:1:2::7", 1))
        other = hostOf(IPv6Address("TCP", "2001:db8:1:2:ffff::1%eth0", 1))
        self.assertEqual(one, "2001:db8:1:2::/64")
        self.assertEqual(other, one)
        self.assertNotEqual(hostOf(IPv6Address("TCP", "2001:db8:1:3::7", 1)), one)

    def test_noIP(self) -> None:
        self.assertEqual(hostOf(UNIXAddress(b"/run/s.sock")), "")
        self.assertEqual(hostOf(None), "")
