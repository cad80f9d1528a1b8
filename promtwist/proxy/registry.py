# -*- test-case-name: promtwist.test.test_registry -*-
"""
The proxy's table of connected agents and the paths they serve.

The registry decides which agent serves a request and nothing else: it knows
no HTTP and no wire format, so the scrape resource, discovery and later
front ends (status pages, PushProx-style routing) all read the same table.

Its keys are paths and, for C{proxy_url} scrapes, host-routed targets
(C{//host:port}, C{//host} on any port; see L{promtwist.hostkeys}): one
table, so a target is held, queued for, promoted, budgeted and departed
exactly as a path is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from promtwist.config.settings import Identity, ProxySettings
from promtwist.hostkeys import hostKey, isHostKey, parseHostKey
from promtwist.logs import clip, observer
from promtwist.proxy.ownaddress import OwnAddresses
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
    # What it is, as reasons name it: "agent", or "PushProx client".
    kind: str

    def pathRoleChanged(
        self,
        path: str,
        role: str,
        reason: str,
        holder: AgentHandle,
        since: float,
        position: int = 0,
    ) -> None:
        """
        The agent's standing on C{path} changed without its asking: it now
        holds it (C{role} C{"holder"}: promoted); it waits for it
        (C{"standby"}: displaced, or its holder or place in the queue
        changed); or its claim is gone (C{"released"}: the same launch
        claimed it on another link). C{holder} has held it since C{since}.

        @param reason: a key of L{REASONS}.
        @param position: for a standby, its place in the queue, 1 for the
            first.
        """


# Why an exclusive path changed holder: the label values of
# proxy_path_holder_changes_total, and the words the logs use.
HOLDER_CHANGE_REASONS: Mapping[str, str] = {
    "unregistered": "the holder unregistered it",
    "goodbye": "the holder said goodbye",
    "lost": "the holder's link was lost",
    "evicted": "the holder was evicted for inactivity",
    "takeover": "the same agent claimed it again",
    "returned": "its per-agent owner came back",
    "reload": "the holder's identity was revoked on reload",
}

# What an agent is told when its standing changes: the holder-change
# reasons, and why a standby moved up while the holder stayed.
REASONS: Mapping[str, str] = {
    **HOLDER_CHANGE_REASONS,
    "queue": "a claim ahead of it in the queue was withdrawn",
}


def provesSameAgent(holder: AgentHandle, claimant: AgentHandle) -> bool:
    """
    Whether C{claimant} proves it is C{holder} restarting or reconnecting,
    and so may take a path from it while it is still connected.

    Names prove nothing: they are chosen by the agent and published in
    discovery. Proof is the same identity and, unless that identity is
    declared to belong to one agent only (C{proxy.auth[].perAgent}), the
    same launch id and name: the same process, back on a new link before
    its old one was found dead. A shared credential (the open port, the
    legacy C{proxy.agentToken}, a group identity) is never proof alone.
    """
    if claimant.identity != holder.identity:
        return False
    if claimant.identity.perAgent:
        return True
    return bool(claimant.launchId) and (claimant.launchId, claimant.name) == (
        holder.launchId,
        holder.name,
    )


@dataclass(frozen=True)
class Claim:
    """
    One agent's claim on an exclusive path, served or waiting.

    @ivar since: when the agent became the holder, or (for a standby) when
        it queued; seconds since the epoch.
    """

    agent: AgentHandle
    name: str
    labels: Mapping[str, str]
    since: float


@dataclass(frozen=True)
class PathEntry:
    """
    One registered path and the agents that serve it (several only for a
    consolidated path). Labels and name are those of the holder, or for a
    consolidated path of the first registrant.

    @ivar changed: the registry's L{generation <Registry.generation>} when
        this entry last changed, so readers can keep what they derived from
        an entry until it changes.
    @ivar since: when the current holder took the path (the first agent of
        a consolidated one).
    @ivar standbys: the claims waiting for an exclusive path, first in line
        first.
    """

    path: str
    name: str
    labels: Mapping[str, str]
    consolidated: bool
    agents: tuple[AgentHandle, ...]
    changed: int = 0
    since: float = 0.0
    standbys: tuple[Claim, ...] = ()
    # A path whose last agent left (Registry.departed): who served it last,
    # as (kind, name, host name), and when it left; agents is then empty.
    departedFrom: tuple[tuple[str, str, str], ...] = ()
    leftAt: float | None = None

    @property
    def agentNames(self) -> str:
        if self.agents:
            return ", ".join(agent.name for agent in self.agents)
        return ", ".join(name for _, name, _ in self.departedFrom)

    @property
    def hostNames(self) -> str:
        if self.agents:
            return ", ".join(agent.hostName for agent in self.agents)
        return ", ".join(host for _, _, host in self.departedFrom)

    @property
    def departedAs(self) -> str:
        """
        Who served a departed path last, as reasons name it: C{agent
        'app'}, or C{PushProx client 'node1.example'}.
        """
        return ", ".join(f"{kind} {clip(name)!r}" for kind, name, _ in self.departedFrom)


class Listed(NamedTuple):
    """
    What discovery shows of one path (L{Registry.discoverableEntry}): as
    L{PathEntry} names it.
    """

    path: str
    labels: Mapping[str, str]
    agentNames: str
    hostNames: str


@dataclass(frozen=True)
class Placement:
    """
    Where an accepted registration put its agent.

    @ivar position: 0 when the agent serves the path; else its place in the
        standby queue, 1 for the first in line.
    @ivar holder: the agent that serves the path (for a consolidated path,
        the registrant itself).
    @ivar since: when C{holder} took the path.
    """

    position: int
    holder: AgentHandle
    since: float


@dataclass(frozen=True)
class HolderChange:
    """
    An exclusive path went from one holder to another.

    @ivar reason: a key of L{HOLDER_CHANGE_REASONS}.
    """

    path: str
    old: AgentHandle
    new: AgentHandle
    reason: str
    since: float


@dataclass(frozen=True)
class Overlap:
    """
    A claim on one port of a host (C{port}, held by C{portHolder}) and a
    claim on that host on every port (C{anyPort}, held by
    C{anyPortHolder}) are both held, one of them new: the claim on the
    port serves that port's scrapes (L{Registry.hostClaim}), which the
    other holder, a PushProx client whose FQDN it is, does not get.
    """

    port: str
    portHolder: AgentHandle
    anyPort: str
    anyPortHolder: AgentHandle


@dataclass
class _Standby:
    claim: Claim
    # Bytes charged for this claim: see Registry.registeredBytes.
    cost: int


@dataclass
class _Path:
    name: str
    labels: Mapping[str, str]
    consolidated: bool
    since: float
    agents: list[AgentHandle] = field(default_factory=list)
    # Bytes charged for what is served: see Registry.registeredBytes.
    cost: int = 0
    changed: int = 0
    standbys: list[_Standby] = field(default_factory=list)
    # The per-agent identity whose holder left (not unregistered) while a
    # standby of another identity took over: a claim proving it takes the
    # path back at once (reason "returned").
    owner: Identity | None = None

    def standbyOf(self, agent: AgentHandle) -> int | None:
        for index, standby in enumerate(self.standbys):
            if standby.claim.agent is agent:
                return index
        return None


@dataclass(frozen=True)
class _Member:
    """
    A connected agent and the paths it claims, served or waiting.
    """

    agent: AgentHandle
    paths: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Departed:
    entry: PathEntry
    # What it is charged in registeredBytes: what it cost while served.
    cost: int


def _agentCost(agent: AgentHandle) -> int:
    """
    What serving one path costs for C{agent}: its name and host name are
    shown with the path in discovery.
    """
    return utf8Size(agent.name, "agent name") + utf8Size(agent.hostName, "agent host name")


class Registry:
    """
    Connected agents and their paths.

    An exclusive path has one holder, which its scrapes go to, and an
    ordered queue of standby claims. A claim for a held path is queued, not
    refused; when the holder leaves (unregisters, says goodbye, loses its
    link, is evicted) the first eligible standby becomes the holder in the
    same call: one whose identity still holds (L{stillHolds}), and of
    those one with the leaving holder's identity first if that identity is
    per-agent. Only a claimant that L{proves it is the
    holder <provesSameAgent>}, or the per-agent owner of a path an
    interim holder took when the owner left, takes the path from a
    connected holder; the displaced holder then waits first in line,
    unless the claimant is the same launch on a new link, which gave the
    old claim up: that claim is dropped. Every standby whose holder or
    place changed is told.

    @ivar reservedPaths: paths the proxy itself answers (such as discovery);
        no agent may register them.
    @ivar own: the proxy's own addresses, which no agent may claim as a
        target.
    @ivar generation: bumped by every change to what L{snapshot} returns, so
        a reader (discovery) can rebuild only when something changed.
    @ivar registeredBytes: what all registrations cost together, in UTF-8
        bytes: every claim's path, name, label names and values, and the
        name and host name of its agent (standby claims included; a
        consolidated path's path, name and labels once, plus each agent's
        names). Bounded by C{proxy.internal.maxRegisteredBytes}; freed when
        a claim is unregistered, replaced, or its agent leaves.
    @ivar holderObservers: called with the L{HolderChange}s of one call (an
        agent leaving may change the holder of many paths at once) after
        the registry changed; never with none.
    @ivar forgottenObservers: called with each path (or host key) the
        registry forgets: unregistered, or left by its last agent and kept
        no longer (L{departed}); what is kept by path, such as metric
        series, goes with it.
    @ivar stillHolds: whether an identity an agent authenticated as is
        still valid (a reload may revoke it): standbys whose identity does
        not are never promoted.
    @ivar overlapObservers: called with each L{Overlap} a new claim makes,
        so that an operator is told whose scrapes went where.
    """

    _log = Logger(observer=observer)

    def __init__(
        self,
        reservedPaths: Iterable[str] = (),
        mayServe: Callable[[Identity, str], bool] = lambda identity, path: True,
        limits: ProxySettings | None = None,
        clock: IReactorTime | None = None,
        stillHolds: Callable[[Identity], bool] = lambda identity: True,
    ) -> None:
        """
        @param limits: the settings whose C{max_path*}, C{max_label*} and
            C{max_registered_bytes} bound registrations; the defaults if
            L{None}.
        @param clock: what tells the time claims are made; the reactor if
            L{None}.
        """
        self.reservedPaths = frozenset(reservedPaths)
        self.mayServe = mayServe
        self.limits = limits if limits is not None else ProxySettings()
        self.own = OwnAddresses(self.limits)
        self._clock = clock
        self.generation = 0
        self.registeredBytes = 0
        self.holderObservers: list[Callable[[Sequence[HolderChange]], None]] = []
        self.stillHolds = stillHolds
        self.forgottenObservers: list[Callable[[str], None]] = []
        self.overlapObservers: list[Callable[[Overlap], None]] = []
        self._changes: list[HolderChange] = []
        # The one table of connected agents, by id.
        self._members: dict[str, _Member] = {}
        self._paths: dict[str, _Path] = {}
        # Paths whose last agent left, oldest first.
        self._departed: dict[str, _Departed] = {}

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock.seconds()

    def addAgent(self, agent: AgentHandle) -> None:
        self._members[agent.agentId] = _Member(agent)

    def removeAgent(self, agent: AgentHandle, reason: str = "lost") -> None:
        """
        Forget an agent and every claim it made: consolidated paths keep
        their other agents, exclusive paths it held go to their first
        standby at once.

        @param reason: why it left, a key of L{HOLDER_CHANGE_REASONS}.
        """
        member = self._members.pop(agent.agentId, None)
        if member is None:
            return
        for path in sorted(member.paths):
            self._drop(path, agent, reason)
        self._publish()

    def clear(self) -> None:
        """
        Forget every agent and path at once, promoting nobody: the proxy is
        shutting down.
        """
        self._members.clear()
        self._paths.clear()
        self._departed.clear()
        self.registeredBytes = 0
        self.generation += 1

    def _pathsOf(self, agent: AgentHandle) -> set[str]:
        """
        The paths C{agent} claims: none if it is not connected.
        """
        member = self._members.get(agent.agentId)
        return member.paths if member is not None else set()

    def agents(self) -> list[AgentHandle]:
        return [member.agent for member in self._members.values()]

    def agentCount(self) -> int:
        """
        How many agents are connected, PushProx clients included.
        """
        return len(self._members)

    def registerPath(
        self, agent: AgentHandle, path: str, name: str, labels: Mapping[str, str]
    ) -> Placement:
        """
        Let C{agent} serve C{path}, or queue its claim behind the holder.

        A claim for an exclusive path held by another connected agent waits
        as a standby unless the claimant proves it is the same agent
        (L{provesSameAgent}); the same agent claiming again only updates
        its claim's name and labels.

        @return: where the claim stands.
        @raise RegistrationRefused: with the reason.
        """
        try:
            return self._register(agent, path, name, labels)
        finally:
            self._publish()

    def _register(
        self, agent: AgentHandle, path: str, name: str, labels: Mapping[str, str]
    ) -> Placement:
        if agent.agentId not in self._members:
            raise RegistrationRefused(f"agent {agent.agentId} is not connected")
        cost = checkRegistration(path, name, labels, self.limits) + _agentCost(agent)
        if path in self.reservedPaths:
            raise RegistrationRefused(f"path {shown(path)} is reserved by the proxy", "reserved")
        if self.own.claimsOwn(path):
            raise RegistrationRefused(
                f"target {shown(path)} is the proxy's own address: scrapes of it would"
                " come back to the proxy",
                "reserved",
            )
        if not self.mayServe(agent.identity, path):
            raise RegistrationRefused(
                f"agent identity {agent.identity.name!r} is not authorized to serve {shown(path)}",
                "unauthorized",
            )
        mine = self._members[agent.agentId].paths
        if path not in mine and len(mine) >= self.limits.max_paths_per_agent:
            raise RegistrationRefused(
                f"agent already claims {len(mine)} paths, the most one agent may "
                "(proxy.internal.maxPathsPerAgent)",
                "limit",
            )
        entry = self._paths.get(path)
        if entry is None:
            # A departed path is taken back at once, its old cost freed.
            gone = self._departed.get(path)
            self._charge(cost - (gone.cost if gone is not None else 0), path)
            if gone is not None:
                del self._departed[path]
            entry = self._paths[path] = _Path(
                name, dict(labels), agent.consolidated, self._now(), [agent], cost
            )
            self._changed(entry)
            mine.add(path)
            self._overlaps(path, agent)
            return Placement(0, agent, entry.since)
        if agent.consolidated != entry.consolidated:
            held = "consolidated" if entry.consolidated else "exclusive"
            joining = "a consolidated" if agent.consolidated else "an exclusive"
            raise RegistrationRefused(
                f"path {shown(path)} is {held} on this proxy; {joining} agent cannot join it",
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
            return Placement(0, agent, entry.since)
        (holder,) = entry.agents
        if holder is agent:
            if (entry.name, entry.labels) != (name, dict(labels)):
                self._charge(cost - entry.cost, path)
                entry.cost = cost
                entry.name, entry.labels = name, dict(labels)
                self._changed(entry)
            return Placement(0, agent, entry.since)
        if provesSameAgent(holder, agent):
            # The same launch on a new link gave its old claim up; a
            # per-agent identity's new process displaces a live old one.
            keep = not agent.launchId or agent.launchId != holder.launchId
            return self._takeOver(entry, path, agent, name, labels, cost, "takeover", keep)
        if agent.identity.perAgent and agent.identity == entry.owner:
            return self._takeOver(entry, path, agent, name, labels, cost, "returned", True)
        return self._queue(entry, path, agent, name, labels, cost)

    def _overlaps(self, path: str, agent: AgentHandle) -> None:
        """
        Tell the overlap observers of the held claims that C{agent}'s new
        claim on C{path} overlaps: the claim on its host on every port if
        C{path} claims one port, else the claims on single ports of its
        host.
        """
        if not self.overlapObservers or not isHostKey(path):
            return
        host, port = parseHostKey(path)
        if port is not None:
            anyPort = hostKey(host, None)
            entry = self._paths.get(anyPort)
            found = [(path, agent, anyPort, entry.agents[0])] if entry and entry.agents else []
        else:
            prefix = path + ":"
            found = [
                (key, entry.agents[0], path, agent)
                for key, entry in self._paths.items()
                if key.startswith(prefix) and entry.agents
            ]
        for portKey, portHolder, anyPort, anyPortHolder in found:
            overlap = Overlap(portKey, portHolder, anyPort, anyPortHolder)
            for notify in list(self.overlapObservers):
                notify(overlap)

    def _queue(
        self,
        entry: _Path,
        path: str,
        agent: AgentHandle,
        name: str,
        labels: Mapping[str, str],
        cost: int,
    ) -> Placement:
        """
        Put (or keep) C{agent}'s claim in C{path}'s standby queue, with this
        name and labels; a claim already queued keeps its place.
        """
        index = entry.standbyOf(agent)
        if index is None:
            self._charge(cost, path)
            entry.standbys.append(_Standby(Claim(agent, name, dict(labels), self._now()), cost))
            index = len(entry.standbys) - 1
            self._members[agent.agentId].paths.add(path)
        else:
            standby = entry.standbys[index]
            if (standby.claim.name, standby.claim.labels) == (name, dict(labels)):
                return Placement(index + 1, entry.agents[0], entry.since)
            self._charge(cost - standby.cost, path)
            standby.cost = cost
            standby.claim = Claim(agent, name, dict(labels), standby.claim.since)
        # Standbys show on snapshots.
        self._changed(entry)
        return Placement(index + 1, entry.agents[0], entry.since)

    def _takeOver(
        self,
        entry: _Path,
        path: str,
        agent: AgentHandle,
        name: str,
        labels: Mapping[str, str],
        cost: int,
        reason: str,
        keepOld: bool,
    ) -> Placement:
        """
        C{agent} may take C{path} from its connected holder: it holds the
        path from now (a claim it had queued is withdrawn). The old holder
        waits first in line, keeping what it paid, if C{keepOld}; else its
        claim is dropped, its cost freed, and it is told so.

        @param reason: C{"takeover"} or C{"returned"}.
        """
        (old,) = entry.agents
        index = entry.standbyOf(agent)
        refund = entry.standbys[index].cost if index is not None else 0
        if not keepOld:
            refund += entry.cost
        self._charge(cost - refund, path)
        if index is not None:
            del entry.standbys[index]
        if keepOld:
            held = Claim(old, entry.name, entry.labels, entry.since)
            entry.standbys.insert(0, _Standby(held, entry.cost))
        else:
            self._members[old.agentId].paths.discard(path)
        self._promote(entry, path, _Standby(Claim(agent, name, dict(labels), 0.0), cost))
        self._members[agent.agentId].paths.add(path)
        self._changes.append(HolderChange(path, old, agent, reason, entry.since))
        if not keepOld:
            old.pathRoleChanged(path, "released", reason, agent, entry.since)
        # The displaced holder, if kept, is the first of these.
        self._tellStandbys(path, entry, reason)
        return Placement(0, agent, entry.since)

    def _promote(self, entry: _Path, path: str, claim: _Standby) -> None:
        """
        Make C{claim} C{path}'s holder; what the old holder paid must
        already be settled.
        """
        if claim.claim.agent.identity == entry.owner:
            entry.owner = None
        entry.agents[:] = [claim.claim.agent]
        entry.name, entry.labels = claim.claim.name, claim.claim.labels
        entry.cost = claim.cost
        entry.since = self._now()
        self._changed(entry)

    def _tellStandbys(self, path: str, entry: _Path, reason: str, start: int = 0) -> None:
        """
        Tell the standbys from C{start} on their holder and place: they
        changed, for C{reason} (a key of L{REASONS}).
        """
        (holder,) = entry.agents
        for index, standby in enumerate(entry.standbys[start:], start):
            standby.claim.agent.pathRoleChanged(
                path, "standby", reason, holder, entry.since, index + 1
            )

    def _publish(self) -> None:
        """
        Hand the holder changes of the call that ends to the observers.
        """
        changes, self._changes = self._changes, []
        if changes:
            for notify in list(self.holderObservers):
                notify(changes)

    def _charge(self, extra: int, path: str) -> None:
        """
        Add C{extra} bytes to L{registeredBytes}.

        @raise RegistrationRefused: if that would go over the budget; nothing
            is charged then.
        """
        budget = self.limits.max_registered_bytes
        # Departed paths give way to paths that are served.
        for other in [p for p in self._departed if p != path]:
            if extra <= 0 or self.registeredBytes + extra <= budget:
                break
            self._forgetDeparted(other)
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
        Withdraw C{agent}'s claim on C{path}: served or waiting.

        @raise RegistrationRefused: if C{agent} has no claim on C{path}.
        """
        mine = self._pathsOf(agent)
        if path not in mine:
            raise RegistrationRefused(f"path {shown(path)} is not registered by this agent")
        mine.discard(path)
        self._drop(path, agent, "unregistered")
        self._publish()

    def _drop(self, path: str, agent: AgentHandle, reason: str) -> None:
        entry = self._paths.get(path)
        if entry is None:
            return
        index = entry.standbyOf(agent)
        if index is not None:
            self.registeredBytes -= entry.standbys.pop(index).cost
            self._changed(entry)
            self._tellStandbys(path, entry, "queue", index)
            return
        if agent not in entry.agents:
            return
        entry.agents.remove(agent)
        if entry.agents:
            share = _agentCost(agent)
            entry.cost -= share
            self.registeredBytes -= share
            self._changed(entry)
            return
        self.registeredBytes -= entry.cost
        successor = self._successor(entry, agent)
        if successor is None:
            # Standbys not eligible (their identity was revoked) go too.
            for standby in entry.standbys:
                self.registeredBytes -= standby.cost
                self._pathsOf(standby.claim.agent).discard(path)
            self.generation += 1
            del self._paths[path]
            if reason == "unregistered" or not self._depart(path, entry, agent):
                self._forgotten(path)
            return
        entry.standbys.remove(successor)
        new = successor.claim.agent
        if (
            entry.owner is None
            and reason != "unregistered"
            and agent.identity.perAgent
            and new.identity != agent.identity
        ):
            entry.owner = agent.identity
        self._promote(entry, path, successor)
        new.pathRoleChanged(path, "holder", reason, new, entry.since)
        self._changes.append(HolderChange(path, agent, new, reason, entry.since))
        self._tellStandbys(path, entry, reason)

    def _successor(self, entry: _Path, leaving: AgentHandle) -> _Standby | None:
        """
        The standby to promote when C{leaving} leaves C{entry}: the first
        whose identity still holds (a reload revoking it is about to
        disconnect its agent), preferring the path's per-agent owner (see
        L{_Path.owner}), else the leaving holder's identity if that is
        per-agent.
        """
        eligible = [
            standby for standby in entry.standbys if self.stillHolds(standby.claim.agent.identity)
        ]
        preferred = entry.owner or (leaving.identity if leaving.identity.perAgent else None)
        for standby in eligible:
            if standby.claim.agent.identity == preferred:
                return standby
        return eligible[0] if eligible else None

    # Departed paths.

    def _depart(self, path: str, entry: _Path, agent: AgentHandle) -> bool:
        """
        Keep C{path}, whose last agent left (not unregistered), visible for
        C{proxy.internal.departedPathRetentionSecs}: Prometheus then sees
        its target down, with a reason, instead of losing it.

        @return: whether it is kept (there is a retention).
        """
        if self.limits.departed_path_retention_secs <= 0:
            return False
        self.generation += 1
        self.registeredBytes += entry.cost
        self._departed[path] = _Departed(
            PathEntry(
                path,
                entry.name,
                entry.labels,
                entry.consolidated,
                (),
                # Its discovery text is what it was: readers may keep theirs.
                entry.changed,
                entry.since,
                departedFrom=((agent.kind, agent.name, agent.hostName),),
                leftAt=self._now(),
            ),
            entry.cost,
        )
        return True

    def _forgetDeparted(self, path: str) -> None:
        self.registeredBytes -= self._departed.pop(path).cost
        self.generation += 1
        self._forgotten(path)

    def _forgotten(self, path: str) -> None:
        """
        C{path} is neither served nor departed any more.
        """
        for notify in list(self.forgottenObservers):
            notify(path)

    def expireDeparted(self) -> None:
        """
        Forget the departed paths kept longer than the retention.
        """
        limit = self._now() - self.limits.departed_path_retention_secs
        while self._departed:
            path, gone = next(iter(self._departed.items()))
            assert gone.entry.leftAt is not None
            if gone.entry.leftAt > limit:
                return
            self._forgetDeparted(path)

    def departed(self, path: str) -> PathEntry | None:
        """
        C{path} if its last agent left within the retention, else L{None}.
        """
        self.expireDeparted()
        gone = self._departed.get(path)
        return gone.entry if gone is not None else None

    def lookup(self, path: str) -> tuple[AgentHandle, ...]:
        """
        The agents serving C{path}, none if it is unknown.
        """
        entry = self._paths.get(path)
        return tuple(entry.agents) if entry is not None else ()

    def hostClaim(self, host: str, port: int) -> str:
        """
        The key that answers for target C{host:port} (a checked host, see
        L{promtwist.hostkeys.checkHost}): the claim on that port exactly if
        someone holds it, else the claim on the host on any port if someone
        does, else whichever of the two departed lately, else the exact
        key. Scrapes are recorded, and their metrics labelled, by this key:
        a claim on any port is one series, whichever ports are asked for.
        """
        exact, anyPort = hostKey(host, port), hostKey(host, None)
        for key in (exact, anyPort):
            if key in self._paths:
                return key
        for key in (exact, anyPort):
            if self.departed(key) is not None:
                return key
        return exact

    def lookupHost(self, host: str, port: int) -> tuple[AgentHandle, ...]:
        """
        The agents serving target C{host:port}, as L{hostClaim} finds them;
        none if nobody does.
        """
        return self.lookup(self.hostClaim(host, port))

    def snapshot(self) -> list[PathEntry]:
        """
        An immutable copy of the path table, sorted by path.
        """
        return [self._copy(path, e) for path, e in sorted(self._paths.items())]

    def _copy(self, path: str, e: _Path) -> PathEntry:
        return PathEntry(
            path,
            e.name,
            e.labels,
            e.consolidated,
            tuple(e.agents),
            e.changed,
            e.since,
            tuple(standby.claim for standby in e.standbys),
        )

    def discoverableVersions(self) -> list[tuple[str, int]]:
        """
        What L{discoverable} lists, as (path, C{changed}) pairs sorted by
        path: enough for a cache of renderings to tell which of its entries
        still hold, without copying ten thousand entries to find the one
        that changed. L{discoverableEntry} gives an entry itself.
        """
        self.expireDeparted()
        versions = [(path, e.changed) for path, e in self._paths.items()]
        versions += [(path, gone.entry.changed) for path, gone in self._departed.items()]
        versions.sort()
        return versions

    def discoverableEntry(self, path: str) -> Listed:
        """
        What discovery shows of C{path}, one of L{discoverableVersions}'
        paths: without copying the whole entry, which costs as much as
        encoding it.
        """
        e = self._paths.get(path)
        if e is None:
            gone = self._departed[path].entry
            return Listed(path, gone.labels, gone.agentNames, gone.hostNames)
        return Listed(
            path,
            e.labels,
            ", ".join(agent.name for agent in e.agents),
            ", ".join(agent.hostName for agent in e.agents),
        )

    def discoverable(self) -> list[PathEntry]:
        """
        L{snapshot} and the departed paths still kept, sorted by path: what
        discovery lists.
        """
        self.expireDeparted()
        entries = self.snapshot()
        if self._departed:
            entries += [gone.entry for gone in self._departed.values()]
            entries.sort(key=lambda entry: entry.path)
        return entries
