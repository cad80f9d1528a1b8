"""
Tests for L{promtwist.config}: prometheus-proxy configuration files, options
and environment variables resolved into settings objects.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from functools import partial
from typing import Any

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.keys import AGENT, PROXY
from promtwist.config.load import loadAgentSettings, loadProxySettings, warningsOnce
from promtwist.config.schema import Role
from promtwist.config.settings import (
    AgentSettings,
    ConfigError,
    Identity,
    MetricFilter,
    PathConfig,
    ProxyEndpoint,
    ProxySettings,
)
from promtwist.config.sources import fetchURL

DATA = FilePath(__file__).sibling("data")

# The environment variables prometheus-proxy reads (its EnvVars), per process;
# PROXY_CONFIG and AGENT_CONFIG name the configuration source instead.
PROXY_ENV = [
    "PROXY_PORT",
    "AGENT_PORT",
    "SD_ENABLED",
    "SD_PATH",
    "SD_TARGET_PREFIX",
    "DASHBOARD_ENABLED",
    "DASHBOARD_PORT",
    "DASHBOARD_PATH",
    "REFLECTION_DISABLED",
    "HANDSHAKE_TIMEOUT_SECS",
    "PERMIT_KEEPALIVE_WITHOUT_CALLS",
    "PERMIT_KEEPALIVE_TIME_SECS",
    "MAX_CONNECTION_IDLE_SECS",
    "MAX_CONNECTION_AGE_SECS",
    "MAX_CONNECTION_AGE_GRACE_SECS",
    "PROXY_LOG_LEVEL",
]
AGENT_ENV = [
    "PROXY_HOSTNAME",
    "AGENT_NAME",
    "CONSOLIDATED",
    "SCRAPE_TIMEOUT_SECS",
    "SCRAPE_MAX_RETRIES",
    "CHUNK_CONTENT_SIZE_KBS",
    "MIN_GZIP_SIZE_BYTES",
    "TRUST_ALL_X509_CERTIFICATES",
    "HTTPS_TRUST_STORE_PATH",
    "HTTPS_TRUST_STORE_PASSWORD",
    "MAX_CONCURRENT_CLIENTS",
    "CLIENT_TIMEOUT_SECS",
    "MAX_CLIENT_CACHE_SIZE",
    "MAX_CLIENT_CACHE_AGE_MINS",
    "MAX_CLIENT_CACHE_IDLE_MINS",
    "CLIENT_CACHE_CLEANUP_INTERVAL_MINS",
    "KEEPALIVE_WITHOUT_CALLS",
    "UNARY_DEADLINE_SECS",
    "AGENT_LOG_LEVEL",
    "OVERRIDE_AUTHORITY",
]
BOTH_ENV = [
    "AGENT_TOKEN",
    "DEBUG_ENABLED",
    "METRICS_ENABLED",
    "METRICS_PORT",
    "ADMIN_ENABLED",
    "ADMIN_PORT",
    "TRANSPORT_FILTER_DISABLED",
    "CERT_CHAIN_FILE_PATH",
    "PRIVATE_KEY_FILE_PATH",
    "TRUST_CERT_COLLECTION_FILE_PATH",
    "KEEPALIVE_TIME_SECS",
    "KEEPALIVE_TIMEOUT_SECS",
]


def noFetch(url: str) -> bytes:
    raise AssertionError(f"unexpected fetch of {url}")


class ConfigTestCase(SynchronousTestCase):
    """
    Helpers: write configuration files, load settings and collect warnings.
    """

    def setUp(self) -> None:
        self.warnings: list[str] = []

    def writeConfig(self, text: str, suffix: str = ".conf") -> str:
        path: str = self.mktemp() + suffix
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def proxy(
        self,
        options: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        fetch: Callable[[str], bytes] = noFetch,
    ) -> ProxySettings:
        return loadProxySettings(
            options or {}, environ or {}, fetch=fetch, warn=self.warnings.append
        )

    def agent(
        self,
        options: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        fetch: Callable[[str], bytes] = noFetch,
    ) -> AgentSettings:
        return loadAgentSettings(
            options or {}, environ or {}, fetch=fetch, warn=self.warnings.append
        )

    def agentFrom(self, text: str, **options: object) -> AgentSettings:
        return self.agent({"config": self.writeConfig(text), **options})

    def proxyFrom(self, text: str, **options: object) -> ProxySettings:
        return self.proxy({"config": self.writeConfig(text), **options})

    def assertConfigError(self, load: Callable[[], object], *fragments: str) -> str:
        """
        Assert that C{load} raises a one-line L{ConfigError} containing every
        fragment, and return its message.
        """
        message = str(self.assertRaises(ConfigError, load))
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


class ExampleFilesTests(ConfigTestCase):
    """
    prometheus-proxy's example files load unchanged, for each process that has
    a section in them.
    """

    def example(self, name: str) -> str:
        return DATA.child(name).path

    def test_simple(self) -> None:
        config = self.example("simple.conf")
        self.assertEqual(
            self.proxy({"config": config}),
            ProxySettings(admin_enabled=True, metrics_enabled=True),
        )
        agent = self.agent({"config": config})
        self.assertEqual(agent.proxy_endpoints, (ProxyEndpoint("localhost", 50051),))
        self.assertEqual(
            agent.path_configs,
            (
                PathConfig(
                    "Proxy metrics",
                    "proxy_metrics",
                    "http://localhost:8082/metrics",
                    {"key1": "value1", "key2": "2"},
                ),
                PathConfig(
                    "Agent metrics",
                    "agent_metrics",
                    "http://localhost:8083/metrics",
                    {"key3": "value3", "key4": "4"},
                ),
            ),
        )

    def test_myapps(self) -> None:
        config = self.example("myapps.conf")
        self.assertEqual(self.proxy({"config": config}), ProxySettings())
        agent = self.agent({"config": config})
        self.assertEqual(
            [(p.name, p.path, p.url) for p in agent.path_configs],
            [
                ("App1 metrics", "app1_metrics", "http://app1.local:9100/metrics"),
                ("App2 metrics", "app2_metrics", "http://app2.local:9100/metrics"),
                ("App3 metrics", "app3_metrics", "http://app3.local:9100/metrics"),
            ],
        )
        self.assertEqual(agent.path_configs[2].labels, {"key5": "value5", "key6": "6"})
        self.assertEqual(agent.config_source, config)
        self.assertEqual(self.warnings, [])

    def test_federate(self) -> None:
        """
        The federate URL's raw brackets, braces and quotes are kept as written.
        """
        agent = self.agent({"config": self.example("federate.conf")})
        self.assertEqual(
            agent.path_configs[0].url, "http://prometheus:9090/federate?match[]={job=~'.*'}"
        )
        self.assertEqual(agent.path_configs[0].labels, {})

    def test_tlsWithoutMutualAuth(self) -> None:
        config = self.example("tls-no-mutual-auth.conf")
        proxy = self.proxy({"config": config})
        self.assertEqual(
            (
                proxy.agent_port,
                proxy.tls_cert_chain_file_path,
                proxy.tls_private_key_file_path,
                proxy.tls_trust_cert_collection_file_path,
            ),
            (50440, "testing/certs/server1.pem", "testing/certs/server1.key", ""),
        )
        agent = self.agent({"config": config})
        self.assertEqual(agent.proxy_endpoints, (ProxyEndpoint("localhost", 50440),))
        self.assertTrue(agent.trust_all_x509_certificates)
        self.assertEqual(agent.tls_override_authority, "foo.test.google.fr")
        self.assertEqual(agent.tls_trust_cert_collection_file_path, "testing/certs/ca.pem")
        self.assertEqual(agent.tls_cert_chain_file_path, "")
        self.assertEqual(self.warnings, [])

    def test_tlsWithMutualAuth(self) -> None:
        config = self.example("tls-with-mutual-auth.conf")
        proxy = self.proxy({"config": config})
        self.assertEqual(proxy.tls_trust_cert_collection_file_path, "testing/certs/ca.pem")
        agent = self.agent({"config": config})
        self.assertEqual(
            (agent.tls_cert_chain_file_path, agent.tls_private_key_file_path),
            ("testing/certs/client.pem", "testing/certs/client.key"),
        )

    def test_agentFilters(self) -> None:
        config = self.example("agent-filters.conf")
        self.assertEqual(self.proxy({"config": config}), ProxySettings())
        agent = self.agent({"config": config})
        self.assertEqual([p.path for p in agent.path_configs], ["app1_metrics"])
        self.assertEqual(
            agent.filters, (MetricFilter("app1_metrics", (), ("go_gc_.*", "go_memstats_.*")),)
        )
        self.assertEqual(self.warnings, [])

    def test_filterErrors(self) -> None:
        for conf, expected in [
            ("agent.filters = [{path = p, metricNameAllow = []}]", "metricNameDeny is required"),
            (
                'agent.filters = [{path = p, metricNameAllow = ["("], metricNameDeny = []}]',
                "agent.filters[0].metricNameAllow: expected regular expressions",
            ),
            # Values that are no string at all are configuration errors
            # too, naming the entry's key, not a ValueError out of the loader.
            (
                "agent.filters = [{path = {a = 1}, metricNameAllow = [], metricNameDeny = []}]",
                'agent.filters[0].path: expected a string, got {"a":1}',
            ),
            (
                "agent.filters = [{path = p, metricNameAllow = [[x]], metricNameDeny = []}]",
                'agent.filters[0].metricNameAllow: expected regular expressions, got ["x"]',
            ),
        ]:
            self.assertConfigError(partial(self.agentFrom, conf), expected)

    def test_nginxProxy(self) -> None:
        config = self.example("nginx-proxy.conf")
        self.assertEqual(self.proxy({"config": config}), ProxySettings())
        agent = self.agent({"config": config})
        self.assertEqual(agent.proxy_endpoints, (ProxyEndpoint("localhost", 50440),))
        self.assertEqual(len(agent.path_configs), 3)
        self.assertEqual(len(self.warnings), 2)
        self.assertIn("proxy.transportFilterDisabled", self.warnings[0])
        self.assertIn("agent.transportFilterDisabled", self.warnings[1])


class TableTests(SynchronousTestCase):
    """
    The key tables are complete and consistent.
    """

    def test_everyFieldFed(self) -> None:
        """
        Every settings field is fed by exactly one key, except those built
        from several (endpoints, paths, the config source itself).
        """
        computed = {
            "proxy_endpoints",
            "path_configs",
            "path_configs_listed",
            "targets",
            "config_source",
            "identities",
            "http_allowed_networks",
            "admin_allowed_networks",
            "pushprox_allowed_networks",
            "filters",
        }
        for role, settingsClass in ((PROXY, ProxySettings), (AGENT, AgentSettings)):
            fed = [s.field for s in role.settings if s.field]
            self.assertEqual(len(fed), len(set(fed)))
            self.assertEqual(
                set(fed) | (computed & {f.name for f in fields(settingsClass)}),
                {f.name for f in fields(settingsClass)},
            )

    def test_everyFieldNamed(self) -> None:
        """
        Every settings field has a name an operator writes, for the reload's
        "needs a restart" line: its key, or how the role describes it.
        """
        self.assertEqual(PROXY.keyForField("http_allowed_networks"), "proxy.http.allowedNetworks")
        self.assertEqual(AGENT.keyForField("config_source"), "--config")
        self.assertEqual(AGENT.keyForField("filters"), "agent.filters")
        for role, settingsClass in ((PROXY, ProxySettings), (AGENT, AgentSettings)):
            for f in fields(settingsClass):
                self.assertTrue(role.keyForField(f.name), f.name)
        self.assertRaises(KeyError, PROXY.keyForField, "path_configs")

    def test_defaults(self) -> None:
        """
        Every default has its setting's type and satisfies its rule.
        """
        for role in (PROXY, AGENT):
            for setting in role.settings:
                self.assertIs(type(setting.default), setting.kind, setting.key)
                if setting.rule:
                    self.assertEqual(setting.rule.apply(setting.default), setting.default)

    def test_environmentVariables(self) -> None:
        """
        Every environment variable prometheus-proxy reads is read here, once.
        """
        for role, expected in ((PROXY, PROXY_ENV + BOTH_ENV), (AGENT, AGENT_ENV + BOTH_ENV)):
            names = [s.env for s in role.settings if s.env]
            self.assertEqual(sorted(names), sorted(expected))

    def test_uniqueOptions(self) -> None:
        for role in (PROXY, AGENT):
            self.assertUnique(role, [n for s in role.settings for n in s.options])
            self.assertUnique(role, [s.short for s in role.settings if s.short])

    def assertUnique(self, role: Role, names: list[str]) -> None:
        self.assertEqual(len(names), len(set(names)), role.section)

    def test_sectionKeys(self) -> None:
        for role in (PROXY, AGENT):
            for key in role.known:
                self.assertTrue(key.startswith(role.section + "."), key)


class ChangedKeysTests(SynchronousTestCase):
    """
    L{Role.changedKeys}, the one diff both processes' reloads use: what
    changed and needs a restart, named by key; a role's live fields are
    applied, so left out.
    """

    def test_proxy(self) -> None:
        old = ProxySettings()
        new = replace(
            old,
            identities=(Identity("a", "t"),),
            agent_token="new",
            http_allowed_networks=("10.0.0.0/8",),
            max_agents=5,
        )
        self.assertEqual(
            PROXY.changedKeys(old, new), ("proxy.internal.maxAgents", "proxy.http.allowedNetworks")
        )
        self.assertEqual(PROXY.changedKeys(old, replace(old, agent_token="new")), ())

    def test_agent(self) -> None:
        """
        The paths are applied; fields made by one key are named once.
        """
        old = AgentSettings(config_source="a.conf")
        new = replace(
            old,
            config_source="b.conf",
            path_configs=(PathConfig("p", "p", "http://t/"),),
            path_configs_listed=True,
            proxy_endpoints=(ProxyEndpoint("elsewhere"),),
            name="other",
        )
        self.assertEqual(
            AGENT.changedKeys(old, new),
            ("--config", "agent.name", "agent.proxy.endpoints (or hostname/port, --proxy)"),
        )


class DefaultsTests(ConfigTestCase):
    def test_proxyWithoutConfig(self) -> None:
        """
        The proxy runs on defaults alone.
        """
        self.assertEqual(self.proxy(), ProxySettings())

    def test_proxyDefaults(self) -> None:
        proxy = self.proxy()
        self.assertEqual((proxy.http_port, proxy.agent_port), (8080, 50051))
        self.assertEqual((proxy.sd_path, proxy.sd_target_prefix), ("discovery", ""))
        self.assertEqual(proxy.max_frame_bytes, 1048576)
        self.assertEqual((proxy.heartbeat_period_secs, proxy.handshake_timeout_secs), (5, 10))

    def test_agentDefaults(self) -> None:
        config = self.writeConfig("agent {}\n")
        self.assertEqual(
            self.agent({"config": config}),
            AgentSettings(
                config_source=config,
                name=f"Unnamed-{socket.gethostname()}",
                fqdn=socket.getfqdn(),
            ),
        )

    def test_agentNeedsConfig(self) -> None:
        message = self.assertConfigError(self.agent)
        self.assertEqual(
            message,
            "A configuration file or url must be specified with --config or $AGENT_CONFIG",
        )

    def test_agentConfigFromEnvironment(self) -> None:
        config = self.writeConfig('agent.name = "from-env-config"\n')
        agent = self.agent(environ={"AGENT_CONFIG": config})
        self.assertEqual(agent.name, "from-env-config")

    def test_configOptionBeatsEnvironment(self) -> None:
        chosen = self.writeConfig("proxy.http.port = 1111\n")
        other = self.writeConfig("proxy.http.port = 2222\n")
        proxy = self.proxy({"config": chosen}, {"PROXY_CONFIG": other})
        self.assertEqual(proxy.http_port, 1111)

    def test_blankName(self) -> None:
        agent = self.agentFrom('agent.name = "  "\n')
        self.assertEqual(agent.name, f"Unnamed-{socket.gethostname()}")

    def test_idleTimeout(self) -> None:
        """
        -1 means prometheus-proxy's default of 45 seconds.
        """
        for given, expected in (("-1", 45), ("7", 7)):
            proxy = self.proxyFrom(f"proxy.http.idleTimeoutSecs = {given}")
            self.assertEqual(proxy.http_idle_timeout_secs, expected)
        self.assertConfigError(
            lambda: self.proxyFrom("proxy.http.idleTimeoutSecs = 0"), "idleTimeoutSecs"
        )


class PrecedenceTests(ConfigTestCase):
    """
    Command line beats environment beats -D beats file beats default.
    """

    def layers(
        self,
        load: Callable[[Mapping[str, object], Mapping[str, str]], Any],
        key: str,
        option: str,
        env: str,
        values: tuple[str, str, str, str],
    ) -> list[Any]:
        """
        Load with all four sources set, then with one fewer each time.

        @param values: the command-line, environment, -D and file values.
        """
        cli, environ, define, file = values
        options: dict[str, object] = {
            "config": self.writeConfig(f"{key} = {file}\n"),
            "defines": [f"{key}={define}"],
            option: cli,
        }
        results = [load(options, {env: environ})]
        del options[option]
        results.append(load(options, {env: environ}))
        results.append(load(options, {}))
        options["defines"] = []
        results.append(load(options, {}))
        del options["config"]
        results.append(load(options, {}))
        return results

    def test_int(self) -> None:
        ports = self.layers(
            lambda o, e: self.proxy(o, e).http_port,
            "proxy.http.port",
            "port",
            "PROXY_PORT",
            ("1001", "1002", "1003", "1004"),
        )
        self.assertEqual(ports, [1001, 1002, 1003, 1004, 8080])

    def test_str(self) -> None:
        tokens = self.layers(
            lambda o, e: self.proxy(o, e).agent_token,
            "proxy.agentToken",
            "agent_token",
            "AGENT_TOKEN",
            ("cli", "env", "define", "file"),
        )
        self.assertEqual(tokens, ["cli", "env", "define", "file", ""])

    def test_bool(self) -> None:
        enabled = self.layers(
            lambda o, e: self.proxy(o, e).sd_enabled,
            "proxy.service.discovery.enabled",
            "sd_enabled",
            "SD_ENABLED",
            ("true", "false", "true", "false"),
        )
        self.assertEqual(enabled, [True, False, True, False, False])

    def test_perPathInstance(self) -> None:
        """
        promtwist's own C{proxy.service.discovery.perPathInstance} is set by
        option, -D or file like the other discovery keys, and is off by
        default, as prometheus-proxy has no per-path instance. It reads no
        environment variable: those stay exactly prometheus-proxy's.
        """
        perPath = self.layers(
            lambda o, e: self.proxy(o, e).sd_per_path_instance,
            "proxy.service.discovery.perPathInstance",
            "sd_per_path_instance",
            "SD_PER_PATH_INSTANCE",
            ("true", "true", "false", "true"),
        )
        self.assertEqual(perPath, [True, False, False, True, False])

    def test_float(self) -> None:
        config = self.writeConfig("agent {}\n")
        timeouts = self.layers(
            lambda o, e: self.agent({"config": config, **o}, e).scrape_timeout_secs,
            "agent.scrapeTimeoutSecs",
            "timeout",
            "SCRAPE_TIMEOUT_SECS",
            ("1.5", "2", "3", "4"),
        )
        self.assertEqual(timeouts, [1.5, 2, 3, 4, 15])

    def test_commandLineFlag(self) -> None:
        """
        A flag is C{True} when given, and then wins over the environment.
        """
        proxy = self.proxy({"sd_enabled": True}, {"SD_ENABLED": "false"})
        self.assertTrue(proxy.sd_enabled)


class ValueErrorTests(ConfigTestCase):
    """
    Invalid values are reported in one line naming source, key and expectation.
    """

    def test_fileMessage(self) -> None:
        path = self.writeConfig('agent.http.maxConcurrentClients = "abc"\n')
        message = self.assertConfigError(lambda: self.agent({"config": path}))
        self.assertEqual(
            message,
            f'{path}: agent.http.maxConcurrentClients: expected an integer > 0, got "abc"',
        )

    def test_environmentBoolean(self) -> None:
        """
        Environment booleans are true or false, in any case, and nothing else.
        """
        self.assertTrue(self.proxy(environ={"SD_ENABLED": "TRUE"}).sd_enabled)
        message = self.assertConfigError(lambda: self.proxy(environ={"SD_ENABLED": "yes"}))
        self.assertEqual(
            message,
            "environment variable SD_ENABLED: proxy.service.discovery.enabled:"
            ' expected true or false, got "yes"',
        )

    def test_fileBoolean(self) -> None:
        """
        Files accept HOCON's other spellings of booleans.
        """
        self.assertTrue(self.proxyFrom("proxy.service.discovery.enabled = yes").sd_enabled)

    def test_environmentInteger(self) -> None:
        self.assertConfigError(
            lambda: self.proxy(environ={"AGENT_PORT": "5005x"}),
            "environment variable AGENT_PORT",
            "proxy.agent.port",
            "expected an integer in 1..65535",
            '"5005x"',
        )

    def test_optionInteger(self) -> None:
        self.assertConfigError(
            lambda: self.proxy({"port": "http"}), "option --port: proxy.http.port:"
        )

    def test_portRange(self) -> None:
        for port in ("0", "65536"):
            self.assertConfigError(partial(self.proxy, {"port": port}), port)
        self.assertEqual(self.proxy({"port": "65535"}).http_port, 65535)

    def test_logLevel(self) -> None:
        self.assertEqual(self.proxy({"log_level": "WARN"}).log_level, "warn")
        self.assertConfigError(lambda: self.proxy({"log_level": "all"}), "proxy.logLevel")

    def test_frameSize(self) -> None:
        self.assertConfigError(
            lambda: self.proxyFrom("proxy.internal.maxFrameBytes = 1024"), ">= 65536"
        )
        agent = self.agentFrom("agent.internal.maxFrameBytes = 65536")
        self.assertEqual(agent.max_frame_bytes, 65536)

    def test_registrationLimits(self) -> None:
        """
        The registry's limits come from the config file, and each must be
        positive.
        """
        proxy = self.proxyFrom(
            "proxy.internal { maxPathLength = 10, maxPathNameLength = 11, maxLabelsPerPath = 12,"
            " maxLabelNameLength = 13, maxLabelValueLength = 14, maxRegisteredBytes = 15 }"
        )
        self.assertEqual(
            (
                proxy.max_path_length,
                proxy.max_path_name_length,
                proxy.max_labels_per_path,
                proxy.max_label_name_length,
                proxy.max_label_value_length,
                proxy.max_registered_bytes,
            ),
            (10, 11, 12, 13, 14, 15),
        )
        self.assertConfigError(
            lambda: self.proxyFrom("proxy.internal.maxRegisteredBytes = 0"), "maxRegisteredBytes"
        )

    def test_handshakeLimits(self) -> None:
        """
        The agent port's admission limits: defaults, values, and the
        throttle's 0 for off.
        """
        defaults = self.proxyFrom("")
        self.assertEqual(
            (
                defaults.max_pending_handshakes_per_address,
                defaults.max_auth_failures_per_address,
                defaults.max_agent_name_length,
            ),
            (8, 5, 256),
        )
        proxy = self.proxyFrom(
            "proxy.internal { maxPendingHandshakesPerAddress = 2, "
            "maxAuthFailuresPerAddress = 0, maxAgentNameLength = 64 }"
        )
        self.assertEqual(proxy.max_pending_handshakes_per_address, 2)
        self.assertEqual(proxy.max_auth_failures_per_address, 0)
        self.assertEqual(proxy.max_agent_name_length, 64)
        for key in ("maxPendingHandshakesPerAddress", "maxAgentNameLength"):
            self.assertConfigError(
                partial(self.proxyFrom, f"proxy.internal.{key} = 0"), f"proxy.internal.{key}"
            )
        self.assertConfigError(
            lambda: self.proxyFrom("proxy.internal.maxAuthFailuresPerAddress = -1"),
            "proxy.internal.maxAuthFailuresPerAddress",
        )

    def test_objectForNumber(self) -> None:
        self.assertConfigError(
            lambda: self.proxyFrom("proxy.http.port { value = 1 }"), "proxy.http.port"
        )

    def test_sectionNotObject(self) -> None:
        self.assertConfigError(lambda: self.proxyFrom("proxy = 5"), "proxy: expected an object")

    def test_certificateWithoutKey(self) -> None:
        self.assertConfigError(
            lambda: self.proxy({"cert": "server.pem"}),
            "option --cert",
            "proxy.tls.privateKeyFilePath",
        )

    def test_identities(self) -> None:
        settings = self.proxyFrom(
            """proxy.auth = [
              { name = team_a, token = "ta", paths = ["team_a_*", "/shared/?x"] }
              { name = team_b, token = "tb", perAgent = true }
            ]"""
        )
        self.assertEqual(
            settings.identities,
            (
                Identity("team_a", "ta", ("team_a_*", "shared/?x")),
                Identity("team_b", "tb", (), perAgent=True),
            ),
        )

    def test_identityErrors(self) -> None:
        """
        Startup fails on a missing name or token, a duplicate name or token
        (the legacy token included), and a glob no path could match.
        """
        for conf, expected in [
            ("proxy.auth = [{token = t}]", "proxy.auth[0].name is required"),
            ("proxy.auth = [{name = a}]", "proxy.auth[0].token is required"),
            (
                "proxy.auth = [{name = a, token = t}, {name = a, token = u}]",
                'proxy.auth[1].name: duplicate identity name "a" (also proxy.auth[0])',
            ),
            (
                "proxy.auth = [{name = a, token = t}, {name = b, token = t}]",
                'proxy.auth[1].token: the same token as identity "a"',
            ),
            (
                "proxy { agentToken = t, auth = [{name = a, token = t}] }",
                'the same token as identity "legacy-agent-token"',
            ),
            (
                'proxy.auth = [{name = a, token = t, paths = ["a b"]}]',
                "proxy.auth[0].paths: expected a path glob",
            ),
            (
                "proxy.auth = [{name = a, token = t, perAgent = sometimes}]",
                'proxy.auth[0].perAgent: expected true or false, got "sometimes"',
            ),
            (
                "proxy.auth = [{name = [a], token = t}]",
                'proxy.auth[0].name: expected a string, got ["a"]',
            ),
            (
                "proxy.auth = [{name = a, token = t, paths = [{p = 1}]}]",
                'proxy.auth[0].paths: expected a path glob such as team_a_*, got {"p":1}',
            ),
        ]:
            self.assertConfigError(partial(self.proxyFrom, conf), expected)

    def test_certificateIdentityWithoutToken(self) -> None:
        """
        With client certificates required, an identity may go without a token.
        """
        settings = self.proxyFrom(
            """proxy.tls { certChainFilePath = c, privateKeyFilePath = k,
                           trustCertCollectionFilePath = ca }
               proxy.auth = [{ name = a }]"""
        )
        self.assertEqual(settings.identities, (Identity("a", "", ()),))

    def test_networks(self) -> None:
        settings = self.proxyFrom('proxy.http.allowedNetworks = ["10.1.2.3/8", "::1", "192.0.2.7"]')
        self.assertEqual(settings.http_allowed_networks, ("10.0.0.0/8", "::1/128", "192.0.2.7/32"))
        self.assertConfigError(
            lambda: self.proxyFrom('proxy.http.allowedNetworks = ["intranet"]'),
            "proxy.http.allowedNetworks[0]: expected an IP network",
        )

    def test_scrapePortCredentials(self) -> None:
        self.assertConfigError(
            lambda: self.proxyFrom("proxy.http.basicAuth.username = prom"),
            "proxy.http.basicAuth needs both username and password",
        )
        self.assertConfigError(
            lambda: self.proxyFrom("proxy.http.tls.certChainFilePath = c"),
            "proxy.http.tls.certChainFilePath is set, so proxy.http.tls.privateKeyFilePath",
        )


class DefineTests(ConfigTestCase):
    """
    C{-Dkey=value} overrides.
    """

    def test_quotes(self) -> None:
        agent = self.agentFrom("agent {}", defines=['agent.name="my agent"'])
        self.assertEqual(agent.name, "my agent")

    def test_propertiesSyntax(self) -> None:
        agent = self.agentFrom("agent {}", defines=["agent.name : spaced", "agent.agentToken=a=b"])
        self.assertEqual((agent.name, agent.agent_token), ("spaced", "a=b"))

    def test_lastWins(self) -> None:
        proxy = self.proxy({"defines": ["proxy.http.port=1", "proxy.http.port=2"]})
        self.assertEqual(proxy.http_port, 2)

    def test_invalidValue(self) -> None:
        self.assertConfigError(
            lambda: self.proxy({"defines": ["proxy.http.port=x"]}), "option -D: proxy.http.port"
        )

    def test_noKey(self) -> None:
        self.assertConfigError(lambda: self.proxy({"defines": ["=x"]}), "option -D")

    def test_list(self) -> None:
        self.assertConfigError(
            lambda: self.agentFrom("agent {}", defines=["agent.pathConfigs=x"]),
            "agent.pathConfigs",
        )

    def test_unknownKey(self) -> None:
        self.assertConfigError(
            lambda: self.proxy({"defines": ["proxy.http.prot=1"]}),
            "option -D: unknown configuration key proxy.http.prot; did you mean proxy.http.port?",
        )

    def test_otherSection(self) -> None:
        """
        The other process's keys are not this one's concern.
        """
        self.proxy({"defines": ["agent.name=x"]})
        self.assertEqual(self.warnings, [])


class EndpointTests(ConfigTestCase):
    """
    Where the agent dials: --proxy, $PROXY_HOSTNAME, agent.proxy.endpoints,
    agent.proxy.hostname.
    """

    def endpoints(
        self, proxy: str, config: str = "agent {}", environ: Mapping[str, str] | None = None
    ) -> tuple[ProxyEndpoint, ...]:
        options = {"config": self.writeConfig(config), "proxy": proxy}
        return self.agent(options, environ).proxy_endpoints

    def test_defaultPort(self) -> None:
        self.assertEqual(self.endpoints("proxy.example"), (ProxyEndpoint("proxy.example", 50051),))

    def test_configuredPort(self) -> None:
        """
        An endpoint without a port takes agent.proxy.port.
        """
        self.assertEqual(
            self.endpoints("proxy.example", "agent.proxy.port = 50440"),
            (ProxyEndpoint("proxy.example", 50440),),
        )

    def test_list(self) -> None:
        self.assertEqual(
            self.endpoints("a.example:1, b.example ,c.example:3"),
            (
                ProxyEndpoint("a.example", 1),
                ProxyEndpoint("b.example", 50051),
                ProxyEndpoint("c.example", 3),
            ),
        )

    def test_ipv6(self) -> None:
        found = self.endpoints("[::1]:50052,[fe80::1],::2")
        self.assertEqual(
            found,
            (ProxyEndpoint("::1", 50052), ProxyEndpoint("fe80::1"), ProxyEndpoint("::2")),
        )
        self.assertEqual(str(found[0]), "[::1]:50052")

    def test_scheme(self) -> None:
        self.assertEqual(
            self.endpoints("http://a.example:8443/,HTTPS://b.example"),
            (ProxyEndpoint("a.example", 8443), ProxyEndpoint("b.example", 50051)),
        )

    def test_malformed(self) -> None:
        for proxy in ("", "a.example,", "a.example:x", "a.example:0", "a.example:70000", "a b"):
            self.assertConfigError(
                partial(self.endpoints, proxy), "option --proxy: agent.proxy.hostname"
            )

    def test_endpointsList(self) -> None:
        agent = self.agentFrom(
            'agent.proxy { port = 7, endpoints = ["a.example:50051", "b.example"] }'
        )
        self.assertEqual(
            agent.proxy_endpoints,
            (ProxyEndpoint("a.example", 50051), ProxyEndpoint("b.example", 7)),
        )

    def test_malformedListEntry(self) -> None:
        self.assertConfigError(
            lambda: self.agentFrom('agent.proxy.endpoints = ["a.example:x"]'),
            "agent.proxy.endpoints[0]",
        )

    def test_environmentReplacesList(self) -> None:
        found = self.agent(
            {"config": self.writeConfig('agent.proxy.endpoints = ["a.example"]')},
            {"PROXY_HOSTNAME": "b.example,c.example"},
        ).proxy_endpoints
        self.assertEqual(found, (ProxyEndpoint("b.example"), ProxyEndpoint("c.example")))

    def test_hostname(self) -> None:
        agent = self.agentFrom("agent.proxy { hostname = p.example, port = 9 }")
        self.assertEqual(agent.proxy_endpoints, (ProxyEndpoint("p.example", 9),))

    def test_defineHostname(self) -> None:
        agent = self.agentFrom("agent {}", defines=["agent.proxy.hostname=d.example"])
        self.assertEqual(agent.proxy_endpoints, (ProxyEndpoint("d.example"),))


class TargetPrefixTests(ConfigTestCase):
    """
    The http_sd target prefix is normalised to host:port.
    """

    def test_normalised(self) -> None:
        cases = {
            "http://host:8080/": "host:8080",
            "host:8080": "host:8080",
            "https://h:443/x": "h:443",
            "http://host/": "host:80",
            "https://host": "host:443",
            "host": "host:80",
            "http://[::1]:9/": "[::1]:9",
            "": "",
        }
        for given, expected in cases.items():
            self.assertEqual(self.proxy({"sd_target_prefix": given}).sd_target_prefix, expected)

    def test_prometheusProxyDefault(self) -> None:
        """
        prometheus-proxy's documented default, written out in a file, becomes
        a usable target.
        """
        proxy = self.proxyFrom('proxy.service.discovery.targetPrefix = "http://localhost:8080/"')
        self.assertEqual(proxy.sd_target_prefix, "localhost:8080")

    def test_invalid(self) -> None:
        for given in ("ftp://host/", "http://", "host:port", "a b:1"):
            self.assertConfigError(
                partial(self.proxy, {"sd_target_prefix": given}),
                "option --sd_target_prefix: proxy.service.discovery.targetPrefix",
            )

    def test_sdPath(self) -> None:
        self.assertEqual(self.proxy({"sd_path": "/sd/targets"}).sd_path, "sd/targets")
        self.assertConfigError(lambda: self.proxy({"sd_path": "/"}), "--sd_path")


class PathConfigTests(ConfigTestCase):
    """
    C{agent.pathConfigs} entries.
    """

    def paths(self, entries: str) -> tuple[PathConfig, ...]:
        return self.agentFrom(f"agent.pathConfigs = [{entries}]").path_configs

    def test_labelsStringified(self) -> None:
        (config,) = self.paths(
            """{path = a, url = "http://h/m", labels = \"\"\"{"s": "x", "i": 2, "f": 1.5,
            "t": true, "n": null, "o": {"k": [1, "v"]}}\"\"\"}"""
        )
        self.assertEqual(
            config.labels,
            {"s": "x", "i": "2", "f": "1.5", "t": "true", "n": "null", "o": '{"k":[1,"v"]}'},
        )

    def test_labelsObject(self) -> None:
        """
        Labels may also be a HOCON object rather than JSON in a string.
        """
        (config,) = self.paths('{path = a, url = "http://h/m", labels { env = prod, n = 3 }}')
        self.assertEqual(config.labels, {"env": "prod", "n": "3"})

    def test_invalidLabels(self) -> None:
        """
        Labels that are not a JSON object are dropped, as prometheus-proxy
        drops them: the path is served without labels, with one warning
        naming the file, the entry and what was done.
        """
        for labels in ('"{not json"', '"[1, 2]"', "3"):
            self.warnings.clear()
            path = self.writeConfig(
                f'agent.pathConfigs = [{{path = a, url = "http://h/m"}},'
                f' {{path = b, url = "http://h/m", labels = {labels}}}]'
            )
            configs = self.agent({"config": path}).path_configs
            self.assertEqual([(c.path, c.labels) for c in configs], [("a", {}), ("b", {})])
            self.assertEqual(len(self.warnings), 1, self.warnings)
            self.assertTrue(
                self.warnings[0].startswith(f"{path}: agent.pathConfigs[1].labels: "),
                self.warnings[0],
            )
            self.assertIn("serving the path without labels", self.warnings[0])

    def test_nameDefaultsToPath(self) -> None:
        (config,) = self.paths('{path = "/app", url = "http://h/m"}')
        self.assertEqual((config.name, config.path, config.labels), ("app", "app", {}))

    def test_multiSegmentPath(self) -> None:
        (config,) = self.paths('{path = "/team/app/metrics", url = "http://h/m"}')
        self.assertEqual(config.path, "team/app/metrics")

    def test_invalidPath(self) -> None:
        for path in ('""', '"/"', '"a?b"', '"a#b"', '"a b"'):
            self.assertConfigError(
                partial(self.paths, f'{{path = {path}, url = "http://h/m"}}'),
                "agent.pathConfigs[0].path",
            )

    def test_duplicatePath(self) -> None:
        """
        A path listed twice is served by its last entry, as prometheus-proxy's
        path map keeps the last one put, with one warning naming both entries.
        """
        configs = self.paths(
            '{path = a, url = "http://h/1"}, {path = b, url = "http://h/2"},'
            ' {path = "/a", url = "http://h/3"}'
        )
        self.assertEqual(
            [(c.path, c.url) for c in configs], [("b", "http://h/2"), ("a", "http://h/3")]
        )
        self.assertEqual(len(self.warnings), 1, self.warnings)
        self.assertIn('agent.pathConfigs[2].path: duplicate path "a"', self.warnings[0])
        self.assertIn("replaces agent.pathConfigs[0]", self.warnings[0])

    def test_missing(self) -> None:
        self.assertConfigError(
            lambda: self.paths('{url = "http://h/m"}'), "agent.pathConfigs[0]: path is required"
        )
        self.assertConfigError(
            lambda: self.paths("{path = a}"), "agent.pathConfigs[0]: url is required"
        )

    def test_invalidURL(self) -> None:
        for url in ("ftp://h/m", "http:///m", "http://h:x/m", "http://h/a b", "h/a b", ":x"):
            self.assertConfigError(
                partial(self.paths, f'{{path = a, url = "{url}"}}'), "agent.pathConfigs[0].url"
            )

    def test_urlWithoutScheme(self) -> None:
        """
        A URL without a scheme gets C{http://}, with one warning naming the
        entry.
        """
        for url in ("h:9100/metrics", "h/metrics"):
            self.warnings.clear()
            (config,) = self.paths(f'{{path = a, url = "{url}"}}')
            self.assertEqual(config.url, f"http://{url}")
            self.assertEqual(len(self.warnings), 1, self.warnings)
            self.assertIn(f'agent.pathConfigs[0].url: "{url}" has no scheme', self.warnings[0])
            self.assertIn("prepending http://", self.warnings[0])

    def test_urlWithScheme(self) -> None:
        """
        A URL with its scheme is taken as it is, without a warning.
        """
        (config,) = self.paths('{path = a, url = "HTTPS://h:9100/m?x=1"}')
        self.assertEqual(config.url, "HTTPS://h:9100/m?x=1")
        self.assertEqual(self.warnings, [])

    def test_notAList(self) -> None:
        self.assertConfigError(
            lambda: self.agentFrom("agent.pathConfigs = 3"), "agent.pathConfigs: expected a list"
        )

    def test_entryNotObject(self) -> None:
        self.assertConfigError(lambda: self.paths('"a"'), "agent.pathConfigs[0]")

    def test_unknownEntryKey(self) -> None:
        self.assertConfigError(
            lambda: self.paths('{path = a, url = "http://h/m", lables = "{}"}'),
            "unknown configuration key agent.pathConfigs[0].lables;"
            " did you mean agent.pathConfigs[0].labels?",
        )


