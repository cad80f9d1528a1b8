# -*- test-case-name: promtwist.test.test_config,promtwist.test.test_cli -*-
"""
What a configuration key is: its L{Setting} (type, default, environment
variable, options, L{Rule}), and the L{Role} that gathers one process's
keys.

The value rules are here too, shared by promtwist's own keys
(L{promtwist.config.keys}) and the compatibility-only ones
(L{promtwist.config.compat}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import SplitResult, urlsplit

from promtwist.config.settings import ProxyEndpoint
from promtwist.endpoints import KINDS, kindOf


@dataclass(frozen=True)
class Rule:
    """
    A constraint on a setting's value, beyond its type.

    @ivar expects: what is expected, for error messages; C{{noun}} stands for
        the type's noun ("an integer", "a number", ...).
    @ivar apply: returns the value to store (possibly normalised), or raises
        L{ValueError} when the value is not acceptable.
    """

    expects: str
    apply: Callable[[Any], Any]


def bounded(expects: str, ok: Callable[[Any], bool]) -> Rule:
    """
    A L{Rule} that stores the value unchanged when C{ok} accepts it.
    """

    def apply(value: Any) -> Any:
        if not ok(value):
            raise ValueError(expects)
        return value

    return Rule(expects, apply)


PORT = bounded("{noun} in 1..65535", lambda v: 1 <= v <= 65535)
POSITIVE = bounded("{noun} > 0", lambda v: v > 0)
NON_NEGATIVE = bounded("{noun} >= 0", lambda v: v >= 0)
MINUS_ONE_OR_POSITIVE = bounded("{noun} that is -1 or > 0", lambda v: v == -1 or v > 0)


def _listen(value: str) -> str:
    # Only the type here: the rest is Twisted's to parse when the listener
    # is made, and its error names the key too.
    if value.strip():
        kindOf(value)
    return value.strip()


LISTEN = Rule(
    f"a Twisted server endpoint description ({', '.join(k + ':' for k in KINDS)}), or empty",
    _listen,
)
FRAME_SIZE = bounded("{noun} >= 65536", lambda v: v >= 65536)

LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "off")


def _logLevel(value: str) -> str:
    level = value.strip().lower()
    if level and level not in LOG_LEVELS:
        raise ValueError(value)
    return level


LOG_LEVEL = Rule(f"one of {', '.join(LOG_LEVELS)} or empty", _logLevel)

TRANSPORTS = ("native", "grpc")


def _transport(value: str) -> str:
    transport = value.strip().lower()
    if transport not in TRANSPORTS:
        raise ValueError(value)
    return transport


TRANSPORT = Rule(f"one of {', '.join(TRANSPORTS)}", _transport)


def _idleTimeout(value: float) -> float:
    # prometheus-proxy documents -1 as "use the default"; keep the meaning
    # but store the number the proxy actually uses.
    if value == -1:
        return 45.0
    if value <= 0:
        raise ValueError(value)
    return value


IDLE_TIMEOUT = Rule("{noun} that is -1 (45 seconds) or > 0", _idleTimeout)


def urlPath(value: str) -> str:
    # Paths are compared without their leading "/", as prometheus-proxy does.
    path = value.removeprefix("/")
    if not path or any(c in "?#" or c.isspace() for c in path):
        raise ValueError(value)
    return path


def _endpointPath(value: str) -> str:
    # An empty path turns the endpoint off.
    return urlPath(value) if value.strip() else ""


ENDPOINT_PATH = Rule("a URL path without '?', '#' or whitespace, or empty", _endpointPath)

URL_PATH = Rule("a non-empty URL path without '?', '#' or whitespace", urlPath)


def _hostPort(parts: SplitResult, scheme: str) -> str:
    """
    Render C{parts}' host and port (or the scheme's default port) as
    C{host:port}, bracketing IPv6 addresses.
    """
    host = parts.hostname
    if not host:
        raise ValueError(parts)
    port = {"http": 80, "https": 443}[scheme] if parts.port is None else parts.port
    return str(ProxyEndpoint(host, PORT.apply(port)))


def _targetPrefix(value: str) -> str:
    # prometheus-proxy puts this string verbatim into http_sd targets, so its
    # documented form "http://host:port/" yields targets Prometheus rejects.
    # A target is host:port; accept either form and keep only that.
    text = value.strip()
    if not text:
        return ""
    if any(c.isspace() for c in text):
        raise ValueError(value)
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(value)
        return _hostPort(parts, scheme)
    return _hostPort(urlsplit("//" + text), "http")


TARGET_PREFIX = Rule("host:port, or an http:// or https:// URL", _targetPrefix)

_NOUNS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


@dataclass(frozen=True)
class Setting:
    """
    One known scalar configuration key and every way of setting it.

    @ivar key: the full HOCON path, e.g. C{proxy.http.port}.
    @ivar kind: C{bool}, C{int}, C{float} or C{str}.
    @ivar default: the value when no source sets it; for keys with a C{field},
        the settings dataclass's own default (filled in by L{_withDefaults}).
    @ivar field: the settings dataclass field this key feeds, or L{None}.
    @ivar derived: the key has no field of its own but is used to compute one
        (C{agent.proxy.hostname} and C{port} make C{proxy_endpoints}).  Keys
        with neither are accepted for compatibility but have no effect.
    @ivar env: the environment variable, if any.
    @ivar options: command-line long option names; the first is canonical,
        the others are accepted spellings of it.
    @ivar short: the one-letter command-line option, if any.
    @ivar help: one line for C{--help}; only needed with C{options}.
    """

    key: str
    kind: type
    default: object = None
    field: str | None = None
    derived: bool = False
    env: str | None = None
    options: tuple[str, ...] = ()
    short: str | None = None
    rule: Rule | None = None
    help: str = ""

    @property
    def option(self) -> str | None:
        """
        The canonical long option name, if the key has a command-line option.
        """
        return self.options[0] if self.options else None

    @property
    def effective(self) -> bool:
        """
        Whether promtwist acts on this key at all.
        """
        return self.field is not None or self.derived

    @property
    def expects(self) -> str:
        """
        What a valid value looks like, for error messages.
        """
        noun = _NOUNS[self.kind]
        return self.rule.expects.format(noun=noun) if self.rule else noun


@dataclass(frozen=True)
class Role:
    """
    The keys of one process's configuration section.

    @ivar section: C{proxy} or C{agent}; the process reads only this section.
    @ivar configEnv: the environment variable naming the config file or URL.
    @ivar settings: the scalar keys.
    @ivar lists: keys whose value is a list (or object), read specially, each
        with the settings field it makes.
    @ivar removed: keys prometheus-proxy no longer reads; ignored silently.
    @ivar named: how messages name the settings fields that no one key
        makes alone.
    @ivar live: the settings fields a C{SIGHUP} reload applies to the
        running process; a change to any other needs a restart.
    """

    section: str
    configEnv: str
    settings: tuple[Setting, ...]
    lists: Mapping[str, str]
    removed: tuple[str, ...] = ()
    named: Mapping[str, str] = field(default_factory=dict)
    live: frozenset[str] = frozenset()

    @property
    def known(self) -> frozenset[str]:
        """
        Every key that is not reported as unknown.
        """
        return frozenset(s.key for s in self.settings) | set(self.lists) | set(self.removed)

    def keyForField(self, name: str) -> str:
        """
        The settings field C{name} as an operator writes it: the key that
        makes it, or its L{named} description.

        @raise KeyError: if no key makes C{name} (a field every settings
            object of this role must not have).
        """
        if name in self.named:
            return self.named[name]
        for setting in self.settings:
            if setting.field == name:
                return setting.key
        for key, made in self.lists.items():
            if made == name:
                return key
        raise KeyError(name)

    def changedKeys(self, old: object, new: object) -> tuple[str, ...]:
        """
        The keys whose change from settings C{old} to C{new} (objects of
        this role) a reload cannot apply, so that they need a restart; the
        L{live} fields' changes are applied and are not among them. Each
        key once, in the order of the settings' fields.
        """
        changed = (
            self.keyForField(f.name)
            for f in fields(type(old))  # type: ignore[arg-type]
            if f.name not in self.live and getattr(old, f.name) != getattr(new, f.name)
        )
        return tuple(dict.fromkeys(changed))
