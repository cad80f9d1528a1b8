# -*- test-case-name: promtwist.test.test_agent_paths -*-
"""
The set of paths an agent wants to serve: its static C{agent.pathConfigs}
plus those its discovery file names, merged by one rule set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from twisted.logger import Logger

from promtwist.config.settings import PathConfig
from promtwist.httputil import redacted
from promtwist.logs import observer

_log = Logger(observer=observer)


def _warn(notice: str) -> None:
    _log.warn("{notice}", notice=notice)


@dataclass(frozen=True)
class PathChanges:
    """
    How the desired path set changed.

    @ivar changed: C{(old, new)} pairs for paths whose URL, name or labels
        changed.
    """

    added: tuple[PathConfig, ...] = ()
    removed: tuple[PathConfig, ...] = ()
    changed: tuple[tuple[PathConfig, PathConfig], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        return f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed"


def diff(old: Mapping[str, PathConfig], new: Mapping[str, PathConfig]) -> PathChanges:
    """
    What turns the path set C{old} into C{new}.
    """
    return PathChanges(
        added=tuple(config for path, config in new.items() if path not in old),
        removed=tuple(config for path, config in old.items() if path not in new),
        changed=tuple(
            (old[path], config)
            for path, config in new.items()
            if path in old and old[path] != config
        ),
    )


class PathTable:
    """
    The static and discovered paths, and the merged set the agent serves.

    A static path wins over a discovered one with the same path (warned once
    per path); among discovered paths, the last of a path wins.

    L{desired} is an immutable snapshot, replaced as a whole on every change,
    so a scrape that looked its path up keeps the config it found while new
    scrapes see the new one.
    """

    def __init__(
        self,
        static: Iterable[PathConfig] = (),
        discovered: Iterable[PathConfig] = (),
        warn: Callable[[str], None] = _warn,
    ) -> None:
        self._warn = warn
        self._warned: set[str] = set()
        self.static: tuple[PathConfig, ...] = tuple(static)
        self.discovered: tuple[PathConfig, ...] = tuple(discovered)
        self._desired = self._merge()

    def desired(self) -> Mapping[str, PathConfig]:
        """
        The paths to serve, by path: static ones first, in their order.
        """
        return self._desired

    def replace(
        self,
        *,
        static: Iterable[PathConfig] | None = None,
        discovered: Iterable[PathConfig] | None = None,
    ) -> PathChanges:
        """
        Replace the static paths, the discovered ones, or both (L{None}
        keeps a part as it is).

        @return: how the desired set changed.
        """
        if static is not None:
            self.static = tuple(static)
        if discovered is not None:
            self.discovered = tuple(discovered)
        old, self._desired = self._desired, self._merge()
        return diff(old, self._desired)

    def _merge(self) -> Mapping[str, PathConfig]:
        merged = {config.path: config for config in self.static}
        found: dict[str, PathConfig] = {}
        for config in self.discovered:
            found[config.path] = config
        collisions = set()
        for path, config in found.items():
            if path in merged:
                collisions.add(path)
                if path not in self._warned:
                    self._warn(
                        f"discovered path /{path} ({redacted(config.url)}) is also a static path:"
                        " the static one is served"
                    )
            else:
                merged[path] = config
        # Warn again if a collision goes away and comes back.
        self._warned = collisions
        return MappingProxyType(merged)