class StrictKeyTests(ConfigTestCase):
    """
    A key neither promtwist nor prometheus-proxy reads is an error, so a
    typo cannot start a process without what the operator configured.
    """

    def test_unknownKey(self) -> None:
        path = self.writeConfig("agent { foo.bar = 1 }\n")
        self.assertEqual(
            self.assertConfigError(lambda: self.agent({"config": path})),
            f"{path}: unknown configuration key agent.foo.bar",
        )

    def test_suggestion(self) -> None:
        """
        The closest known key is suggested: the issue's own typo.
        """
        path = self.writeConfig('agent.pathConfig = [{path = a, url = "http://h/m"}]\n')
        self.assertEqual(
            self.assertConfigError(lambda: self.agent({"config": path})),
            f"{path}: unknown configuration key agent.pathConfig; did you mean agent.pathConfigs?",
        )

    def test_entryKeys(self) -> None:
        """
        The keys inside C{proxy.auth} and C{agent.filters} entries are
        checked too.
        """
        self.assertConfigError(
            lambda: self.proxyFrom('proxy.auth = [{name = a, tokn = t, paths = ["x"]}]'),
            "unknown configuration key proxy.auth[0].tokn; did you mean proxy.auth[0].token?",
        )
        self.assertConfigError(
            lambda: self.agentFrom(
                "agent.filters = [{path = a, metricNameAllow = [], metricNameDenyy = []}]"
            ),
            "did you mean agent.filters[0].metricNameDeny?",
        )

    def test_listedPaths(self) -> None:
        """
        C{path_configs_listed} says whether the file has an
        C{agent.pathConfigs} key at all.
        """
        self.assertTrue(self.agentFrom("agent.pathConfigs = []").path_configs_listed)
        self.assertFalse(self.agentFrom("agent.name = x").path_configs_listed)


