# -*- test-case-name: promtwist.test.test_config,promtwist.test.test_agent_paths -*-
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from promtwist.config.resolve import Gathered, asList, checkKnown, coerce, invalid, show
from promtwist.config.schema import PORT, URL_PATH, urlPath
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


_REQUIRED: Any = object()


@dataclass(frozen=True)
class Record:
    """
    The shape of the entries of a list-valued key: the keys an entry may
    have, and what it was meant to be when it is not an object at all.

    Reading entries through it refuses a non-object or an unknown key (with
    the closest known one suggested) before anything else, and hands out
    each entry as an L{Entry} whose values are read with errors naming
    them, e.g. C{agent.pathConfigs[2].url}.

    @ivar keys: the keys an entry may have.
    @ivar expects: what an entry is, for the message when it is not an
        object (C{"an object with path and url"}).
    """

    keys: tuple[str, ...]
    expects: str

    def entries(self, value: object, label: str, key: str) -> Iterator[Entry]:
        """
        The entries of C{value}, the list C{key} from C{label}, each checked.
        """
        for index, item in enumerate(asList(value, label, key)):
            where = f"{key}[{index}]"
            if not isinstance(item, Mapping):
                raise invalid(label, where, self.expects, item)
            for name in item:
                checkKnown(str(name), self.keys, label, f"{where}.")
            yield Entry(item, where, label)


