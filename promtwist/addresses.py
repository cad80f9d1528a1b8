# -*- test-case-name: promtwist.test.test_addresses -*-
"""
Client addresses and allowed-network entries in one normal form, so that
each compares with the other as an operator means it.

An IPv4 client reaches a dual-stack listener as an IPv4-mapped IPv6 address
(C{::ffff:192.0.2.7}) and an IPv4 listener as plain C{192.0.2.7}; an
operator may write the network either way too (C{192.0.2.0/24} or
C{::ffff:192.0.2.0/120}). Python's L{ipaddress} never finds an address of
one family in a network of the other, so both sides are put in one form
first: whatever lies in C{::ffff:0:0/96} is IPv4.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from promtwist.hostkeys import hostPort

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Where IPv6 keeps the IPv4 addresses (RFC 4291 §2.5.5.2).
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_EVERY_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")


def normalAddress(ip: IPAddress) -> IPAddress:
    """
    C{ip}, as IPv4 when it is an IPv4-mapped IPv6 address.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def peerAddress(address: IAddress | None) -> IPAddress | None:
    """
    The IP address of a connection's peer in normal form (L{normalAddress},
    without an IPv6 zone such as C{%eth0}); L{None} for a peer that has none
    (a unix socket, a test transport).
    """
    if not isinstance(address, IPv4Address | IPv6Address):
        return None
    return _hostAddress(address.host)


@lru_cache(maxsize=4096)
def _hostAddress(host: str) -> IPAddress | None:
    """
    L{peerAddress} of a peer's C{host}, remembered: every request on the
    scrape port asks for it, more than once, and parsing an address costs
    more than the rest of a small request's checks. The addresses are
    immutable, and the cache is bounded, however many peers come and go.
    """
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    return normalAddress(ip)


def socketHostPort(address: IPv4Address | IPv6Address) -> str:
    """
    A socket address as C{host:port} another program can dial (a Prometheus
    target, a URL's authority): an IPv4-mapped address as the IPv4 address
    it maps, any other IPv6 address (its zone kept) in brackets.
    """
    try:
        host = str(normalAddress(ipaddress.ip_address(address.host)))
    except ValueError:
        host = address.host
    return hostPort(host, address.port)


def peerName(transport: object) -> str:
    """
    A connection's peer as the logs name it: C{host:port} as
    L{socketHostPort} writes it (C{192.0.2.7:41000} for an IPv4 client of a
    dual-stack listener, C{[2001:db8::7]:41000}), a unix socket's path, or
    C{?} for a transport that has no peer.
    """
    getPeer = getattr(transport, "getPeer", None)
    if getPeer is None:
        return "?"
    peer = getPeer()
    if isinstance(peer, IPv4Address | IPv6Address):
        return socketHostPort(peer)
    if isinstance(peer, UNIXAddress):
        # A unix socket's client has no name of its own as a rule.
        return os.fsdecode(peer.name) if peer.name else "a unix-socket client"
    return str(peer)


def normalNetworks(entry: str) -> tuple[IPNetwork, ...]:
    """
    The networks an allowed-networks entry stands for, in normal form: the
    part of it inside C{::ffff:0:0/96} as the IPv4 network it maps, the rest
    as written. C{::ffff:10.0.0.0/104} is C{10.0.0.0/8}; C{::/0}, which
    holds the mapped range, is itself and C{0.0.0.0/0}.

    @param entry: a network or an address (C{strict=False}: host bits are
        dropped, as configuration accepts them).
    @raise ValueError: if C{entry} is neither.
    """
    network = ipaddress.ip_network(entry, strict=False)
    if not isinstance(network, ipaddress.IPv6Network) or not network.overlaps(MAPPED):
        return (network,)
    if network.subnet_of(MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return (ipaddress.IPv4Network((mapped, network.prefixlen - MAPPED.prefixlen)),)
    # A network holding the whole mapped range holds every IPv4 address.
    return (network, _EVERY_IPV4)