class WarningTests(ConfigTestCase):
    def test_ineffectiveKey(self) -> None:
        """
        Keys promtwist accepts but does not act on are reported when set to
        anything but their default, with where they were set.
        """
        self.proxy({"admin": True}, {"METRICS_PORT": "8082", "DASHBOARD_PORT": "1"})
        self.assertEqual(
            self.warnings,
            [
                "configuration key proxy.dashboard.port (environment variable DASHBOARD_PORT)"
                " has no effect in promtwist"
            ],
        )

    def test_retries(self) -> None:
        """
        Target retries are set from the file, the environment or the
        command line, default to none as prometheus-proxy's, and no longer
        warn that they have no effect.
        """
        self.assertEqual(self.agentFrom("").scrape_max_retries, 0)
        self.assertEqual(self.agentFrom("agent.scrapeMaxRetries = 3").scrape_max_retries, 3)
        config = self.writeConfig("")
        retries = self.agent({"config": config}, {"SCRAPE_MAX_RETRIES": "2"}).scrape_max_retries
        self.assertEqual(retries, 2)
        retries = self.agent({"config": config, "max_retries": 4}).scrape_max_retries
        self.assertEqual(retries, 4)
        self.assertEqual(self.warnings, [])

    def test_clientTimeout(self) -> None:
        """
        C{agent.http.clientTimeoutSecs} (C{--client_timeout_secs}) is set as
        any key; the deprecated C{agent.internal.cioTimeoutSecs} counts, as in
        prometheus-proxy, only while the new key is left at 90, and warns of
        nothing.
        """
        self.assertEqual(self.agentFrom("").client_timeout_secs, 90)
        self.assertEqual(self.agentFrom("agent.http.clientTimeoutSecs = 2").client_timeout_secs, 2)
        self.assertEqual(self.agentFrom("agent.internal.cioTimeoutSecs = 7").client_timeout_secs, 7)
        both = "agent.internal.cioTimeoutSecs = 7\nagent.http.clientTimeoutSecs = 3"
        self.assertEqual(self.agentFrom(both).client_timeout_secs, 3)
        config = self.writeConfig("")
        timeout = self.agent({"config": config, "client_timeout_secs": 4}).client_timeout_secs
        self.assertEqual(timeout, 4)
        self.assertEqual(self.warnings, [])

    def test_removedKeys(self) -> None:
        """
        Keys prometheus-proxy removed are ignored silently, as it does.
        """
        self.proxyFrom("proxy.http.maxThreads = 10\nproxy.internal.scrapeRequestCheckMillis = 5")
        self.assertEqual(self.warnings, [])

    def test_otherSectionIgnored(self) -> None:
        self.proxyFrom("agent { whatever = 1 }")
        self.assertEqual(self.warnings, [])

    def test_logged(self) -> None:
        """
        Without a C{warn} callable, warnings go to the Twisted log.
        """
        path = self.writeConfig("proxy.dashboard.port = 1\n")
        with capturedLogs() as events:
            loadProxySettings({"config": path}, {})
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_namespace"], "promtwist.config")
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertIn("proxy.dashboard.port", formatEvent(events[0]))

    def test_warningsOnce(self) -> None:
        """
        L{warningsOnce} passes each distinct line on the first time only.
        """
        said: list[str] = []
        warn = warningsOnce(said.append)
        for notice in ("a", "b", "a", "b", "c"):
            warn(notice)
        self.assertEqual(said, ["a", "b", "c"])

    def test_reloadWarnsOnce(self) -> None:
        """
        Loading an unchanged file again with the same L{warningsOnce}, as a
        C{SIGHUP} reload does, gives the same settings and repeats none of the
        leniency warnings; what a changed file brings is still said.
        """
        entries = (
            '{path = a, url = "h:1/m", labels = "{bad"}, {path = a, url = "http://h:2/m"},'
            ' {path = b, url = "http://h/m", labels = "[]"}'
        )
        path = self.writeConfig(f"agent.pathConfigs = [{entries}]")
        warn = warningsOnce(self.warnings.append)
        first = loadAgentSettings({"config": path}, {}, warn=warn)
        self.assertEqual(len(self.warnings), 4, self.warnings)
        self.assertEqual(
            [(c.path, c.url, c.labels) for c in first.path_configs],
            [("a", "http://h:2/m", {}), ("b", "http://h/m", {})],
        )
        again = loadAgentSettings({"config": path}, {}, warn=warn)
        self.assertEqual(again, first)
        self.assertEqual(len(self.warnings), 4, self.warnings)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f'agent.pathConfigs = [{entries}, {{path = c, url = "h:3/m"}}]')
        loadAgentSettings({"config": path}, {}, warn=warn)
        self.assertEqual(len(self.warnings), 5, self.warnings)
        self.assertIn("agent.pathConfigs[3].url", self.warnings[4])

    def test_leniencyLogged(self) -> None:
        """
        Without a C{warn} callable, a leniency warning goes to the Twisted
        log once, as a warning.
        """
        path = self.writeConfig('agent.pathConfigs = [{path = a, url = "h/m"}]\n')
        with capturedLogs() as events:
            loadAgentSettings({"config": path}, {})
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertIn("agent.pathConfigs[0].url", formatEvent(events[0]))


