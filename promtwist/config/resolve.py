# -*- test-case-name: promtwist.test.test_config -*-
"""
Resolving values: each scalar key taken from the first source that sets it
(command line, environment, C{-D}, file), converted to its type and checked
against its rule, with errors that name the source and the key.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from promtwist.config.schema import Role, Setting
from promtwist.config.settings import ConfigError
from promtwist.config.sources import parseAnySyntax, propertiesLine

_WORDS = {"true": True, "false": False}
# HOCON and Java properties also read these; environment variables do not.
_LENIENT_WORDS = {**_WORDS, "yes": True, "on": True, "no": False, "off": False}


def show(value: object) -> str:
    """
    Render a rejected value for an error message, quoted like JSON so that
    empty strings and stray blanks are visible.
    """
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def invalid(origin: str, key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{origin}: {key}: expected {expected}, got {show(value)}")


def coerce(kind: type, value: object, lenient: bool) -> Any:
    """
    Convert C{value} to C{kind}.

    @param lenient: accept what HOCON and Java properties accept (yes/no/on/off
        for booleans; numbers and booleans where a string is wanted); without
        it, as for environment variables and options, only exact spellings.
    @raise ValueError: if C{value} is not a C{kind}.
    @raise OverflowError: if C{value} is too large for a C{float}.
    """
    if kind is bool:
        words = _LENIENT_WORDS if lenient else _WORDS
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
    elif isinstance(value, bool):
        # A bool is an int to Python, but true is no number of seconds.
        if kind is str and lenient:
            return show(value)
    elif kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float, str)):
            number = float(value)
            if math.isfinite(number):
                return number
    elif isinstance(value, str):
        return value
    elif lenient and isinstance(value, (int, float)):
        return show(value)
    raise ValueError(value)


@dataclass(frozen=True)
class Value:
    """
    A setting's resolved value and where it came from.

    @ivar origin: the source, as named in messages.
    @ivar direct: given directly to the process (command line or environment)
        rather than through configuration.  Direct values are parsed strictly,
        and a direct C{agent.proxy.hostname} replaces C{agent.proxy.endpoints}.
    """

    value: Any
    origin: str
    direct: bool = False


@dataclass(frozen=True)
class Gathered:
    """
    One role's configuration, read from every source.

    @ivar values: every scalar setting's L{Value}, by key.
    @ivar file: the role's section of the configuration, flattened to keys.
    @ivar label: the configuration source as named in messages.
    @ivar source: the configuration source as given.
    """

    values: dict[str, Value]
    file: dict[str, Any]
    label: str
    source: str


def _resolve(
    setting: Setting,
    options: Mapping[str, object],
    environ: Mapping[str, str],
    defines: Mapping[str, str],
    file: Mapping[str, object],
    label: str,
) -> Value:
    """
    Take a setting from the first source that has it (command line,
    environment, -D, file), then convert and check it.
    """
    if setting.option is not None and options.get(setting.option) is not None:
        found = Value(options[setting.option], f"option --{setting.option}", direct=True)
    elif setting.env is not None and setting.env in environ:
        found = Value(environ[setting.env], f"environment variable {setting.env}", direct=True)
    elif setting.key in defines:
        found = Value(defines[setting.key], "option -D")
    elif setting.key in file:
        found = Value(file[setting.key], label)
    else:
        return Value(setting.default, "default")
    try:
        value = coerce(setting.kind, found.value, lenient=not found.direct)
        if setting.rule is not None:
            value = setting.rule.apply(value)
    except (ValueError, OverflowError) as e:
        raise invalid(found.origin, setting.key, setting.expects, found.value) from e
    return replace(found, value=value)


def _flatten(
    node: Mapping[str, Any], prefix: str, stops: frozenset[str]
) -> Iterator[tuple[str, Any]]:
    """
    Walk a section down to its keys.  Known keys stop the walk, so that an
    object where a number belongs is reported rather than explored.
    """
    for name, value in node.items():
        key = f"{prefix}.{name}"
        if isinstance(value, Mapping) and key not in stops:
            yield from _flatten(value, key, stops)
        else:
            yield key, value


def asList(value: object, origin: str, key: str) -> list[Any]:
    """
    A list-valued key's entries.  Java properties can only spell a list as an
    object with keys 0, 1, ..., which prometheus-proxy also accepts.
    """
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping) and value and all(str(k).isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    raise invalid(origin, key, "a list", value)


def _defines(options: Mapping[str, object]) -> dict[str, str]:
    """
    The C{-Dkey=value} overrides, later ones winning, each read as a Java
    properties line with a value's surrounding double quotes removed.
    """
    defines: dict[str, str] = {}
    for define in cast("Sequence[str]", options.get("defines", ())):
        key, value = propertiesLine(define)
        if not key:
            raise ConfigError(f"option -D: expected key=value, got {show(define)}")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        defines[key] = value
    return defines


def configSource(role: Role, options: Mapping[str, object], environ: Mapping[str, str]) -> str:
    return str(options.get("config") or environ.get(role.configEnv) or "")


def checkKnown(key: str, known: Iterable[str], origin: str, prefix: str = "") -> None:
    """
    Refuse a key that neither promtwist nor prometheus-proxy reads: a typo
    silently ignored (C{pathConfig} for C{pathConfigs}) would run the
    process without what the operator meant to configure.

    @param prefix: written before C{key} and each suggestion in the message
        (an entry's own keys are named with the entry, e.g.
        C{agent.pathConfigs[0].}).
    @raise ConfigError: naming the key, where it was, and the closest known
        key, if one is close.
    """
    if key in known:
        return
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    raise ConfigError(f"{origin}: unknown configuration key {prefix}{key}{hint}")


def gather(
    role: Role,
    options: Mapping[str, object],
    environ: Mapping[str, str],
    fetch: Callable[[str], bytes],
    warn: Callable[[str], None],
) -> Gathered:
    """
    Read a role's configuration source and resolve every scalar setting,
    refusing unknown keys and warning about those that have no effect.
    """
    source = configSource(role, options, environ)
    root, label = parseAnySyntax(source, environ, fetch, warn) if source else ({}, "")
    section = root.get(role.section, {})
    if not isinstance(section, Mapping):
        raise invalid(label, role.section, "an object", section)
    known = role.known
    file = dict(_flatten(section, role.section, known))
    defines = _defines(options)

    for key in file:
        checkKnown(key, known, label)
    for key in defines:
        if key in role.lists:
            raise ConfigError(f"option -D: {key}: lists cannot be set with -D")
        if key.startswith(f"{role.section}."):
            checkKnown(key, known, "option -D")

    values = {}
    for setting in role.settings:
        value = values[setting.key] = _resolve(setting, options, environ, defines, file, label)
        if not setting.effective and value.value != setting.default:
            warn(f"configuration key {setting.key} ({value.origin}) has no effect in promtwist")
    return Gathered(values, file, label, source)
