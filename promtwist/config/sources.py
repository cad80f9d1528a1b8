# -*- test-case-name: promtwist.test.test_config -*-
"""
Reading a configuration source: a file or an C{http(s)://} URL, in HOCON
(with C{${VAR}} substitutions), JSON or Java-properties syntax chosen by its
extension, as prometheus-proxy's Typesafe Config chooses it.

The result is a plain tree of mappings, lists and scalars; what its keys
mean is L{promtwist.config.resolve}'s business.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit, urlunsplit

from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException
from pyparsing import ParseBaseException

from promtwist.config.settings import ConfigError

FETCH_TIMEOUT_SECS = 10.0

_SYNTAX_BY_SUFFIX = {
    ".json": "json",
    ".jsn": "json",
    ".properties": "properties",
    ".props": "properties",
}

# Names usable in a HOCON ${VAR} substitution; others could not be put into the
# fallback tree as a single key (see _parseHOCON).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_PROPERTIES_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def fetchURL(url: str) -> bytes:
    """
    Fetch a configuration URL.  This blocks, so it never runs in the
    reactor thread: configuration is read before the reactor starts, and a
    C{SIGHUP} reload reads it in a thread (L{promtwist.reloads}).

    @raise OSError: for network and HTTP errors.
    """
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECS) as response:
        body: bytes = response.read()
    return body


def _isURL(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _label(source: str) -> str:
    """
    How a configuration source is named in messages: as given, except that a
    URL's password is not repeated in logs.
    """
    if not _isURL(source):
        return source
    parts = urlsplit(source)
    if parts.password is None:
        return source
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _read(source: str, label: str, fetch: Callable[[str], bytes]) -> str:
    try:
        if _isURL(source):
            data = fetch(source)
        else:
            with open(source, "rb") as f:
                data = f.read()
    except (OSError, ValueError, http.client.HTTPException) as e:
        # An HTTPError says it best itself; other errors bury their reason.
        reason = (
            e
            if isinstance(e, HTTPError)
            else (getattr(e, "reason", None) or getattr(e, "strerror", None) or e)
        )
        raise ConfigError(f"{label}: cannot read the configuration: {reason}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: not UTF-8 text (byte {e.start})") from e


def _parseHOCON(text: str, basedir: str | None, environ: Mapping[str, str]) -> Mapping[str, Any]:
    """
    Parse HOCON, resolving C{${VAR}} substitutions against C{environ}.

    pyhocon looks environment variables up in L{os.environ} only; giving it the
    variables as a fallback tree resolves them from C{environ} with the same
    precedence (the file's own keys win), without touching the process.
    """
    try:
        tree = ConfigFactory.parse_string(text, basedir=basedir, resolve=False)
        if not isinstance(tree, ConfigTree):
            raise TypeError("expected an object at the top level, not a list")
        env = ConfigTree(root=True)
        for name, value in environ.items():
            if _ENV_NAME.match(name):
                env.put(name, value)
        resolved: Mapping[str, Any] = tree.with_fallback(env).as_plain_ordered_dict()
    except ParseBaseException as e:
        message = re.sub(r"\s*\(at char \d+\).*", "", str(e))
        raise ValueError(f"line {e.lineno}, column {e.col}: {message}") from e
    except (ConfigException, OSError, TypeError) as e:
        raise ValueError(str(e)) from e
    # Only sections the file wrote; the fallback tree must not make one up.
    return {name: resolved[name] for name in tree}


def _parseJSON(text: str) -> Mapping[str, Any]:
    try:
        root = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {e.lineno}, column {e.colno}: {e.msg}") from e
    if isinstance(root, dict):
        return root
    raise ValueError("expected an object at the top level")


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if len(escaped) == 5:
            return chr(int(escaped[1:], 16))
        return _PROPERTIES_ESCAPES.get(escaped, escaped)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", replace, text, flags=re.DOTALL)


def propertiesLine(line: str) -> tuple[str, str]:
    """
    Split one logical Java-properties line into its key and value.

    The key ends at the first unescaped C{=}, C{:} or whitespace; blanks and
    one C{=} or C{:} separate it from the value; backslash escapes apply.
    """
    line = line.lstrip(" \t\f")
    end = 0
    while end < len(line) and line[end] not in "=: \t\f":
        end += 2 if line[end] == "\\" else 1
    rest = line[end:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(line[:end]), _unescape(rest)


def _parseProperties(text: str) -> Mapping[str, Any]:
    """
    Parse a Java properties file into a tree: dotted keys are paths, as
    prometheus-proxy's configuration library reads them.
    """
    root: dict[str, Any] = {}
    lines = iter(text.splitlines())
    for physical in lines:
        logical = physical.lstrip(" \t\f")
        if not logical or logical[0] in "#!":
            continue
        # An odd number of trailing backslashes continues the line.
        while (len(logical) - len(logical.rstrip("\\"))) % 2:
            logical = logical[:-1] + next(lines, "").lstrip(" \t\f")
        key, value = propertiesLine(logical)
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        # As in HOCON, an object wins over a plain value at the same path.
        if not isinstance(node.get(leaf), dict):
            node[leaf] = value
    return root


def parseSource(
    source: str, label: str, environ: Mapping[str, str], fetch: Callable[[str], bytes]
) -> Mapping[str, Any]:
    """
    Read and parse a configuration file or URL, choosing the syntax by its
    extension as prometheus-proxy does.
    """
    text = _read(source, label, fetch)
    path = urlsplit(source).path if _isURL(source) else source
    syntax = _SYNTAX_BY_SUFFIX.get(os.path.splitext(path)[1].lower(), "hocon")
    try:
        if syntax == "json":
            return _parseJSON(text)
        if syntax == "properties":
            return _parseProperties(text)
        # Includes are relative to a file's directory (a fetched file's, to
        # the working directory).
        basedir = None if _isURL(source) else os.path.dirname(source)
        return _parseHOCON(text, basedir, environ)
    except ValueError as e:
        raise ConfigError(f"{label}: {e}") from e


# Typesafe Config's own extensions, in the order its parseFileAnySyntax
# prefers them when a name without one is given.
_ANY_SYNTAX_SUFFIXES = (".conf", ".json", ".properties")


def _anySyntax(source: str) -> list[str]:
    """
    The files a configuration name stands for, most preferred first.

    A URL, an existing file, or a name ending in one of Typesafe Config's
    extensions is itself.  Otherwise, as prometheus-proxy's
    C{parseFileAnySyntax} does, the name is tried with C{.conf}, C{.json}
    and C{.properties}, and every one found is read; none found leaves the
    name itself, for L{_read} to report.
    """
    if (
        _isURL(source)
        or os.path.exists(source)
        or os.path.splitext(source)[1].lower() in _ANY_SYNTAX_SUFFIXES
    ):
        return [source]
    found = [source + suffix for suffix in _ANY_SYNTAX_SUFFIXES if os.path.isfile(source + suffix)]
    return found or [source]


def _merged(high: Mapping[str, Any], low: Mapping[str, Any]) -> dict[str, Any]:
    """
    Two parsed files as one, as Typesafe Config merges them: objects merge
    key by key, anything else in C{high} replaces what C{low} has.
    """
    out = dict(low)
    for key, value in high.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = _merged(value, below)
        else:
            out[key] = value
    return out


def parseAnySyntax(
    source: str,
    environ: Mapping[str, str],
    fetch: Callable[[str], bytes],
    warn: Callable[[str], None],
) -> tuple[Mapping[str, Any], str]:
    """
    Read a configuration name the way prometheus-proxy does (see
    L{_anySyntax}), saying which files a name without an extension stood for.

    @return: the parsed tree, and how the source is named in messages.
    """
    files = _anySyntax(source)
    if files == [source]:
        label = _label(source)
        return parseSource(source, label, environ, fetch), label
    if len(files) == 1:
        warn(f"{source}: no such file; read {files[0]}, as prometheus-proxy does")
    else:
        warn(
            f"{source}: no such file; read {', '.join(files)} merged, as prometheus-proxy"
            f" does ({files[0]} wins where they set the same key)"
        )
    root: Mapping[str, Any] = {}
    for file in reversed(files):
        root = _merged(parseSource(file, file, environ, fetch), root)
    return root, " + ".join(files)