class AnySyntaxTests(ConfigTestCase):
    """
    A configuration name that is no file and has no extension is read as
    Typesafe Config's C{parseFileAnySyntax} reads it: C{name.conf},
    C{name.json} and C{name.properties}, each found merged, in that
    preference.
    """

    def setUp(self) -> None:
        super().setUp()
        self.name: str = self.mktemp()

    def write(self, suffix: str, text: str) -> str:
        path: str = self.name + suffix
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_conf(self) -> None:
        conf = self.write(".conf", "agent.name = from-conf\n")
        self.assertEqual(self.agent({"config": self.name}).name, "from-conf")
        self.assertEqual(len(self.warnings), 1, self.warnings)
        self.assertTrue(self.warnings[0].startswith(f"{self.name}: no such file; read {conf},"))

    def test_eachSyntax(self) -> None:
        """
        Each file is parsed by its own extension.
        """
        self.write(".json", '{"agent": {"name": "from-json"}}')
        self.assertEqual(self.agent({"config": self.name}).name, "from-json")
        os.remove(self.name + ".json")
        self.write(".properties", "agent.name=from-properties\n")
        self.assertEqual(self.agent({"config": self.name}).name, "from-properties")

    def test_merged(self) -> None:
        """
        Several found are merged key by key, C{.conf} over C{.json} over
        C{.properties}, with one warning naming them all.
        """
        conf = self.write(".conf", "agent { name = c }\n")
        json = self.write(".json", '{"agent": {"name": "j", "proxy": {"port": 1234}}}')
        props = self.write(".properties", "agent.name=p\nagent.proxy.hostname=p.example\n")
        settings = self.agent({"config": self.name})
        self.assertEqual(settings.name, "c")
        self.assertEqual(settings.proxy_endpoints, (ProxyEndpoint("p.example", 1234),))
        self.assertEqual(len(self.warnings), 1, self.warnings)
        self.assertIn(f"read {conf}, {json}, {props} merged", self.warnings[0])
        self.assertIn(f"{conf} wins", self.warnings[0])

    def test_errorNamesTheFile(self) -> None:
        """
        An error in one of the files names that file.
        """
        json = self.write(".json", "{not json")
        self.assertConfigError(lambda: self.agent({"config": self.name}), json)

    def test_nameItself(self) -> None:
        """
        A file by the name itself is read as before, as HOCON, without a
        warning, even when C{name.conf} also exists.
        """
        self.write("", "agent.name = itself\n")
        self.write(".conf", "agent.name = from-conf\n")
        self.assertEqual(self.agent({"config": self.name}).name, "itself")
        self.assertEqual(self.warnings, [])

    def test_noneFound(self) -> None:
        """
        With none of them, the error names what was given.
        """
        self.assertConfigError(
            lambda: self.agent({"config": self.name}), f"{self.name}: cannot read"
        )

    def test_knownExtensionMissing(self) -> None:
        """
        A name with one of the three extensions is not extended further.
        """
        self.write(".conf.conf", "agent.name = x\n")
        self.assertConfigError(
            lambda: self.agent({"config": self.name + ".conf"}), f"{self.name}.conf: cannot read"
        )


