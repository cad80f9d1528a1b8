"""
Tests for L{promtwist.cli}: the twistd command-line options.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

from twisted.python.filepath import FilePath
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from promtwist import __version__
from promtwist.cli import AgentOptions, ProxyOptions
from promtwist.config.keys import AGENT, PROXY
from promtwist.config.settings import ProxyEndpoint, ProxySettings
from promtwist.test.certs import certificates, writeJKS

DATA = FilePath(__file__).sibling("data")
MYAPPS = DATA.child("myapps.conf").path

# prometheus-proxy's option spellings (its ProxyOptions, AgentOptions and
# BaseOptions), which existing command lines use.
COMMON_OPTIONS = [
    "config",
    "c",
    "conf",
    "admin",
    "r",
    "admin_port",
    "i",
    "metrics",
    "e",
    "metrics_port",
    "m",
    "debug",
    "b",
    "tf-disabled",
    "tf_disabled",
    "cert",
    "t",
    "key",
    "k",
    "trust",
    "s",
    "keepalive_time_secs",
    "keepalive_timeout_secs",
    "log_level",
    "version",
    "v",
    "usage",
    "u",
    "D",
    "agent_token",
]
PROXY_OPTIONS = [
    "port",
    "p",
    "agent_port",
    "a",
    "sd_enabled",
    "sd_path",
    "sd_target_prefix",
    "dashboard",
    "dashboard_port",
    "dashboard_path",
    "ref-disabled",
    "ref_disabled",
    "handshake_timeout_secs",
    "permit_keepalive_without_calls",
    "permit_keepalive_time_secs",
    "max_connection_idle_secs",
    "max_connection_age_secs",
    "max_connection_age_grace_secs",
]
AGENT_OPTIONS = [
    "proxy",
    "p",
    "name",
    "n",
    "consolidated",
    "o",
    "over",
    "override",
    "timeout",
    "max_retries",
    "chunk",
    "gzip",
    "trust_all_x509",
    "https_truststore",
    "https_truststore_password",
    "max_concurrent_clients",
    "client_timeout_secs",
    "max_content_length_mbytes",
    "max_cache_size",
    "max_cache_age_mins",
    "max_cache_idle_mins",
    "cache_cleanup_interval_mins",
    "keepalive_without_calls",
    "unary_deadline_secs",
]

TLS_MUTUAL = os.path.join(os.path.dirname(__file__), "data", "tls-with-mutual-auth.conf")

_O = TypeVar("_O", ProxyOptions, AgentOptions)


class OptionsTests(SynchronousTestCase):
    def options(self, optionsClass: type[_O], environ: Mapping[str, str] | None = None) -> _O:
        """
        Options reading C{environ} and writing to buffers, not the process's.
        """
        options = optionsClass()
        options._environ = environ or {}
        options._stdout = io.StringIO()
        options._stderr = io.StringIO()
        return options

    def parse(
        self,
        optionsClass: type[_O],
        argv: Sequence[str],
        environ: Mapping[str, str] | None = None,
    ) -> _O:
        options = self.options(optionsClass, environ)
        options.parseOptions(list(argv))
        return options

    def exits(self, options: ProxyOptions | AgentOptions, argv: Sequence[str]) -> int | str | None:
        """
        Parse C{argv}, which must exit, and return the exit code.
        """
        exit: SystemExit = self.assertRaises(SystemExit, options.parseOptions, list(argv))
        return exit.code

    def test_defaults(self) -> None:
        options = self.parse(ProxyOptions, [])
        self.assertEqual(options.settings, ProxySettings())
        self.assertEqual(options.given(), {"defines": []})

    def test_tlsFileMissing(self) -> None:
        """
        A TLS example whose certificate files do not exist stops the process
        before twistd starts it, with one line naming the first missing file.
        """

        def check(options: ProxyOptions | AgentOptions, key: str, path: str) -> None:
            self.assertEqual(self.exits(options, ["-c", TLS_MUTUAL]), 1)
            assert isinstance(options._stderr, io.StringIO)
            self.assertEqual(
                options._stderr.getvalue(),
                f"promtwist: {key}: {path}: cannot read the file: No such file or directory\n",
            )

        check(
            self.options(ProxyOptions), "proxy.tls.certChainFilePath", "testing/certs/server1.pem"
        )
        check(
            self.options(AgentOptions),
            "agent.tls.trustCertCollectionFilePath",
            "testing/certs/ca.pem",
        )

    def test_environmentNotMasked(self) -> None:
        """
        Options left out do not hide environment variables.
        """
        options = self.parse(ProxyOptions, [], {"PROXY_PORT": "9000", "SD_ENABLED": "true"})
        self.assertEqual((options.settings.http_port, options.settings.sd_enabled), (9000, True))

    def test_reloadSettings(self) -> None:
        """
        What C{SIGHUP} reads: the configuration file as it is now, with the
        startup's command line and environment still taking precedence.
        """
        config = self.mktemp() + ".conf"
        with open(config, "w") as f:
            f.write("proxy { http.port = 7000, agent.port = 7001, admin.port = 7002 }\n")
        options = self.parse(ProxyOptions, ["-c", config, "--port", "9001"], {"AGENT_PORT": "9002"})
        with open(config, "w") as f:
            f.write("proxy { http.port = 7100, agent.port = 7101, admin.port = 7102 }\n")
        fresh = options.reloadSettings(self.fail)
        self.assertEqual((fresh.http_port, fresh.agent_port, fresh.admin_port), (9001, 9002, 7102))
        self.assertEqual(options.settings.admin_port, 7002)

    def test_optionBeatsEnvironment(self) -> None:
        options = self.parse(ProxyOptions, ["--port", "9001"], {"PROXY_PORT": "9000"})
        self.assertEqual(options.settings.http_port, 9001)

    def test_proxyShortOptions(self) -> None:
        config = self.mktemp()
        FilePath(config).setContent(b"proxy.agentToken = t\n")
        settings = self.parse(ProxyOptions, ["-p", "1", "-a", "2", "-c", config]).settings
        self.assertEqual((settings.http_port, settings.agent_port), (1, 2))
        self.assertEqual(settings.agent_token, "t")

    def test_agentShortOptions(self) -> None:
        settings = self.parse(
            AgentOptions, ["-c", MYAPPS, "-p", "p.example:1,q.example", "-n", "inside", "-o"]
        ).settings
        self.assertEqual(
            settings.proxy_endpoints, (ProxyEndpoint("p.example", 1), ProxyEndpoint("q.example"))
        )
        self.assertEqual((settings.name, settings.consolidated), ("inside", True))
        self.assertEqual(len(settings.path_configs), 3)

    def test_optionNamesIgnoreCase(self) -> None:
        """
        An option name in another case means the option, as with
        prometheus-proxy's parser; values keep their case.
        """
        settings = self.parse(
            ProxyOptions, ["--ADMIN", "--Port", "9001", "--AGENT_PORT=9002", "--SD_Path", "Metrics"]
        ).settings
        self.assertEqual(
            (settings.admin_enabled, settings.http_port, settings.agent_port, settings.sd_path),
            (True, 9001, 9002, "Metrics"),
        )
        agent = self.parse(AgentOptions, ["-C", MYAPPS, "-N", "Inside", "-O"]).settings
        self.assertEqual(
            (agent.name, agent.consolidated, len(agent.path_configs)), ("Inside", True, 3)
        )

    def test_optionValueNotFolded(self) -> None:
        """
        A value that looks like an option in another case stays a value.
        """
        settings = self.parse(AgentOptions, ["-c", MYAPPS, "--name", "--ADMIN"]).settings
        self.assertEqual((settings.name, settings.admin_enabled), ("--ADMIN", False))

    def test_unknownOptionStillRefused(self) -> None:
        """
        A name that folds to no option is refused as before, in the case
        given.
        """
        e = self.assertRaises(UsageError, self.parse, ProxyOptions, ["--NoSuchOption"])
        self.assertIn("NoSuchOption", str(e))

    def test_agentLongOptions(self) -> None:
        settings = self.parse(
            AgentOptions,
            [
                "--config",
                MYAPPS,
                "--timeout",
                "2.5",
                "--max_concurrent_clients",
                "4",
                "--chunk",
                "64",
                "--gzip",
                "0",
                "--max_content_length_mbytes",
                "20",
                "--trust_all_x509",
            ],
        ).settings
        self.assertEqual(
            (
                settings.scrape_timeout_secs,
                settings.max_concurrent_clients,
                settings.chunk_content_size_kbs,
                settings.min_gzip_size_bytes,
                settings.max_content_length_mbytes,
                settings.trust_all_x509_certificates,
            ),
            (2.5, 4, 64, 0, 20, True),
        )

    def test_aliases(self) -> None:
        """
        Every spelling prometheus-proxy accepts sets the same value.
        """
        for argv in (["--tf-disabled"], ["--tf_disabled"]):
            self.assertIs(self.parse(ProxyOptions, argv).given()["tf_disabled"], True)
        for argv in (["--ref-disabled"], ["--ref_disabled"]):
            self.assertIs(self.parse(ProxyOptions, argv).given()["ref_disabled"], True)
        for name in ("--over", "--override"):
            options = self.parse(AgentOptions, ["-c", MYAPPS, name, "proxy.test"])
            self.assertEqual(options.settings.tls_override_authority, "proxy.test")
        for name in ("-c", "--conf", "--config"):
            options = self.parse(AgentOptions, [name, MYAPPS])
            self.assertEqual(options.settings.config_source, MYAPPS)

    def test_define(self) -> None:
        """
        C{-D} works attached to its value, as C{-Dkey=value}, and repeats.
        """
        options = self.parse(
            AgentOptions,
            [
                "-c",
                MYAPPS,
                "-Dagent.proxy.hostname=d.example",
                "-D",
                "agent.name=a",
                "--define",
                'agent.agentToken="t t"',
            ],
        )
        self.assertEqual(options.settings.proxy_endpoints, (ProxyEndpoint("d.example"),))
        self.assertEqual((options.settings.name, options.settings.agent_token), ("a", "t t"))

    def test_version(self) -> None:
        for argv in (["-v"], ["--version"]):
            options = self.options(AgentOptions)
            self.assertEqual(self.exits(options, argv), 0)
            assert isinstance(options._stdout, io.StringIO)
            self.assertEqual(options._stdout.getvalue(), f"{__version__.public()}\n")

    def test_javaTrustStore(self) -> None:
        """
        Upstream's documented C{--https_truststore truststore.jks
        --https_truststore_password changeit} starts the agent; with the
        wrong password it stops with one line naming the file.
        """
        store = writeJKS(self.mktemp(), "changeit", certificates(self).ca)
        argv = ["-c", MYAPPS, "--https_truststore", store, "--https_truststore_password"]
        options = self.parse(AgentOptions, [*argv, "changeit"])
        self.assertEqual(options.settings.https_trust_store_password, "changeit")
        options = self.options(AgentOptions)
        self.assertEqual(self.exits(options, [*argv, "changeme"]), 1)
        assert isinstance(options._stderr, io.StringIO)
        self.assertEqual(
            options._stderr.getvalue(),
            f"promtwist: agent.http.trustStorePath: {store}: wrong password for this JKS trust"
            " store (agent.http.trustStorePassword), or the file is damaged\n",
        )

    def test_usage(self) -> None:
        options = self.options(AgentOptions)
        self.assertEqual(self.exits(options, ["-u"]), 0)
        assert isinstance(options._stdout, io.StringIO)
        self.assertIn("--max_concurrent_clients", options._stdout.getvalue())

    def test_configError(self) -> None:
        """
        A configuration error is one line on stderr and exit status 1, not the
        usage text and a traceback.
        """
        options = self.options(AgentOptions)
        self.assertEqual(self.exits(options, []), 1)
        assert isinstance(options._stderr, io.StringIO)
        self.assertEqual(
            options._stderr.getvalue(),
            "promtwist: A configuration file or url must be specified with --config or"
            " $AGENT_CONFIG\n",
        )

    def test_badValue(self) -> None:
        options = self.options(ProxyOptions)
        self.assertEqual(self.exits(options, ["-p", "abc"]), 1)
        assert isinstance(options._stderr, io.StringIO)
        self.assertEqual(
            options._stderr.getvalue(),
            "promtwist: option --port: proxy.http.port:"
            ' expected an integer in 1..65535, got "abc"\n',
        )

    def test_syntaxErrors(self) -> None:
        """
        Command-line syntax errors stay usage errors.
        """
        for argv in (["--no-such-option"], ["--sd_enabled=true"], ["extra"]):
            self.assertRaises(UsageError, self.options(ProxyOptions).parseOptions, argv)

    def test_prometheusProxySpellings(self) -> None:
        for optionsClass, names in (
            (ProxyOptions, COMMON_OPTIONS + PROXY_OPTIONS),
            (AgentOptions, COMMON_OPTIONS + AGENT_OPTIONS),
        ):
            synonyms = optionsClass().synonyms
            for name in names:
                self.assertIn(name, synonyms, f"{optionsClass.__name__} lacks {name}")

    def test_help(self) -> None:
        """
        The help names every option with its key, environment variable and
        default.
        """
        text = str(ProxyOptions())
        self.assertIn("-p, --port=", text)
        self.assertIn("proxy.http.port, $PROXY_PORT, default 8080", " ".join(text.split()))
        for optionsClass, role in ((ProxyOptions, PROXY), (AgentOptions, AGENT)):
            text = str(optionsClass())
            for setting in role.settings:
                for name in setting.options:
                    self.assertIn(f"--{name}", text)
