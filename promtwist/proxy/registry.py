# -*- test-case-name: promtwist.test.test_registry -*-
"""
The proxy's table of connected agents and the paths they serve.

The registry decides which agent serves a request and nothing else: it knows
no HTTP and no wire format, so the scrape resource, discovery and later
front ends (status pages, PushProx-style routing) all read the same table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from twisted.logger import Logger

from promtwist.config import Identity
from promtwist.logs import observer


class AgentHandle(Protocol):
    """
    What the registry needs to know about a connected agent.
    """

    agentId: str
    name: str
    hostName: str
    launchId: str
    consolidated: bool
    identity: Identity


class RegistrationRefused(Exception):
    """
    A path registration broke one of the registry's rules; the message says
    which, and C{kind} names the rule for counting.
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


_FORBIDDEN_PATH_CHARS = frozenset("?#%\\") | frozenset(" \t\r\n")


def checkPath(path: str) -> None:
    """
    Refuse paths Prometheus could not request verbatim.

    @raise RegistrationRefused: naming what is wrong with C{path}.
    """
    if not path:
        raise RegistrationRefused("empty path")
    if path.startswith("/") or path.endswith("/") or "//" in path:
        raise RegistrationRefused(f"path /{path} has an empty segment")
    bad = _FORBIDDEN_PATH_CHARS.intersection(path)
    if bad:
        raise RegistrationRefused(f"path /{path} contains {''.join(sorted(bad))!r}")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise RegistrationRefused(f"path /{path} contains a dot segment")


@dataclass(frozen=True)
class PathEntry:
    """
    One registered path and the agents that serve it (several only for a
    consolidated path). Labels and name are those of the first registrant.
    """

    path: str
    name: str
    labels: Mapping[str, str]
    consolidated: bool
    agents: tuple[AgentHandle, ...]


@dataclass
class _Path:
    name: str
    labels: Mapping[str, str]
    consolidated: bool
    agents: list[AgentHandle] = field(default_factory=list)


class Registry:
    """
    Connected agents and their paths.

    @ivar displacements: exclusive paths taken over by a restarted agent.
    @ivar refusals: refused registrations, by L{RegistrationRefused.kind}.
    @ivar reservedPaths: paths the proxy itself answers (such as discovery);
        no agent may register them.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        reservedPaths: Iterable[str] = (),
        mayServe: Callable[[Identity, str], bool] = lambda identity, path: True,
        maxPathsPerAgent: int = 1000,
    ) -> None:
        self.reservedPaths = frozenset(reservedPaths)
        self.mayServe = mayServe
        self.maxPathsPerAgent = maxPathsPerAgent
        self.displacements = 0
        self.refusals: Counter[str] = Counter()
        self._agents: dict[str, AgentHandle] = {}
        self._paths: dict[str, _Path] = {}
        self._pathsByAgent: dict[str, set[str]] = {}

    def addAgent(self, agent: AgentHandle) -> None:
        self._agents[agent.agentId] = agent
        self._pathsByAgent[agent.agentId] = set()

    def removeAgent(self, agent: AgentHandle) -> None:
        """
        Forget an agent and every path it served; consolidated paths keep
        their other agents.
        """
        if self._agents.pop(agent.agentId, None) is None:
            return
        for path in self._pathsByAgent.pop(agent.agentId, set()):
            self._drop(path, agent)

    def agents(self) -> list[AgentHandle]:
        return list(self._agents.values())

    def registerPath(
        self, agent: AgentHandle, path: str, name: str, labels: Mapping[str, str]
    ) -> None:
        """
        Let C{agent} serve C{path}.

        An exclusive path held by a connected agent goes to the newcomer only
        if it has the same agent name and identity (the same agent, restarted
        or reconnected before its old link was noticed dead); anyone else is
        refused, so two misconfigured agents cannot take a path from each
        other over and over, and no agent can hijack another's path.

        @raise RegistrationRefused: with the reason.
        """
        try:
            self._register(agent, path, name, labels)
        except RegistrationRefused as e:
            self.refusals[e.kind] += 1
            raise

    def _register(
        self, agent: AgentHandle, path: str, name: str, labels: Mapping[str, str]
    ) -> None:
        if agent.agentId not in self._agents:
            raise RegistrationRefused(f"agent {agent.agentId} is not connected")
        checkPath(path)
        if path in self.reservedPaths:
            raise RegistrationRefused(f"path /{path} is reserved by the proxy", "reserved")
        if not self.mayServe(agent.identity, path):
            raise RegistrationRefused(
                f"agent identity {agent.identity.name!r} is not authorized to serve /{path}",
                "unauthorized",
            )
        mine = self._pathsByAgent[agent.agentId]
        if path not in mine and len(mine) >= self.maxPathsPerAgent:
            raise RegistrationRefused(
                f"agent already serves {len(mine)} paths, the most one agent may "
                "(proxy.internal.maxPathsPerAgent)",
                "limit",
            )
        entry = self._paths.get(path)
        if entry is None:
            self._paths[path] = _Path(name, dict(labels), agent.consolidated, [agent])
        elif agent.consolidated != entry.consolidated:
            held = "consolidated" if entry.consolidated else "exclusive"
            raise RegistrationRefused(
                f"path /{path} is {held} on this proxy; "
                f"an {'consolidated' if agent.consolidated else 'exclusive'} agent cannot join it",
                "mixed",
            )
        elif agent.consolidated:
            if agent not in entry.agents:
                entry.agents.append(agent)
        else:
            (owner,) = entry.agents
            if owner is not agent:
                if (owner.name, owner.identity) != (agent.name, agent.identity):
                    raise RegistrationRefused(
                        f"path /{path} is served by agent {owner.name!r} "
                        f"({owner.hostName}); agent {agent.name!r} may not take it over",
                        "taken",
                    )
                self._log.info(
                    "path /{path} moves from agent {old} to {new} (same name {name!r})",
                    path=path,
                    old=owner.agentId,
                    new=agent.agentId,
                    name=agent.name,
                )
                self.displacements += 1
                self._pathsByAgent[owner.agentId].discard(path)
                entry.agents[:] = [agent]
            entry.name, entry.labels = name, dict(labels)
        self._pathsByAgent[agent.agentId].add(path)

    def unregisterPath(self, agent: AgentHandle, path: str) -> None:
        """
        @raise RegistrationRefused: if C{agent} does not serve C{path}.
        """
        mine = self._pathsByAgent.get(agent.agentId, set())
        if path not in mine:
            raise RegistrationRefused(f"path /{path} is not registered by this agent")
        mine.discard(path)
        self._drop(path, agent)

    def _drop(self, path: str, agent: AgentHandle) -> None:
        entry = self._paths.get(path)
        if entry is None:
            return
        if agent in entry.agents:
            entry.agents.remove(agent)
        if not entry.agents:
            del self._paths[path]

    def lookup(self, path: str) -> tuple[AgentHandle, ...]:
        """
        The agents serving C{path}, none if it is unknown.
        """
        entry = self._paths.get(path)
        return tuple(entry.agents) if entry is not None else ()

    def snapshot(self) -> list[PathEntry]:
        """
        An immutable copy of the path table, sorted by path.
        """
        return [
            PathEntry(path, e.name, e.labels, e.consolidated, tuple(e.agents))
            for path, e in sorted(self._paths.items())
        ]
