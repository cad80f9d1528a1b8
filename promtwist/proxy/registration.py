# -*- test-case-name: promtwist.test.test_registry -*-
"""
What one path registration may be: a path Prometheus can request, a name and
labels it can use, each within the proxy's size limits.

The rules look at one registration alone; who may hold a path, and what all
registrations together may cost, is the registry's business.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from promtwist.config.settings import ProxySettings
from promtwist.hostkeys import BadTarget, isHostKey, parseHostKey
from promtwist.logs import clip


class RegistrationRefused(Exception):
    """
    A path registration broke one of the registry's rules; the message says
    which (naming the setting when a limit was hit), and C{kind} names the
    rule for counting, from a fixed set.
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


_FORBIDDEN_PATH_CHARS = frozenset("?#%\\") | frozenset(" \t\r\n")
# Prometheus' own rule for label names.
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def shown(path: str) -> str:
    """
    C{path} as refusals quote it: the agent chose it, so it is clipped. A
    host key (L{promtwist.hostkeys}) is shown as it is, C{//host:port}.
    """
    return clip(path) if isHostKey(path) else "/" + clip(path)


def checkPath(path: str) -> None:
    """
    Refuse paths Prometheus could not request verbatim.

    @raise RegistrationRefused: naming what is wrong with C{path}.
    """
    if not path:
        raise RegistrationRefused("empty path")
    if path.startswith("/") or path.endswith("/") or "//" in path:
        raise RegistrationRefused(f"path {shown(path)} has an empty segment")
    bad = _FORBIDDEN_PATH_CHARS.intersection(path)
    if bad:
        raise RegistrationRefused(f"path {shown(path)} contains {''.join(sorted(bad))!r}")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise RegistrationRefused(f"path {shown(path)} contains a dot segment")


def utf8Size(text: str, what: str) -> int:
    """
    The bytes C{text} costs: its length in UTF-8.

    @raise RegistrationRefused: if C{text} is not valid Unicode (a lone
        surrogate), which no http_sd document could carry.
    """
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise RegistrationRefused(f"{what} is not valid UTF-8", "invalid") from None


def _tooLong(what: str, size: int, limit: int, key: str, kind: str) -> RegistrationRefused:
    return RegistrationRefused(
        f"{what} has {size} characters, more than the {limit} allowed (proxy.internal.{key})",
        kind,
    )


# What a registered path costs the proxy beyond its strings (its registry
# entry, its place in the discovery document): charged against
# proxy.internal.maxRegisteredBytes, so that the budget bounds the number of
# paths too, however short their names.
PATH_OVERHEAD = 1024


def checkRegistration(
    path: str, name: str, labels: Mapping[str, str], limits: ProxySettings
) -> int:
    """
    Refuse a registration larger than C{limits} allow (checked before
    anything looks at its contents), or one Prometheus could not use.

    @return: what the path, name and labels cost, in bytes, with
        L{PATH_OVERHEAD}.
    """
    if len(path) > limits.max_path_length:
        raise _tooLong(
            f"path {shown(path)}",
            len(path),
            limits.max_path_length,
            "maxPathLength",
            "long_path",
        )
    if isHostKey(path):
        try:
            parseHostKey(path)
        except BadTarget as e:
            raise RegistrationRefused(f"target {shown(path)}: {e}") from None
    else:
        checkPath(path)
    if len(name) > limits.max_path_name_length:
        raise _tooLong(
            f"the name of path {shown(path)}",
            len(name),
            limits.max_path_name_length,
            "maxPathNameLength",
            "long_name",
        )
    if len(labels) > limits.max_labels_per_path:
        raise RegistrationRefused(
            f"path {shown(path)} has {len(labels)} labels, more than the "
            f"{limits.max_labels_per_path} allowed (proxy.internal.maxLabelsPerPath)",
            "labels",
        )
    cost = (
        PATH_OVERHEAD
        + utf8Size(path, "the path")
        + utf8Size(name, f"the name of path {shown(path)}")
    )
    for key, value in labels.items():
        if len(key) > limits.max_label_name_length:
            raise _tooLong(
                f"a label name of path {shown(path)}",
                len(key),
                limits.max_label_name_length,
                "maxLabelNameLength",
                "label_name",
            )
        if not _LABEL_NAME.match(key):
            raise RegistrationRefused(
                f"label name {clip(key)!r} of path {shown(path)} is not a Prometheus "
                "label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                "label_name",
            )
        if len(value) > limits.max_label_value_length:
            raise _tooLong(
                f"label {key} of path {shown(path)}",
                len(value),
                limits.max_label_value_length,
                "maxLabelValueLength",
                "label_value",
            )
        cost += len(key) + utf8Size(value, f"label {key} of path {shown(path)}")
    return cost
