# -*- test-case-name: promtwist.test.test_proxyurl -*-
"""
Which targets name the proxy itself, so that no agent claims one and no
C{proxy_url} scrape is sent round to the proxy again.

An agent that claimed C{127.0.0.1:8080} on a proxy listening there would
be sent the scrapes Prometheus addressed to that target, fetch them from
the proxy, and be sent them again: a loop that fills every scrape slot with
two requests. The proxy cannot know every name DNS gives it, but it knows
its ports and the names that always mean the machine it runs on: the
loopback and unspecified addresses, C{localhost}, and its own host name.
A target on one of those hosts at one of the proxy's ports is the proxy.
"""

from __future__ import annotations

import ipaddress
import socket

from promtwist.addresses import normalAddress
from promtwist.config.settings import ProxySettings
from promtwist.hostkeys import isHostKey, parseHostKey


def _hostNames() -> frozenset[str]:
    # gethostname() reads the kernel's name: no resolver is asked.
    name = socket.gethostname().lower().removesuffix(".")
    return frozenset({"localhost", name, name.partition(".")[0]} - {""})


class OwnAddresses:
    """
    The proxy's own C{host:port}s, as far as it can tell them.

    @ivar ports: the ports the proxy's settings listen on.
    @ivar names: the host names that always mean this machine.
    """

    def __init__(self, settings: ProxySettings) -> None:
        ports = {settings.http_port, settings.agent_port}
        if settings.admin_enabled:
            ports.add(settings.admin_port)
        if settings.metrics_enabled:
            ports.add(settings.metrics_port)
        self.ports = frozenset(port for port in ports if port > 0)
        self.names = _hostNames()

    def isOwnHost(self, host: str) -> bool:
        """
        Whether C{host} (as L{promtwist.hostkeys.checkHost} spells it) is
        always this machine.
        """
        try:
            # An IPv4-mapped address (::ffff:127.0.0.1) reaches the same
            # socket as the IPv4 one, which Python's is_loopback does not
            # see through (before 3.13).
            address = normalAddress(ipaddress.ip_address(host))
        except ValueError:
            return host in self.names or host.endswith(".localhost")
        return address.is_loopback or address.is_unspecified

    def isOwn(self, host: str, port: int) -> bool:
        """
        Whether the target C{host:port} is this proxy.
        """
        return port in self.ports and self.isOwnHost(host)

    def claimsOwn(self, key: str) -> bool:
        """
        Whether the registry key C{key} claims one of the proxy's own
        addresses. A claim on any port of this machine's name (a PushProx
        client running beside the proxy) is not one: its other ports are
        its own, and a scrape of the proxy's ports is refused when asked
        for (L{isOwn}).
        """
        if not isHostKey(key):
            return False
        host, port = parseHostKey(key)
        return port is not None and self.isOwn(host, port)