class SourceTests(ConfigTestCase):
    """
    Configuration sources: HOCON, JSON and properties files, and URLs.
    """

    def test_brokenHOCON(self) -> None:
        path = self.writeConfig("agent {\n  pathConfigs: [\n    { path: x\n")
        message = self.assertConfigError(lambda: self.agent({"config": path}))
        self.assertTrue(message.startswith(f"{path}: line "), message)

    def test_unresolvedSubstitution(self) -> None:
        path = self.writeConfig("agent.name = ${PROMTWIST_TEST_NO_SUCH_VARIABLE}\n")
        self.assertConfigError(
            lambda: self.agent({"config": path}), path, "PROMTWIST_TEST_NO_SUCH_VARIABLE"
        )

    def test_missingFile(self) -> None:
        path = self.mktemp()
        self.assertConfigError(lambda: self.proxy({"config": path}), path)

    def test_optionalSubstitution(self) -> None:
        """
        C{${?VAR}} reads the given environment, and leaves a key unset when
        the variable is missing.
        """
        text = (
            "agent.name = default-name\n"
            "agent.name = ${?PROMTWIST_TEST_NAME}\n"
            'agent.agentToken = "t-"${?PROMTWIST_TEST_TOKEN}\n'
        )
        config = self.writeConfig(text)
        agent = self.agent(
            {"config": config}, {"PROMTWIST_TEST_NAME": "env-name", "PROMTWIST_TEST_TOKEN": "x"}
        )
        self.assertEqual((agent.name, agent.agent_token), ("env-name", "t-x"))
        agent = self.agent({"config": config})
        self.assertEqual((agent.name, agent.agent_token), ("default-name", "t-"))

    def test_concatenation(self) -> None:
        agent = self.agentFrom(
            "host = app1\nport = 9100\nagent.pathConfigs = [{path = a,"
            ' url = "http://"${host}":"${port}"/metrics"}]\n'
        )
        self.assertEqual(agent.path_configs[0].url, "http://app1:9100/metrics")

    def test_includeRelativeToFile(self) -> None:
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("common.conf").setContent(b"agent.agentToken = shared\n")
        main = directory.child("main.conf")
        main.setContent(b'include "common.conf"\nagent.name = main\n')
        agent = self.agent({"config": os.path.relpath(main.path)})
        self.assertEqual((agent.name, agent.agent_token), ("main", "shared"))

    def test_json(self) -> None:
        config = self.writeConfig(
            '{"agent": {"name": "j", "http": {"maxConcurrentClients": 4},'
            ' "pathConfigs": [{"path": "a", "url": "http://h/m", "labels": "{\\"k\\": 1}"}]}}',
            ".json",
        )
        agent = self.agent({"config": config})
        self.assertEqual((agent.name, agent.max_concurrent_clients), ("j", 4))
        self.assertEqual(agent.path_configs[0].labels, {"k": "1"})

    def test_brokenJSON(self) -> None:
        config = self.writeConfig('{"agent": {\n  "name": }', ".jsn")
        self.assertConfigError(lambda: self.agent({"config": config}), config, "line 2")

    def test_properties(self) -> None:
        config = self.writeConfig(
            "# comment\n"
            "! another comment\n"
            "agent.name = props \\\n"
            "    agent\n"
            "agent.consolidated: true\n"
            "agent.pathConfigs.0.path=a\n"
            "agent.pathConfigs.0.url=http://h/a\n"
            "agent.pathConfigs.1.path=b\n"
            "agent.pathConfigs.1.url=http://h/b\n",
            ".properties",
        )
        agent = self.agent({"config": config})
        self.assertEqual((agent.name, agent.consolidated), ("props agent", True))
        self.assertEqual([p.path for p in agent.path_configs], ["a", "b"])

    def test_url(self) -> None:
        """
        A URL source is fetched, and its syntax follows its path's extension.
        """
        fetched = []

        def fetch(url: str) -> bytes:
            fetched.append(url)
            return b'{"agent": {"name": "remote"}}'

        url = "https://config.example/agent.json?v=1"
        agent = self.agent({"config": url}, fetch=fetch)
        self.assertEqual(fetched, [url])
        self.assertEqual((agent.name, agent.config_source), ("remote", url))

    def test_urlFailure(self) -> None:
        """
        A failed fetch is a one-line error that does not repeat the URL's
        password.
        """

        def fetch(url: str) -> bytes:
            raise OSError("connection refused")

        message = self.assertConfigError(
            lambda: self.agent({"config": "http://u:secret@config.example/a.conf"}, fetch=fetch),
            "http://u:***@config.example/a.conf",
            "connection refused",
        )
        self.assertNotIn("secret", message)

    def test_fetchURL(self) -> None:
        """
        L{fetchURL} reads what urllib can open; a file URL keeps this offline.
        """
        path = FilePath(self.mktemp())
        path.setContent(b"proxy {}")
        self.assertEqual(fetchURL(f"file://{path.path}"), b"proxy {}")

    def trickle(self, body: bytes, pause: float) -> str:
        """
        A loopback HTTP server, in a thread, that answers once with C{body},
        one byte every C{pause} seconds; its URL.
        """
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        stop = threading.Event()

        def serve() -> None:
            connection, _ = listener.accept()
            with connection, contextlib.suppress(OSError):
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                for i in range(len(body)):
                    if stop.wait(pause):
                        return
                    connection.sendall(body[i : i + 1])

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(stop.set)
        return f"http://127.0.0.1:{listener.getsockname()[1]}/agent.conf"

    def test_fetchURLWholeWithinTimeout(self) -> None:
        """
        A server that keeps sending, a byte at a time, within urllib's
        per-read timeout is cut off when the whole reading passes the
        timeout.
        """
        url = self.trickle(b"agent.name = slow\n" * 10, 0.05)
        started = time.monotonic()
        error = self.assertRaises(TimeoutError, fetchURL, url, timeout=0.5)
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual(str(error), "not complete within 0.5 seconds")

    def test_fetchURLLimit(self) -> None:
        """
        A body over the limit is refused.
        """
        url = self.trickle(b"x" * 2000, 0)
        error = self.assertRaises(ValueError, fetchURL, url, limit=1000)
        self.assertEqual(str(error), "over 1,000 bytes")

    def test_notUTF8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"agent.name = \xff\n")
        self.assertConfigError(lambda: self.agent({"config": path}), "UTF-8")


