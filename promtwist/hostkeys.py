# -*- test-case-name: promtwist.test.test_hostkeys -*-
"""
Host-routed targets: the C{host:port} a Prometheus C{proxy_url} scrape names,
checked and spelled one way, and the registry key that claims it.

A host-routed claim lives in the proxy's registry beside the paths, under a
key no path can be: RFC 3986's network-path form, C{//host:port} (the host on
any port: C{//host}). Paths never begin with C{/}
(L{promtwist.proxy.registration.checkPath}), so the two key spaces cannot
meet, and everything the registry does for paths (standbys, budgets,
departures, authorization) it does for targets too.

Both ends use this module: the agent to check what it declares and what it
is asked for, the proxy to check what Prometheus and agents send.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import NamedTuple

from promtwist.logs import clip

# A DNS name as an operator writes one: letters, digits, hyphens and (for
# service records and Kubernetes names) underscores, in dot-separated labels.
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_MAX_NAME = 253
_DEFAULT_PORTS = {"http": 80, "https": 443}
KEY_PREFIX = "//"


class BadTarget(ValueError):
    """
    A host or port that names no target; the message says what is wrong.
    """


class HostTarget(NamedTuple):
    """
    One host-routed target as a scrape names it.

    @ivar scheme: C{"http"} or C{"https"} when the scrape asked for one
        (C{_scheme}), C{""} when the serving end's own declaration decides.
    @ivar host: lower-case, an IPv6 address without brackets.
    """

    scheme: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """
        C{host:port}, as Prometheus' C{instance} label and discovery show it.
        """
        return hostPort(self.host, self.port)


@lru_cache(maxsize=4096)
def checkHost(host: str) -> str:
    """
    C{host} as keys and requests spell it: lower-case, an IPv6 address
    without brackets and in its compressed form. Remembered (a host that
    passes, within a bounded cache): every host-routed scrape checks its
    target's host three times, in its URL and in both keys that may claim
    it.

    @raise BadTarget: it is neither a DNS name nor an IP address, or it
        is an IPv6 address with a zone (C{fe80::1%eth0}): a zone names an
        interface of one machine, which the proxy and the agent do not
        share, and a URL spells it C{%25eth0}, a declaration C{%eth0}, so
        the two would never name the same target.
    """
    if ":" in host and "%" in host:
        raise BadTarget(
            f"host {clip(host)!r} has an IPv6 zone (%...), which targets cannot"
            " name: use the address without it, or a name"
        )
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise BadTarget(f"host {clip(host)!r} is not an IPv6 address") from None
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise BadTarget(f"host {clip(host)!r} is not an IPv6 address") from None
    # A fully qualified name's final dot names the same host.
    name = host.lower().removesuffix(".")
    if not name:
        raise BadTarget("no host given")
    if len(name) > _MAX_NAME:
        raise BadTarget(f"host name has {len(name)} characters, more than {_MAX_NAME}")
    for label in name.split("."):
        if not _LABEL.match(label):
            raise BadTarget(
                f"host {clip(host)!r} is not a DNS name or IP address"
                " (letters, digits, '-' and '_' in dot-separated labels)"
            )
    return name


def checkPort(text: str) -> int:
    """
    A port number given as text; leading zeros are allowed, as RFC 3986
    allows them (C{00080} is port 80).

    @raise BadTarget: it is not a decimal number from 1 to 65535.
    """
    if not text.isascii() or not text.isdigit():
        raise BadTarget(f"port {clip(text)!r} is not a number")
    digits = text.lstrip("0")
    if len(digits) > 5 or not 0 < int(digits or "0") < 65536:
        raise BadTarget(f"port {clip(text)!r} is out of range (1-65535)")
    return int(digits)


def parseHostPort(text: str, scheme: str = "") -> tuple[str, int]:
    """
    Take C{host:port} (C{[v6]:port}) apart and check both.

    @param scheme: the default port's scheme when C{text} has none; without
        one a port is required.
    @raise BadTarget: naming what is wrong.
    """
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadTarget(f"{clip(text)!r} has an unclosed '['")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise BadTarget(f"{clip(text)!r}: expected ':port' after the IPv6 address")
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" in text:
        raise BadTarget(f"{clip(text)!r}: write an IPv6 address in brackets, [addr]:port")
    if not port:
        if ":" in text.rpartition("]")[2]:
            raise BadTarget(f"{clip(text)!r} has an empty port")
        if scheme not in _DEFAULT_PORTS:
            raise BadTarget(f"{clip(text)!r} has no port: write host:port")
        return checkHost(host), _DEFAULT_PORTS[scheme]
    return checkHost(host), checkPort(port)


def hostPort(host: str, port: int) -> str:
    """
    C{host:port}, an IPv6 address bracketed.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hostKey(host: str, port: int | None) -> str:
    """
    The registry key claiming C{host:port}, or C{host} on any port when
    C{port} is L{None}.

    @raise BadTarget: C{host} or C{port} names no target.
    """
    host = checkHost(host)
    if port is None:
        return KEY_PREFIX + (f"[{host}]" if ":" in host else host)
    if not 0 < port < 65536:
        raise BadTarget(f"port {port} is out of range (1-65535)")
    return KEY_PREFIX + hostPort(host, port)


def isHostKey(key: str) -> bool:
    return key.startswith(KEY_PREFIX)


def spelled(key: str) -> str:
    """
    A registry key as logs and pages name it: C{/path}, or a host key as it
    is (C{//host:port}).
    """
    return key if isHostKey(key) else "/" + key


def parseHostKey(key: str) -> tuple[str, int | None]:
    """
    The host and port (L{None}: any port) a key from L{hostKey} claims.

    @raise BadTarget: C{key} is not one L{hostKey} makes.
    """
    if not isHostKey(key):
        raise BadTarget(f"{clip(key)!r} is not a host key (//host:port)")
    text = key[len(KEY_PREFIX) :]
    if (text.startswith("[") and text.endswith("]")) or ":" not in text:
        host, port = checkHost(text), None
    else:
        host, port = parseHostPort(text)
    if hostKey(host, port) != key:
        raise BadTarget(f"{clip(key)!r} is not in canonical form ({hostKey(host, port)})")
    return host, port


def claimsPort(key: str) -> bool:
    """
    Whether a host key claims one port (C{//host:port}) rather than the
    host on any port (C{//host}).
    """
    return ":" in key and not key.endswith("]")


def keyTarget(key: str) -> str:
    """
    What a host key claims as people write it: C{host:port}, or C{host} for
    any port.
    """
    return key[len(KEY_PREFIX) :]
