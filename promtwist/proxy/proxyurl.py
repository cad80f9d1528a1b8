# -*- test-case-name: promtwist.test.test_proxyurl -*-
"""
Which target a Prometheus C{proxy_url} request names.

Prometheus scraping through an HTTP proxy sends the target's whole URL as the
request target (C{GET http://node1:9100/metrics?x=y HTTP/1.1}), and only such
a request is routed by target. An origin-form request (C{GET /metrics}) is
for one of the proxy's own paths whatever its C{Host} says: a C{Host} is the
client's to choose, and routing by it would let an agent that claims the
proxy's own C{host:port} take over every ordinary request. (PushProx routes
by absolute URI alone too.) An https
target is asked for as PushProx users do, with C{_scheme=https} in the query
(Prometheus would otherwise open a C{CONNECT} tunnel, which no proxy in the
middle can route by path). The rules here are strict and bounded: a request
that names a target badly is refused with what was wrong, never guessed at.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from promtwist.hostkeys import BadTarget, HostTarget, hostKey, parseHostPort
from promtwist.logs import clip

# The scheme of an absolute-form request target (RFC 3986 section 3.1).
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://")
# What a request path, or a query string on its way to an agent, may hold:
# printable ASCII without spaces (RFC 3986 characters and percent escapes; a
# few more that clients send raw, such as [ and ], are harmless).
_URI_BYTE = re.compile(rb"[^\x21-\x7e]")
SCHEME_PARAM = "_scheme"
_SCHEMES = ("http", "https")


class BadProxyRequest(Exception):
    """
    A request names a target in a way the proxy refuses.

    @ivar status: the HTTP status to answer with.
    @ivar kind: the refusal's kind, for the scrape records.
    """

    def __init__(self, reason: str, status: int = 400, kind: str = "bad_request") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.kind = kind


class Written(NamedTuple):
    """
    How Prometheus wrote a C{proxy_url} target: its port (C{""} when it
    gave none) and its whole query, C{_scheme} where it was. A PushProx
    client is sent them so, as PushProx's proxy sends it the request it got.
    """

    port: str
    query: str


class ProxyRoute(NamedTuple):
    """
    A host-routed request: the target and what to ask it for.

    @ivar path: the request's path, percent-encoded as sent, from its C{/}.
    @ivar query: the query without its C{?} and without C{_scheme}.
    """

    target: HostTarget
    path: str
    query: str
    written: Written

    @property
    def shown(self) -> str:
        """
        The target as records name it: its host key.
        """
        return hostKey(self.target.host, self.target.port)


def isProxyRequest(method: bytes, path: bytes) -> bool:
    """
    Whether a request is for another server, sent to this one as its
    proxy: a C{CONNECT}, or a request target (up to its C{?}) in absolute
    form.
    """
    return method == b"CONNECT" or _ABSOLUTE.match(path) is not None


def proxyRoute(path: bytes, query: bytes) -> ProxyRoute | None:
    """
    The target a request names, or L{None} if it is an ordinary request for
    one of the proxy's paths (origin form, C{/...}).

    @param path: the request target up to its C{?}.
    @raise BadProxyRequest: an absolute URI that names no usable target or
        whose path or query cannot be forwarded, or a request target in
        neither form (such as C{*}, which only C{OPTIONS} may send).
    """
    absolute = _ABSOLUTE.match(path)
    if absolute is not None:
        return _absolute(absolute.group(1).decode("ascii").lower(), path[absolute.end() :], query)
    if not path.startswith(b"/"):
        raise BadProxyRequest(
            f"request target {clip(path.decode('latin-1'))!r} is neither a path (/...)"
            " nor an absolute URL (http://host:port/...)"
        )
    return None


def _absolute(scheme: str, rest: bytes, query: bytes) -> ProxyRoute:
    if scheme not in _SCHEMES:
        raise BadProxyRequest(f"cannot proxy a {clip(scheme)!r} URL: only http and https")
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError:
        raise BadProxyRequest("the target's host is not ASCII") from None
    if "@" in text:
        raise BadProxyRequest(
            "the target URL holds user info (user@host): send credentials in"
            " the Authorization header instead"
        )
    try:
        name, port = parseHostPort(text, scheme)
    except BadTarget as e:
        raise BadProxyRequest(f"bad target in the request URL: {e}") from None
    given, remaining = _schemeParam(query)
    # An https:// request target (which Prometheus does not send) is https
    # unless _scheme says otherwise.
    chosen = given or ("https" if scheme == "https" else "")
    afterHost = text.rpartition("]")[2] if text.startswith("[") else text
    written = Written(afterHost.partition(":")[2], query.decode("ascii"))
    return ProxyRoute(HostTarget(chosen, name, port), _checkedPath(path), remaining, written)


def _checkedPath(path: bytes) -> str:
    bad = _URI_BYTE.search(path)
    if bad is not None:
        raise BadProxyRequest(
            f"request path has byte 0x{bad.group()[0]:02x} at position {bad.start()}"
        )
    if b"#" in path:
        raise BadProxyRequest("request path holds a fragment (#)")
    return path.decode("ascii")


def _schemeParam(query: bytes) -> tuple[str, str]:
    """
    The scheme C{_scheme} asks for (C{""} if none) and the query without it.

    @raise BadProxyRequest: C{_scheme} is not http or https, or is given
        twice with different values.
    """
    bad = badQueryByte(query)
    if bad:
        raise BadProxyRequest(bad)
    text = query.decode("ascii")
    if SCHEME_PARAM not in text:
        return "", text
    kept: list[str] = []
    schemes: set[str] = set()
    for param in text.split("&"):
        name, _, value = param.partition("=")
        if name == SCHEME_PARAM:
            if value.lower() not in _SCHEMES:
                raise BadProxyRequest(
                    f"{SCHEME_PARAM}={clip(value)!r} is not a scheme: http or https"
                )
            schemes.add(value.lower())
        else:
            kept.append(param)
    if len(schemes) > 1:
        raise BadProxyRequest(f"{SCHEME_PARAM} is given as both http and https")
    return schemes.pop(), "&".join(kept)


def badQueryByte(query: bytes) -> str:
    """
    Why C{query} cannot be forwarded, or C{""} if it can: a byte outside
    printable ASCII, or a fragment, which is the client's own and never part
    of a request target (RFC 9112 section 3.2).
    """
    bad = _URI_BYTE.search(query)
    if bad is not None:
        return f"query string has byte 0x{bad.group()[0]:02x} at position {bad.start()}"
    fragment = query.find(b"#")
    if fragment >= 0:
        return f"query string holds a fragment (#) at position {fragment}"
    return ""
