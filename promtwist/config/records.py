# -*- test-case-name: promtwist.test.test_config -*-
"""
The list-valued keys, read entry by entry: C{agent.pathConfigs} (and the
discovery file's C{paths}), C{agent.targets}, C{proxy.auth}, C{agent.filters}, the allowed
networks and the agent's proxy endpoints. Each entry is checked as a whole
and its errors name it (C{agent.pathConfigs[2].url}).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, cast
from urllib.parse import urlsplit

from promtwist.config.keys import PORT, URL_PATH, urlPath
from promtwist.config.resolve import Gathered, asList, checkKnown, coerce, invalid, show
from promtwist.config.settings import (
    LEGACY_TOKEN_IDENTITY,
    ConfigError,
    Identity,
    MetricFilter,
    PathConfig,
    ProxyEndpoint,
)
from promtwist.hostkeys import BadTarget, hostKey, hostPort, parseHostPort
from promtwist.httpguard import UNIX_PEERS


def _endpoint(text: str, defaultPort: int) -> ProxyEndpoint:
    """
    Parse C{host[:port]}, C{[ipv6][:port]} or a bare IPv6 address, with an
    optional C{http://} or C{https://} in front.

    @raise ValueError: if C{text} is not such an address.
    """
    spec = text.strip()
    scheme, sep, rest = spec.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        spec = rest
    spec = spec.removesuffix("/")
    port: str | None = None
    if spec.startswith("["):
        host, bracket, after = spec[1:].partition("]")
        if not bracket or after[:1] not in ("", ":"):
            raise ValueError(text)
        port = after[1:] if after else None
    elif spec.count(":") == 1:
        host, _, port = spec.partition(":")
    else:
        host = spec
    if not re.fullmatch(r"[\w.%:-]+", host) or (port is not None and not port.isdigit()):
        raise ValueError(text)
    return ProxyEndpoint(host, PORT.apply(int(port) if port is not None else defaultPort))


_ENDPOINT = "host[:port] with a port in 1..65535"


def readProxyEndpoints(gathered: Gathered) -> tuple[ProxyEndpoint, ...]:
    """
    The proxies to dial, in failover order.

    C{--proxy} or C{$PROXY_HOSTNAME} (a comma-separated list) wins; then
    C{agent.proxy.endpoints}; then C{agent.proxy.hostname}.  Entries without a
    port use C{agent.proxy.port}.
    """
    port = gathered.values["agent.proxy.port"].value
    hostname = gathered.values["agent.proxy.hostname"]
    entries: list[tuple[object, str, str]] = []
    listed = gathered.file.get("agent.proxy.endpoints")
    if not hostname.direct and listed:
        key = "agent.proxy.endpoints"
        entries = [
            (entry, gathered.label, f"{key}[{i}]")
            for i, entry in enumerate(asList(listed, gathered.label, key))
        ]
    if not entries:
        entries = [
            (part, hostname.origin, "agent.proxy.hostname") for part in hostname.value.split(",")
        ]
    endpoints = []
    for entry, origin, key in entries:
        try:
            endpoints.append(_endpoint(coerce(str, entry, lenient=True), port))
        except ValueError as e:
            raise invalid(origin, key, _ENDPOINT, entry) from e
    return tuple(endpoints)


def _targetURL(value: str) -> str:
    parts = urlsplit(value)
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in value)
        # .port itself raises ValueError when the port is not a number.
        or parts.port == 0
    ):
        raise ValueError(value)
    return value


def _labels(value: object) -> dict[str, str]:
    """
    An entry's labels, given as JSON in a string (prometheus-proxy's form) or
    as a HOCON object, with every value made a string: http_sd accepts
    nothing else.
    """
    labels = json.loads(value) if isinstance(value, str) else value
    if isinstance(labels, Mapping):
        return {
            str(name): item if isinstance(item, str) else show(item)
            for name, item in labels.items()
        }
    raise ValueError(value)


_PATH_CONFIG_KEYS = ("name", "path", "url", "labels")


def readPathEntry(
    entry: object, where: str, label: str, lenient: Callable[[str], None] | None = None
) -> PathConfig:
    """
    One C{agent.pathConfigs} entry, checked.

    @param where: the entry's key, e.g. C{agent.pathConfigs[0]}, for messages.
    @param lenient: given, the entry is read as prometheus-proxy reads it where
        that is more forgiving: labels that are not a JSON object are dropped
        and a URL without a scheme gets C{http://}; each is told to this
        callable in one line.  Without it, both are errors.
    """
    if not isinstance(entry, Mapping):
        raise invalid(label, where, "an object with path and url", entry)
    for name in entry:
        checkKnown(str(name), _PATH_CONFIG_KEYS, label, f"{where}.")

    def check(name: str, parse: Callable[[Any], Any], expected: str) -> Any:
        if name not in entry:
            raise ConfigError(f"{label}: {where}: {name} is required")
        try:
            return parse(entry[name])
        except ValueError as e:
            raise invalid(label, f"{where}.{name}", expected, entry[name]) from e

    def string(value: object) -> str:
        return cast(str, coerce(str, value, lenient=True))

    def targetURL(value: object) -> str:
        text = string(value)
        if lenient is not None and "://" not in text and text.strip():
            lenient(
                f"{label}: {where}.url: {show(text)} has no scheme;"
                " prepending http://, as prometheus-proxy does"
            )
            text = f"http://{text}"
        return _targetURL(text)

    def labelsOf(value: object) -> dict[str, str]:
        try:
            return _labels(value)
        except ValueError:
            if lenient is None:
                raise
            lenient(
                f"{label}: {where}.labels: {show(value)} is not a JSON object;"
                " serving the path without labels, as prometheus-proxy does"
            )
            return {}

    path = check("path", lambda v: urlPath(string(v)), URL_PATH.expects)
    url = check("url", targetURL, "an http:// or https:// URL with a host")
    labels = check("labels", labelsOf, "a JSON object") if "labels" in entry else {}
    name = check("name", string, "a string").strip() if "name" in entry else ""
    return PathConfig(name=name or path, path=path, url=url, labels=labels)


def readPathConfigs(gathered: Gathered, warn: Callable[[str], None]) -> tuple[PathConfig, ...]:
    """
    The agent's static paths, in order.  A path listed twice is served by
    its last entry, as prometheus-proxy's path map keeps the last one put,
    with a warning naming both entries.
    """
    key = "agent.pathConfigs"
    entries = asList(gathered.file.get(key, []), gathered.label, key)
    found: dict[str, tuple[str, PathConfig]] = {}
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        config = readPathEntry(entry, where, gathered.label, warn)
        if config.path in found:
            warn(
                f"{gathered.label}: {where}.path: duplicate path {show(config.path)};"
                f" this entry replaces {found[config.path][0]}, as in prometheus-proxy"
            )
        # Re-inserting keeps the order of the last occurrences.
        found.pop(config.path, None)
        found[config.path] = (where, config)
    return tuple(config for _, config in found.values())


_TARGET_KEYS = ("target", "labels")
_TARGET = "[http:// or https://]host:port, the host empty for agent.fqdn"


def _targetEntry(text: str, fqdn: str) -> PathConfig:
    """
    One target as C{agent.targets} gives it: C{[scheme://]host:port}, the
    host empty for C{fqdn}.

    @raise ValueError: naming what is wrong.
    """
    scheme, sep, rest = text.strip().partition("://")
    if not sep:
        scheme, rest = "http", text.strip()
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme {scheme!r} is not http or https")
    if rest.startswith(":"):
        rest = (f"[{fqdn}]" if ":" in fqdn else fqdn) + rest
    try:
        host, port = parseHostPort(rest)
    except BadTarget as e:
        raise ValueError(str(e)) from None
    address = hostPort(host, port)
    return PathConfig(f"{scheme}://{address}", hostKey(host, port), f"{scheme}://{address}/")


def readTargets(gathered: Gathered, fqdn: str) -> tuple[PathConfig, ...]:
    """
    C{agent.targets}: the hosts and ports the agent serves to C{proxy_url}
    scrapes (and the only ones it fetches for them), each a string or an
    object with C{target} and C{labels}; a target listed twice is an error.
    """
    key = "agent.targets"
    label = gathered.label
    found: dict[str, str] = {}
    targets = []
    for index, entry in enumerate(asList(gathered.file.get(key, []), label, key)):
        where = f"{key}[{index}]"
        labels: dict[str, str] = {}
        if isinstance(entry, Mapping):
            for name in entry:
                checkKnown(str(name), _TARGET_KEYS, label, f"{where}.")
            if "target" not in entry:
                raise ConfigError(f"{label}: {where}: target is required")
            if "labels" in entry:
                try:
                    labels = _labels(entry["labels"])
                except ValueError as e:
                    raise invalid(label, f"{where}.labels", "a JSON object", entry["labels"]) from e
            text, where = entry["target"], f"{where}.target"
        else:
            text = entry
        try:
            config = _targetEntry(str(coerce(str, text, lenient=True)), fqdn)
        except ValueError as e:
            raise ConfigError(f"{label}: {where}: {show(text)}: {e} (expected {_TARGET})") from e
        if config.path in found:
            raise ConfigError(
                f"{label}: {where}: target {show(config.name)} is also {found[config.path]}"
            )
        found[config.path] = where
        targets.append(replace(config, labels=labels))
    return tuple(targets)


_IDENTITY_KEYS = ("name", "token", "paths", "perAgent", "targets")
_GLOB = re.compile(r"[^#%\s]+\Z")


def readIdentities(gathered: Gathered, legacyToken: str) -> tuple[Identity, ...]:
    """
    C{proxy.auth}, checked: names and tokens unique (the legacy
    C{proxy.agentToken} included), every glob a plain path pattern. A token
    may be left out only when agents present client certificates, whose
    subject then names the identity.
    """
    key = "proxy.auth"
    label = gathered.label
    certificates = bool(gathered.values["proxy.tls.trustCertCollectionFilePath"].value)
    identities: list[Identity] = []
    names: dict[str, str] = {}
    tokens: dict[str, str] = {LEGACY_TOKEN_IDENTITY: legacyToken} if legacyToken else {}
    for index, entry in enumerate(asList(gathered.file.get(key, []), label, key)):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise invalid(label, where, "an object with name, token and paths", entry)
        for name in entry:
            checkKnown(str(name), _IDENTITY_KEYS, label, f"{where}.")
        name = str(coerce(str, entry.get("name", ""), lenient=True)).strip()
        token = str(coerce(str, entry.get("token", ""), lenient=True))
        if not name:
            raise ConfigError(f"{label}: {where}.name is required")
        if name in names or name == LEGACY_TOKEN_IDENTITY:
            raise ConfigError(
                f"{label}: {where}.name: duplicate identity name {show(name)}"
                f" (also {names.get(name, 'the legacy proxy.agentToken identity')})"
            )
        if not token and not certificates:
            raise ConfigError(
                f"{label}: {where}.token is required"
                " (or client certificates, with proxy.tls.trustCertCollectionFilePath)"
            )
        for other, otherToken in tokens.items():
            if token and otherToken == token:
                raise ConfigError(
                    f"{label}: {where}.token: the same token as identity {show(other)};"
                    " every identity needs its own token"
                )
        paths = tuple(
            str(coerce(str, glob, lenient=True)).lstrip("/")
            for glob in asList(entry.get("paths", []), label, f"{where}.paths")
        )
        for glob in paths:
            if not _GLOB.match(glob):
                raise invalid(label, f"{where}.paths", "a path glob such as team_a_*", glob)
        try:
            perAgent = bool(coerce(bool, entry.get("perAgent", False), lenient=True))
        except ValueError:
            raise invalid(
                label, f"{where}.perAgent", "true or false", entry.get("perAgent")
            ) from None
        targets = tuple(
            str(coerce(str, glob, lenient=True)).strip()
            for glob in asList(entry.get("targets", []), label, f"{where}.targets")
        )
        for glob in targets:
            if not _GLOB.match(glob) or "/" in glob:
                raise invalid(
                    label, f"{where}.targets", "a host:port glob such as *.example:9100", glob
                )
        names[name] = where
        tokens[name] = token
        identities.append(Identity(name, token, paths, perAgent, targets))
    return tuple(identities)


def readNetworks(gathered: Gathered, key: str) -> tuple[str, ...]:
    """
    A list of networks (C{10.0.0.0/8}, C{::1}, C{192.0.2.7}), normalised,
    and C{unix} for the clients of a unix-socket listener.
    """
    networks = []
    for index, entry in enumerate(asList(gathered.file.get(key, []), gathered.label, key)):
        if str(entry).strip() == UNIX_PEERS:
            networks.append(UNIX_PEERS)
            continue
        try:
            networks.append(str(ipaddress.ip_network(str(entry).strip(), strict=False)))
        except ValueError as e:
            raise invalid(
                gathered.label,
                f"{key}[{index}]",
                "an IP network such as 10.0.0.0/8, or unix",
                entry,
            ) from e
    return tuple(networks)


_FILTER_KEYS = ("path", "metricNameAllow", "metricNameDeny")


def readFilters(gathered: Gathered) -> tuple[MetricFilter, ...]:
    """
    C{agent.filters}: every field present (prometheus-proxy requires all
    three), every pattern a valid regular expression.
    """
    key = "agent.filters"
    label = gathered.label
    filters = []
    for index, entry in enumerate(asList(gathered.file.get(key, []), label, key)):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise invalid(
                label, where, "an object with path, metricNameAllow and metricNameDeny", entry
            )
        for name in entry:
            checkKnown(str(name), _FILTER_KEYS, label, f"{where}.")
        for name in _FILTER_KEYS:
            if name not in entry:
                raise ConfigError(f"{label}: {where}: {name} is required")
        patterns: dict[str, tuple[str, ...]] = {}
        for name in _FILTER_KEYS[1:]:
            patterns[name] = tuple(
                str(coerce(str, item, lenient=True))
                for item in asList(entry[name], label, f"{where}.{name}")
            )
            for pattern in patterns[name]:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise invalid(label, f"{where}.{name}", "regular expressions", pattern) from e
        path = str(coerce(str, entry["path"], lenient=True)).strip().removeprefix("/")
        filters.append(MetricFilter(path, patterns["metricNameAllow"], patterns["metricNameDeny"]))
    return tuple(filters)
