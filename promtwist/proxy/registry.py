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

from promtwist.config import Identity, ProxySettings
from promtwist.logs import clip, observer
from promtwist.proxy.registration import RegistrationRefused as RegistrationRefused
from promtwist.proxy.registration import checkRegistration, shown, utf8Size


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


@dataclass(frozen=True)
class PathEntry:
    """
    One registered path and the agents that serve it (several only for a
    consolidated path). Labels and name are those of the first registrant.

    @ivar changed: the registry's L{generation <Registry.generation>} when
        this entry last changed, so readers can keep what they derived from
        an entry until it changes.
    """

    path: str
    name: str
    labels: Mapping[str, str]
    consolidated: bool
    agents: tuple[AgentHandle, ...]
    changed: int = 0


@dataclass
class _Path:
    name: str
    labels: Mapping[str, str]
    consolidated: bool
    agents: list[AgentHandle] = field(default_factory=list)
    # Bytes charged to the registry's budget: see Registry.registeredBytes.
    cost: int = 0
    changed: int = 0


def _agentCost(agent: AgentHandle) -> int:
    """
    What serving one path costs for C{agent}: its name and host name are
    shown with the path in discovery.
    """
    return utf8Size(agent.name, "agent name") + utf8Size(agent.hostName, "agent host name")


class Registry:
    """
    Connected agents and their paths.

    @ivar refusals: refused registrations, by L{RegistrationRefused.kind}.
    @ivar reservedPaths: paths the proxy itself answers (such as discovery);
        no agent may register them.
    @ivar generation: bumped by every change to what L{snapshot} returns, so
        a reader (discovery) can rebuild only when something changed.
    @ivar registeredBytes: what all registrations cost together, in UTF-8
        bytes: every path, its name, its label names and values, and the
        name and host name of each agent serving it. Bounded by
        C{proxy.internal.maxRegisteredBytes}; freed when a path is
        unregistered, replaced, or its agent leaves.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        reservedPaths: Iterable[str] = (),
        mayServe: Callable[[Identity, str], bool] = lambda identity, path: True,
        limits: ProxySettings | None = None,
    ) -> None:
        """
        @param limits: the settings whose C{max_path*}, C{max_label*} and
            C{max_registered_bytes} bound registrations; the defaults if
            L{None}.
        """
        self.reservedPaths = frozenset(reservedPaths)
        self.mayServe = mayServe
        self.limits = limits if limits is not None else ProxySettings()
        self.refusals: Counter[str] = Counter()
        self.generation = 0
        self.registeredBytes = 0
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
    ) -> AgentHandle | None:
        """
        Let C{agent} serve C{path}.

        An exclusive path held by a connected agent goes to the newcomer only
        if it has the same agent name and identity (the same agent, restarted
        or reconnected before its old link was noticed dead); anyone else is
        refused, so two misconfigured agents cannot take a path from each
        other over and over, and no agent can hijack another's path.

        @return: the agent C{path} was taken from, if it moved.
        @raise RegistrationRefused: with the reason.
        """
        try:
            return self._register(agent, path, name, labels)
        except RegistrationRefused as e:
            self.refusals[e.kind] += 1
            raise

    def _register(
        self, agent: AgentHandle, path: str, name: str, labels: Mapping[str, str]
    ) -> AgentHandle | None:
        if agent.agentId not in self._agents:
            raise RegistrationRefused(f"agent {agent.agentId} is not connected")
        cost = checkRegistration(path, name, labels, self.limits) + _agentCost(agent)
        if path in self.reservedPaths:
            raise RegistrationRefused(f"path {shown(path)} is reserved by the proxy", "reserved")
        if not self.mayServe(agent.identity, path):
            raise RegistrationRefused(
                f"agent identity {agent.identity.name!r} is not authorized to serve {shown(path)}",
                "unauthorized",
            )
        mine = self._pathsByAgent[agent.agentId]
        if path not in mine and len(mine) >= self.limits.max_paths_per_agent:
            raise RegistrationRefused(
                f"agent already serves {len(mine)} paths, the most one agent may "
                "(proxy.internal.maxPathsPerAgent)",
                "limit",
            )
        entry = self._paths.get(path)
        if entry is None:
            self._charge(cost, path)
            entry = self._paths[path] = _Path(name, dict(labels), agent.consolidated, [agent])
            entry.cost = cost
            self._changed(entry)
            mine.add(path)
            return None
        if agent.consolidated != entry.consolidated:
            held = "consolidated" if entry.consolidated else "exclusive"
            raise RegistrationRefused(
                f"path {shown(path)} is {held} on this proxy; "
                f"an {'consolidated' if agent.consolidated else 'exclusive'} agent cannot join it",
                "mixed",
            )
        if agent.consolidated:
            # Joining adds this agent to the entry; name and labels stay the
            # first registrant's.
            if agent not in entry.agents:
                share = _agentCost(agent)
                self._charge(share, path)
                entry.cost += share
                entry.agents.append(agent)
                self._changed(entry)
                mine.add(path)
            return None
        (owner,) = entry.agents
        if owner is agent:
            if (entry.name, entry.labels) == (name, dict(labels)):
                return None
        elif (owner.name, owner.identity) != (agent.name, agent.identity):
            raise RegistrationRefused(
                f"path {shown(path)} is served by agent {clip(owner.name)!r} "
                f"({clip(owner.hostName)}); agent {clip(agent.name)!r} may not take it over",
                "taken",
            )
        self._charge(cost - entry.cost, path)
        entry.cost = cost
        entry.name, entry.labels = name, dict(labels)
        self._changed(entry)
        mine.add(path)
        if owner is agent:
            return None
        self._log.info(
            "path {path} moves from agent {old} to {new} (same name {name!r})",
            path=shown(path),
            old=owner.agentId,
            new=agent.agentId,
            name=clip(agent.name),
        )
        self._pathsByAgent[owner.agentId].discard(path)
        entry.agents[:] = [agent]
        return owner

    def _charge(self, extra: int, path: str) -> None:
        """
        Add C{extra} bytes to L{registeredBytes}.

        @raise RegistrationRefused: if that would go over the budget; nothing
            is charged then.
        """
        budget = self.limits.max_registered_bytes
        if extra > 0 and self.registeredBytes + extra > budget:
            raise RegistrationRefused(
                f"registering {shown(path)} would take the proxy's registrations to "
                f"{self.registeredBytes + extra} bytes, over its budget of {budget} "
                "(proxy.internal.maxRegisteredBytes)",
                "budget",
            )
        self.registeredBytes += extra

    def _changed(self, entry: _Path) -> None:
        self.generation += 1
        entry.changed = self.generation

    def unregisterPath(self, agent: AgentHandle, path: str) -> None:
        """
        @raise RegistrationRefused: if C{agent} does not serve C{path}.
        """
        mine = self._pathsByAgent.get(agent.agentId, set())
        if path not in mine:
            raise RegistrationRefused(f"path {shown(path)} is not registered by this agent")
        mine.discard(path)
        self._drop(path, agent)

    def _drop(self, path: str, agent: AgentHandle) -> None:
        entry = self._paths.get(path)
        if entry is None or agent not in entry.agents:
            return
        entry.agents.remove(agent)
        if entry.agents:
            share = _agentCost(agent)
            entry.cost -= share
            self.registeredBytes -= share
            self._changed(entry)
        else:
            self.registeredBytes -= entry.cost
            self.generation += 1
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
            PathEntry(path, e.name, e.labels, e.consolidated, tuple(e.agents), e.changed)
            for path, e in sorted(self._paths.items())
        ]