def pushproxFields(settings: ProxySettings) -> tuple[object, ...]:
    """
    The C{proxy.pushprox.*} settings, in their keys' order.
    """
    return (
        settings.pushprox_enabled,
        settings.pushprox_poll_hold_secs,
        settings.pushprox_client_grace_secs,
        settings.pushprox_push_budget_mbytes,
        settings.pushprox_allowed_networks,
        settings.pushprox_self_scrape_enabled,
    )


class PushProxKeysTests(SynchronousTestCase):
    """
    C{proxy.pushprox.*}: PushProx clients on by default, and checked.
    """

    def test_defaults(self) -> None:
        settings = ProxySettings()
        self.assertEqual(
            pushproxFields(settings),
            (True, 50.0, 15.0, 64, (), True),
        )

    def test_read(self) -> None:
        path = self.mktemp() + ".conf"
        with open(path, "w") as f:
            f.write(
                "proxy.pushprox { enabled = false, pollHoldSecs = 20, clientGraceSecs = 3,"
                ' pushBudgetMBytes = 8, allowedNetworks = ["10.0.0.0/8", "192.0.2.7"],'
                " selfScrapeEnabled = false }\n"
            )
        settings = loadProxySettings({"config": path}, {})
        self.assertEqual(
            pushproxFields(settings),
            (False, 20.0, 3.0, 8, ("10.0.0.0/8", "192.0.2.7/32"), False),
        )

    def test_refused(self) -> None:
        for text, why in [
            (
                "proxy.pushprox.pollHoldSecs = 0",
                "proxy.pushprox.pollHoldSecs: expected a number > 0",
            ),
            (
                "proxy.pushprox.pushBudgetMBytes = 0",
                "proxy.pushprox.pushBudgetMBytes: expected",
            ),
            ('proxy.pushprox.allowedNetworks = ["nope"]', "proxy.pushprox.allowedNetworks[0]"),
        ]:
            path = self.mktemp() + ".conf"
            with open(path, "w") as f:
                f.write(text + "\n")
            with self.assertRaises(ConfigError) as caught:
                loadProxySettings({"config": path}, {})
            self.assertIn(why, str(caught.exception))