@dataclass(frozen=True)
class Entry:
    """
    One entry of a list-valued key, whose keys its L{Record} checked.

    @ivar values: the entry as the file wrote it.
    @ivar where: the entry's name in messages, e.g. C{agent.filters[0]}.
    @ivar label: the configuration source, as named in messages.
    """

    values: Mapping[str, Any]
    where: str
    label: str

    def require(self, *names: str) -> None:
        """
        Refuse the entry unless it has every one of C{names}.
        """
        for name in names:
            if name not in self.values:
                raise ConfigError(f"{self.label}: {self.where}: {name} is required")

    def get(
        self, name: str, parse: Callable[[Any], Any], expects: str, default: Any = _REQUIRED
    ) -> Any:
        """
        The value of C{name} after C{parse}, which raises L{ValueError} when
        the value is not what C{expects} says; C{default} when the entry has
        no C{name}, which without a C{default} is an error.
        """
        if name not in self.values:
            if default is _REQUIRED:
                self.require(name)
            return default
        return self._parsed(name, self.values[name], parse, expects)

    def string(self, name: str, default: Any = _REQUIRED) -> str:
        """
        The value of C{name} as a string (a number or boolean is read as
        written, as HOCON does).
        """
        return cast(str, self.get(name, _string, "a string", default))

    def strings(
        self, name: str, parse: Callable[[str], str] = str, expects: str = "a string"
    ) -> tuple[str, ...]:
        """
        The list C{name} (none when the entry has no C{name}), each item a
        string after C{parse}; the message for an item that is not names the
        key and shows the item.
        """
        items = asList(self.values.get(name, []), self.label, f"{self.where}.{name}")
        return tuple(
            self._parsed(name, item, lambda value: parse(_string(value)), expects) for item in items
        )

    def _parsed(self, name: str, value: object, parse: Callable[[Any], Any], expects: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise invalid(self.label, f"{self.where}.{name}", expects, value) from e


def _string(value: object) -> str:
    return cast(str, coerce(str, value, lenient=True))


_PATH_ENTRY = Record(("name", "path", "url", "labels"), "an object with path and url")


def _readPathEntry(entry: Entry, lenient: Callable[[str], None] | None) -> PathConfig:
    """
    One C{agent.pathConfigs} entry, checked.

    @param lenient: given, the entry is read as prometheus-proxy reads it where
        that is more forgiving: labels that are not a JSON object are dropped
        and a URL without a scheme gets C{http://}; each is told to this
        callable in one line.  Without it, both are errors.
    """
    label, where = entry.label, entry.where

    def targetURL(value: object) -> str:
        text = _string(value)
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

    path = entry.get("path", lambda v: urlPath(_string(v)), URL_PATH.expects)
    url = entry.get("url", targetURL, "an http:// or https:// URL with a host")
    labels = entry.get("labels", labelsOf, "a JSON object", {})
    name = entry.string("name", "").strip()
    return PathConfig(name=name or path, path=path, url=url, labels=labels)


def readPathEntries(
    value: object, label: str, key: str, warn: Callable[[str], None] | None = None
) -> tuple[PathConfig, ...]:
    """
    The paths the list C{value} (the key C{key} of C{label}) names, in
    order. A path listed twice is served by its last entry, as
    prometheus-proxy's path map keeps the last one put.

    @param warn: given, the entries are read leniently (see
        L{_readPathEntry}) and a repeated path is told to it naming both
        entries: what C{agent.pathConfigs} does, where a prometheus-proxy
        file must load as it did there. Without it (promtwist's own
        discovery file), entries are strict and the last one wins silently.
    """
    found: dict[str, tuple[str, PathConfig]] = {}
    for entry in _PATH_ENTRY.entries(value, label, key):
        config = _readPathEntry(entry, warn)
        if warn is not None and config.path in found:
            warn(
                f"{label}: {entry.where}.path: duplicate path {show(config.path)};"
                f" this entry replaces {found[config.path][0]}, as in prometheus-proxy"
            )
        # Re-inserting keeps the order of the last occurrences.
        found.pop(config.path, None)
        found[config.path] = (entry.where, config)
    return tuple(config for _, config in found.values())


def readPathConfigs(gathered: Gathered, warn: Callable[[str], None]) -> tuple[PathConfig, ...]:
    """
    The agent's static paths, C{agent.pathConfigs}, read leniently.
    """
    key = "agent.pathConfigs"
    return readPathEntries(gathered.file.get(key, []), gathered.label, key, warn)


_TARGET_ENTRY = Record(("target", "labels"), "a target, or an object with target and labels")
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
    key, label = "agent.targets", gathered.label
    items = [
        item if isinstance(item, Mapping) else {"target": item}
        for item in asList(gathered.file.get(key, []), label, key)
    ]
    found: dict[str, str] = {}
    targets = []
    for entry in _TARGET_ENTRY.entries(items, label, key):
        text = entry.string("target")
        try:
            config = _targetEntry(text, fqdn)
        except ValueError as e:
            raise ConfigError(
                f"{label}: {entry.where}.target: {show(text)}: {e} (expected {_TARGET})"
            ) from None
        if config.path in found:
            raise ConfigError(
                f"{label}: {entry.where}: target {show(config.name)} is also {found[config.path]}"
            )
        found[config.path] = entry.where
        labels = entry.get("labels", _labels, "a JSON object", {})
        targets.append(PathConfig(config.name, config.path, config.url, labels))
    return tuple(targets)


_IDENTITY = Record(
    ("name", "token", "paths", "perAgent", "targets"), "an object with name, token and paths"
)
_GLOB = re.compile(r"[^#%\s]+\Z")


def _glob(text: str) -> str:
    glob = text.lstrip("/")
    if not _GLOB.match(glob):
        raise ValueError(text)
    return glob


def _targetGlob(text: str) -> str:
    glob = text.strip()
    if not _GLOB.match(glob) or "/" in glob:
        raise ValueError(text)
    return glob


def _boolean(value: object) -> bool:
    return bool(coerce(bool, value, lenient=True))


def readIdentities(gathered: Gathered, legacyToken: str) -> tuple[Identity, ...]:
    """
    C{proxy.auth}, checked: names and tokens unique (the legacy
    C{proxy.agentToken} included), every glob a plain path pattern. A token
    may be left out only when agents present client certificates, whose
    subject then names the identity.
    """
    label = gathered.label
    certificates = bool(gathered.values["proxy.tls.trustCertCollectionFilePath"].value)
    identities: list[Identity] = []
    names: dict[str, str] = {}
    tokens: dict[str, str] = {LEGACY_TOKEN_IDENTITY: legacyToken} if legacyToken else {}
    for entry in _IDENTITY.entries(gathered.file.get("proxy.auth", []), label, "proxy.auth"):
        where = entry.where
        name = entry.string("name", "").strip()
        token = entry.string("token", "")
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
        paths = entry.strings("paths", _glob, "a path glob such as team_a_*")
        perAgent = entry.get("perAgent", _boolean, "true or false", False)
        targets = entry.strings("targets", _targetGlob, "a host:port glob such as *.example:9100")
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


_FILTER = Record(
    ("path", "metricNameAllow", "metricNameDeny"),
    "an object with path, metricNameAllow and metricNameDeny",
)


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(pattern) from e
    return pattern


def readFilters(gathered: Gathered) -> tuple[MetricFilter, ...]:
    """
    C{agent.filters}: every field present (prometheus-proxy requires all
    three), every pattern a valid regular expression.
    """
    filters = []
    key = "agent.filters"
    for entry in _FILTER.entries(gathered.file.get(key, []), gathered.label, key):
        entry.require(*_FILTER.keys)
        allow = entry.strings("metricNameAllow", _regex, "regular expressions")
        deny = entry.strings("metricNameDeny", _regex, "regular expressions")
        path = entry.string("path").strip().removeprefix("/")
        filters.append(MetricFilter(path, allow, deny))
    return tuple(filters)
