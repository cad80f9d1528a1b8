"""
Tests for the configuration of host-routed targets: C{agent.targets},
C{agent.fqdn} and C{proxy.auth[].targets}.
"""

from __future__ import annotations

import socket
from functools import partial

from promtwist.config.load import hostFQDN
from promtwist.config.settings import Identity, PathConfig, ProxySettings
from promtwist.hostkeys import hostKey
from promtwist.proxy.auth import Authenticator
from promtwist.test.test_config import ConfigTestCase


class AgentTargetsTests(ConfigTestCase):
    def test_entries(self) -> None:
        """
        A string or an object; a port alone stands for C{agent.fqdn}; the
        scheme defaults to http and is kept in the URL.
        """
        agent = self.agentFrom(
            'agent { fqdn = "Node1.Example", targets: [":9100", "https://db1:9187",'
            ' {target: "[::1]:9182", labels: "{\\"env\\": \\"prod\\", \\"n\\": 1}"},'
            ' {target: "https://:9443", labels: {team: a}}] }\n'
        )
        self.assertEqual(agent.fqdn, "Node1.Example")
        self.assertEqual(
            agent.targets,
            (
                PathConfig(
                    "http://node1.example:9100",
                    hostKey("node1.example", 9100),
                    "http://node1.example:9100/",
                ),
                PathConfig("https://db1:9187", hostKey("db1", 9187), "https://db1:9187/"),
                PathConfig(
                    "http://[::1]:9182",
                    hostKey("::1", 9182),
                    "http://[::1]:9182/",
                    {"env": "prod", "n": "1"},
                ),
                PathConfig(
                    "https://node1.example:9443",
                    hostKey("node1.example", 9443),
                    "https://node1.example:9443/",
                    {"team": "a"},
                ),
            ),
        )
        self.assertEqual(agent.claims, agent.path_configs + agent.targets)

    def test_fqdnDefault(self) -> None:
        agent = self.agentFrom('agent.targets: [":9100"]\n')
        self.assertEqual(agent.fqdn, socket.getfqdn())
        self.assertEqual(agent.targets[0].path, hostKey(socket.getfqdn(), 9100))

    def test_fqdnResolvedOnce(self) -> None:
        """
        The default C{agent.fqdn} is asked of the resolver once: a reload,
        which runs in the reactor, reuses the answer instead of blocking on
        a lookup.
        """
        hostFQDN.cache_clear()
        self.addCleanup(hostFQDN.cache_clear)
        lookups: list[str] = []

        def getfqdn(name: str = "") -> str:
            lookups.append(name)
            return "resolved.example"

        self.patch(socket, "getfqdn", getfqdn)
        for _ in range(3):
            agent = self.agentFrom('agent.targets: [":9100"]\n')
            self.assertEqual(agent.targets[0].path, hostKey("resolved.example", 9100))
        self.assertEqual(len(lookups), 1)

    def test_errors(self) -> None:
        """
        A bad entry stops loading, naming the entry and what is wrong.
        """
        for entries, fragments in [
            ('["node1"]', ("agent.targets[0]", "has no port")),
            ('["ftp://node1:21"]', ("agent.targets[0]", "scheme 'ftp'")),
            ('["node1:0"]', ("out of range",)),
            ('["a b:80"]', ("not a DNS name",)),
            ('["[fe80::1%eth0]:9100"]', ("agent.targets[0]", "has an IPv6 zone")),
            ("[{labels: {}}]", ("agent.targets[0]: target is required",)),
            ('[{target: "n:1", url: "x"}]', ("agent.targets[0].url",)),
            ('[{target: "n:1", labels: "[1]"}]', ("agent.targets[0].labels", "a JSON object")),
            ('[{target: "x:80/metrics"}]', ("agent.targets[0].target",)),
            ('["n:1", "http://N:1"]', ("agent.targets[1]", "is also agent.targets[0]")),
        ]:
            config = self.writeConfig(f"agent.targets: {entries}\n")
            self.assertConfigError(partial(self.agent, {"config": config}), *fragments)


class IdentityTargetsTests(ConfigTestCase):
    def test_read(self) -> None:
        proxy = self.proxyFrom(
            'proxy.auth: [{name: n, token: t, targets: ["*.example:9100", "db?"]}]\n'
        )
        self.assertEqual(proxy.identities[0].targets, ("*.example:9100", "db?"))

    def test_badGlob(self) -> None:
        config = self.writeConfig('proxy.auth: [{name: n, token: t, targets: ["a/b"]}]\n')
        self.assertConfigError(
            lambda: self.proxy({"config": config}), "proxy.auth[0].targets", "host:port glob"
        )


class MayClaimTests(ConfigTestCase):
    def test_targets(self) -> None:
        """
        Target globs limit host keys; an identity limited to paths claims no
        target, one limited to targets no path, and one limited to nothing
        claims any.
        """
        nodes = Identity("nodes", "t1", targets=("*.example:91??", "pushed"))
        apps = Identity("apps", "t2", paths=("app*",))
        ops = Identity("ops", "t3")
        auth = Authenticator(ProxySettings(identities=(nodes, apps, ops)))
        for identity, key, expected in [
            (nodes, hostKey("node1.example", 9100), True),
            (nodes, hostKey("Node1.EXAMPLE", 9182), True),
            (nodes, hostKey("node1.example", 9200), False),
            (nodes, hostKey("node1.other", 9100), False),
            (nodes, hostKey("pushed", None), True),
            (nodes, hostKey("pushed", 80), False),
            (nodes, "app1", False),
            (apps, hostKey("node1.example", 9100), False),
            (apps, "app1", True),
            (ops, hostKey("anything", 1), True),
        ]:
            self.assertEqual(auth.mayServe(identity, key), expected, (identity.name, key))
