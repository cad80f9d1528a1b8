"""
Tests for L{promtwist.proxy.grpcbuffers}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import Identity, MiB, ProxySettings
from promtwist.proxy.grpcbuffers import UnfinishedMessages, sourceName


class SourceNameTests(SynchronousTestCase):
    def test_identityOnItsAddress(self) -> None:
        """
        A call counts under its identity on its address, an IPv6 one by its
        /64, so that new addresses from one /64 are one source.
        """
        identity = Identity("team_a", "token-a")
        self.assertEqual(
            sourceName(identity, IPv4Address("TCP", "192.0.2.7", 1)),
            "identity team_a from 192.0.2.7",
        )
        self.assertEqual(
            sourceName(identity, IPv6Address("TCP", "2001:db8::1", 1)),
            sourceName(identity, IPv6Address("TCP", "2001:db8::ffff:2", 2)),
        )

    def test_noIdentity(self) -> None:
        """
        A call that proved no identity at its headers counts under its
        address alone; one without an address under C{?}.
        """
        self.assertEqual(
            sourceName(None, IPv4Address("TCP", "192.0.2.7", 1)),
            "calls of no identity yet from 192.0.2.7",
        )
        self.assertEqual(sourceName(None, None), "calls of no identity yet from ?")


class UnfinishedMessagesTests(SynchronousTestCase):
    def test_shareNamesTheSetting(self) -> None:
        """
        One source holds at most half of the budget; the refusal names the
        setting, and what is given back may be taken again.
        """
        budget = UnfinishedMessages(ProxySettings(max_grpc_message_buffer_mbytes=8))
        self.assertIsNone(budget.take(3 * MiB, "identity a from 192.0.2.7"))
        refused = budget.take(3 * MiB, "identity a from 192.0.2.7")
        assert refused is not None
        self.assertIn("half of proxy.internal.maxGrpcMessageBufferMBytes", refused)
        self.assertIn("unfinished gRPC messages", refused)
        self.assertIsNone(budget.take(3 * MiB, "identity b from 192.0.2.7"))
        budget.give(3 * MiB, "identity a from 192.0.2.7")
        self.assertIsNone(budget.take(3 * MiB, "identity a from 192.0.2.7"))
