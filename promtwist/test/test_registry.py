"""
Tests for L{promtwist.proxy.registry}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config import Identity
from promtwist.proxy.auth import ANONYMOUS
from promtwist.proxy.registry import RegistrationRefused, Registry, checkPath


@dataclass(eq=False)
class FakeAgent:
    agentId: str
    name: str = "agent"
    hostName: str = "host"
    launchId: str = "launch"
    consolidated: bool = False
    identity: Identity = ANONYMOUS


def connected(registry: Registry, *agents: FakeAgent) -> None:
    for agent in agents:
        registry.addAgent(agent)


class PathRuleTests(SynchronousTestCase):
    def test_multiSegmentAllowed(self) -> None:
        checkPath("team/app1/metrics")

    def test_refused(self) -> None:
        for path, why in [
            ("", "empty path"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a b", "contains ' '"),
            ("a?b", "contains '?'"),
            ("a/../b", "dot segment"),
        ]:
            with self.assertRaises(RegistrationRefused) as raised:
                checkPath(path)
            self.assertIn(why, str(raised.exception), path)


class RegistryTests(SynchronousTestCase):
    def test_registerAndLookup(self) -> None:
        registry = Registry()
        a = FakeAgent("1")
        connected(registry, a)
        registry.registerPath(a, "app/metrics", "App", {"k": "v"})
        self.assertEqual(registry.lookup("app/metrics"), (a,))
        self.assertEqual(registry.lookup("app"), ())
        (entry,) = registry.snapshot()
        self.assertEqual(
            (entry.path, entry.name, dict(entry.labels)), ("app/metrics", "App", {"k": "v"})
        )

    def test_disconnectedAgentRefused(self) -> None:
        registry = Registry()
        self.assertRaises(RegistrationRefused, registry.registerPath, FakeAgent("1"), "p", "", {})

    def test_reservedPath(self) -> None:
        registry = Registry(reservedPaths=["discovery"])
        a = FakeAgent("1")
        connected(registry, a)
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(a, "discovery", "", {})
        self.assertIn("reserved", str(raised.exception))

    def test_otherAgentCannotTakeOver(self) -> None:
        """
        An exclusive path held by a connected agent is not handed to an agent
        of another name; the owner keeps it.
        """
        registry = Registry()
        owner, intruder = FakeAgent("1", name="prod"), FakeAgent("2", name="laptop")
        connected(registry, owner, intruder)
        registry.registerPath(owner, "p", "", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(intruder, "p", "", {})
        self.assertIn("served by agent 'prod'", str(raised.exception))
        self.assertEqual(registry.lookup("p"), (owner,))
        self.assertEqual(registry.displacements, 0)

    def test_otherIdentityCannotTakeOver(self) -> None:
        """
        An agent that copies the owner's name but proves another identity
        does not get the path.
        """
        registry = Registry()
        owner = FakeAgent("1", name="prod", identity=Identity("team_a", "ta"))
        impostor = FakeAgent("2", name="prod", identity=Identity("team_b", "tb"))
        connected(registry, owner, impostor)
        registry.registerPath(owner, "p", "", {})
        self.assertRaises(RegistrationRefused, registry.registerPath, impostor, "p", "", {})
        self.assertEqual(registry.lookup("p"), (owner,))
        self.assertEqual(registry.refusals["taken"], 1)

    def test_identityGlobs(self) -> None:
        """
        The registry asks whether the agent's identity may serve the path.
        """
        team = Identity("team_a", "ta", ("team_a_*",))
        registry = Registry(mayServe=lambda identity, path: path.startswith("team_a_"))
        agent = FakeAgent("1", identity=team)
        connected(registry, agent)
        registry.registerPath(agent, "team_a_metrics", "", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(agent, "team_b_metrics", "", {})
        self.assertEqual(
            str(raised.exception),
            "agent identity 'team_a' is not authorized to serve /team_b_metrics",
        )
        self.assertEqual(registry.refusals["unauthorized"], 1)
        self.assertEqual(registry.lookup("team_b_metrics"), ())

    def test_pathsPerAgentLimit(self) -> None:
        registry = Registry(maxPathsPerAgent=2)
        agent = FakeAgent("1")
        connected(registry, agent)
        registry.registerPath(agent, "p1", "", {})
        registry.registerPath(agent, "p2", "", {})
        registry.registerPath(agent, "p2", "again", {})
        with self.assertRaises(RegistrationRefused) as raised:
            registry.registerPath(agent, "p3", "", {})
        self.assertIn("proxy.internal.maxPathsPerAgent", str(raised.exception))
        self.assertEqual(registry.refusals, {"limit": 1})

    def test_sameAgentTakesOver(self) -> None:
        """
        The same agent reconnecting before its old link was found dead takes
        its path over, and the old link no longer owns it.
        """
        registry = Registry()
        old, new = FakeAgent("1", name="prod"), FakeAgent("2", name="prod")
        connected(registry, old, new)
        registry.registerPath(old, "p", "", {})
        registry.registerPath(new, "p", "", {})
        self.assertEqual(registry.lookup("p"), (new,))
        self.assertEqual(registry.displacements, 1)
        registry.removeAgent(old)
        self.assertEqual(registry.lookup("p"), (new,))

    def test_consolidated(self) -> None:
        """
        Consolidated agents share a path; removing one keeps the others, and
        exclusive and consolidated registrations do not mix.
        """
        registry = Registry()
        a, b = FakeAgent("1", consolidated=True), FakeAgent("2", consolidated=True)
        c = FakeAgent("3")
        connected(registry, a, b, c)
        registry.registerPath(a, "p", "", {})
        registry.registerPath(b, "p", "", {})
        self.assertEqual(registry.lookup("p"), (a, b))
        self.assertRaises(RegistrationRefused, registry.registerPath, c, "p", "", {})
        registry.removeAgent(a)
        self.assertEqual(registry.lookup("p"), (b,))
        registry.registerPath(c, "q", "", {})
        d = FakeAgent("4", consolidated=True)
        connected(registry, d)
        self.assertRaises(RegistrationRefused, registry.registerPath, d, "q", "", {})

    def test_unregister(self) -> None:
        registry = Registry()
        a, b = FakeAgent("1"), FakeAgent("2")
        connected(registry, a, b)
        registry.registerPath(a, "p", "", {})
        self.assertRaises(RegistrationRefused, registry.unregisterPath, b, "p")
        registry.unregisterPath(a, "p")
        self.assertEqual(registry.lookup("p"), ())
        # Only a path nobody holds goes to an agent of another name.
        other = FakeAgent("3", name="other")
        connected(registry, other)
        registry.registerPath(other, "p", "", {})
        self.assertEqual(registry.lookup("p"), (other,))

    def test_removeAgentSweepsPaths(self) -> None:
        registry = Registry()
        a = FakeAgent("1")
        connected(registry, a)
        for path in ("p1", "p2"):
            registry.registerPath(a, path, "", {})
        registry.removeAgent(a)
        self.assertEqual(registry.snapshot(), [])
        self.assertEqual(registry.agents(), [])
