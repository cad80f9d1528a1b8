"""
Configuration: HOCON files, environment variables and command-line options
turned into frozen, validated settings objects.

Precedence per setting is prometheus-proxy's: command-line option > environment
variable > config file (including C{-Dkey=value} overrides) > built-in default.
Everything is read and checked once, before the reactor runs; nothing here is
consulted on the scrape path.
"""

from __future__ import annotations

import difflib
import http.client
import ipaddress
import json
import math
import os
import re
import socket
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast
from urllib.error import HTTPError
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException
from pyparsing import ParseBaseException
from twisted.logger import Logger

from promtwist.endpoints import KINDS, kindOf
from promtwist.httpguard import UNIX_PEERS

MiB = 1024 * 1024


class ConfigError(Exception):
    """
    A configuration problem, described in one line that names the source (file,
    environment variable or option), the key and what was expected.
    """


@dataclass(frozen=True)
class PathConfig:
    """
    One path an agent serves (an entry of C{agent.pathConfigs}).

    @ivar path: the path as Prometheus requests it, without the leading C{/};
        it may contain further C{/}.
    @ivar labels: the entry's JSON labels with every value as a string, since
        Prometheus' http_sd accepts only string label values.
    """

    name: str
    path: str
    url: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxyEndpoint:
    """
    Where an agent dials its proxy.
    """

    host: str
    port: int = 50051

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Identity:
    """
    An agent identity (an entry of C{proxy.auth}): an agent proves it is
    C{name} with C{token}, or with a client certificate whose subject common
    name is C{name}, and may then serve only the paths matching C{paths}.

    @ivar paths: globs (C{*} any run, C{?} one character) matched against the
        whole path; empty means any path.
    @ivar perAgent: the operator declares that one agent alone holds this
        identity's credential (C{proxy.auth[].perAgent}): proving the
        identity then proves being the same agent, so a claim under it may
        take a path from a connected holder of the same identity. Without
        it, the identity is a group credential and only the same launch
        does (see L{promtwist.proxy.registry.provesSameAgent}).
    """

    name: str
    token: str = ""
    paths: tuple[str, ...] = ()
    perAgent: bool = False


@dataclass(frozen=True)
class MetricFilter:
    """
    Which metric families of a path's body cross the link (an entry of
    C{agent.filters}): the regular expressions are fully anchored, C{allow}
    empty means all, and C{deny} applies after C{allow}.
    """

    path: str
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class _OperationsSettings:
    """
    What both processes share for running them: admin and metrics
    endpoints, logging and shutdown.
    """

    admin_enabled: bool = False
    admin_ping_path: str = "ping"
    admin_version_path: str = "version"
    admin_health_check_path: str = "healthcheck"
    admin_thread_dump_path: str = "threaddump"
    admin_debug_enabled: bool = False
    admin_allowed_networks: tuple[str, ...] = ()
    # promtwist's own (*.admin.listen, *.metrics.listen): a Twisted server
    # endpoint description replacing the port; "" is the dual-stack
    # wildcard on the port.
    admin_listen: str = ""
    metrics_enabled: bool = False
    metrics_listen: str = ""
    metrics_path: str = "metrics"
    scrape_request_backlog_unhealthy_size: int = 25
    # promtwist's own: how long in-flight scrapes may finish after SIGTERM.
    shutdown_grace_secs: float = 10.0


@dataclass(frozen=True)
class ProxySettings(_OperationsSettings):
    """
    Everything the proxy process needs, resolved from all sources.
    """

    http_port: int = 8080
    agent_port: int = 50051
    # promtwist's own (proxy.http.listen, proxy.agent.listen), as admin_listen.
    http_listen: str = ""
    agent_listen: str = ""
    agent_token: str = ""
    log_level: str = ""
    sd_enabled: bool = False
    sd_path: str = "discovery"
    # Normalised to "host:port"; "" means: derive it from the Host header of
    # the discovery request, which arrives on the scrape port.
    sd_target_prefix: str = ""
    # promtwist's own: give each discovered path without an instance label
    # the instance "<host:port>/<path>" (prometheus-proxy gives none, so
    # Prometheus' instance is the proxy's host:port).
    sd_per_path_instance: bool = False
    http_idle_timeout_secs: float = 45.0
    request_logging_enabled: bool = True
    scrape_request_timeout_secs: float = 90.0
    stale_agent_check_enabled: bool = True
    max_agent_inactivity_secs: float = 60.0
    stale_agent_check_pause_secs: float = 10.0
    max_unzipped_content_size_mbytes: int = 10
    # Consolidated bodies held at once over all scrapes (proxy.internal.*).
    max_consolidated_buffer_mbytes: int = 256
    # promtwist's own keys, under proxy.internal.
    max_frame_bytes: int = MiB
    heartbeat_period_secs: float = 5.0
    handshake_timeout_secs: float = 10.0
    # Limits on what the agent port accepts (proxy.internal.*).
    max_pending_handshakes: int = 64
    max_pending_handshakes_per_address: int = 8
    # Connections accepted at maxPendingHandshakes that wait, unread, for a
    # place, in order, each until handshakeTimeoutSecs after it was accepted;
    # beyond it (at once when 0) a connection is refused OVERLOADED. Lowered
    # at start, with a warning, to what the open-file limit leaves. It also
    # sizes the agent port's listen backlog (at least 50, capped by the
    # kernel's net.core.somaxconn): connections the kernel completed and
    # holds until the reactor's next accept, which is never paused.
    max_waiting_handshakes: int = 4096
    # Failed authentications from one address before it is refused for a
    # while without its token being checked; 0 turns the throttle off.
    max_auth_failures_per_address: int = 5
    max_agent_name_length: int = 256
    max_agents: int = 1000
    max_paths_per_agent: int = 1000
    # What one registration may carry, and all of them together; they bound
    # the registry's memory and the /discovery document (docs/security.md).
    max_path_length: int = 1024
    max_path_name_length: int = 256
    max_labels_per_path: int = 32
    max_label_name_length: int = 128
    max_label_value_length: int = 1024
    max_registered_bytes: int = 16 * MiB
    # How long a path whose last agent left stays in /discovery, answering
    # 503 (0: not at all).
    departed_path_retention_secs: float = 300.0
    # Who may connect as which agent, and which paths each may serve.
    identities: tuple[Identity, ...] = ()
    # TLS on the agent link; a trust file makes client certificates required.
    tls_cert_chain_file_path: str = ""
    tls_private_key_file_path: str = ""
    tls_trust_cert_collection_file_path: str = ""
    # The scrape port (proxy.http.*): what Prometheus' requests may be and
    # what they must prove.
    forward_authorization: bool = True
    http_max_header_bytes: int = 16384
    http_header_timeout_secs: float = 10.0
    http_tls_cert_chain_file_path: str = ""
    http_tls_private_key_file_path: str = ""
    http_tls_trust_cert_collection_file_path: str = ""
    http_basic_auth_username: str = ""
    http_basic_auth_password: str = ""
    http_bearer_token: str = ""
    http_allowed_networks: tuple[str, ...] = ()
    admin_port: int = 8092
    metrics_port: int = 8082
    admin_recent_requests_queue_size: int = 50
    scrape_request_map_unhealthy_size: int = 25


@dataclass(frozen=True)
class AgentSettings(_OperationsSettings):
    """
    Everything the agent process needs, resolved from all sources.
    """

    config_source: str = ""
    name: str = ""
    consolidated: bool = False
    agent_token: str = ""
    proxy_endpoints: tuple[ProxyEndpoint, ...] = (ProxyEndpoint("localhost", 50051),)
    chunk_content_size_kbs: int = 32
    min_gzip_size_bytes: int = 512
    scrape_timeout_secs: float = 15.0
    # Retries of a fetch that failed to connect or answered 5xx
    # (promtwist.agent.retries); 0 as prometheus-proxy.
    scrape_max_retries: int = 0
    # prometheus-proxy's default of 1 serialises every scrape behind the
    # slowest target; scrapes here are cheap Deferreds, so allow many.
    max_concurrent_clients: int = 32
    client_timeout_secs: float = 90.0
    max_content_length_mbytes: int = 10
    heartbeat_enabled: bool = True
    heartbeat_max_inactivity_secs: float = 5.0
    reconnect_pause_secs: float = 3.0
    path_configs: tuple[PathConfig, ...] = ()
    # Whether the file has an agent.pathConfigs key at all (an explicit
    # empty list counts): a reload to no paths is applied only then.
    path_configs_listed: bool = False
    filters: tuple[MetricFilter, ...] = ()
    admin_port: int = 8093
    metrics_port: int = 8083
    discovery_enabled: bool = False
    discovery_file_path: str = ""
    discovery_reconcile_interval_secs: float = 30.0
    log_level: str = ""
    # promtwist's own key, under agent.internal.
    max_frame_bytes: int = MiB
    # TLS on the agent link, and trust for HTTPS targets. The link uses TLS
    # when tls_enabled is set or any of the three files is
    # (promtwist.tls.linkUsesTLS).
    tls_enabled: bool = False
    tls_cert_chain_file_path: str = ""
    tls_private_key_file_path: str = ""
    tls_trust_cert_collection_file_path: str = ""
    tls_override_authority: str = ""
    trust_all_x509_certificates: bool = False
    https_trust_store_path: str = ""
    # Opens a PKCS#12 or Java trust store (promtwist.truststore).
    https_trust_store_password: str = ""


# ---------------------------------------------------------------------------
# The table of known keys.
#
# One table per role drives everything: reading the file, the environment and
# -D overrides, generating the command-line options (promtwist.cli) and their
# help, validation, the refusal of unknown keys and the warnings about
# unsupported ones.  Keys prometheus-proxy knows but promtwist does not act on
# are listed too (with no field), so that existing files load, with a "has no
# effect" warning for each one set.


@dataclass(frozen=True)
class Rule:
    """
    A constraint on a setting's value, beyond its type.

    @ivar expects: what is expected, for error messages; C{{noun}} stands for
        the type's noun ("an integer", "a number", ...).
    @ivar apply: returns the value to store (possibly normalised), or raises
        L{ValueError} when the value is not acceptable.
    """

    expects: str
    apply: Callable[[Any], Any]


def _bounded(expects: str, ok: Callable[[Any], bool]) -> Rule:
    """
    A L{Rule} that stores the value unchanged when C{ok} accepts it.
    """

    def apply(value: Any) -> Any:
        if not ok(value):
            raise ValueError(expects)
        return value

    return Rule(expects, apply)


PORT = _bounded("{noun} in 1..65535", lambda v: 1 <= v <= 65535)
POSITIVE = _bounded("{noun} > 0", lambda v: v > 0)
NON_NEGATIVE = _bounded("{noun} >= 0", lambda v: v >= 0)
MINUS_ONE_OR_POSITIVE = _bounded("{noun} that is -1 or > 0", lambda v: v == -1 or v > 0)


def _listen(value: str) -> str:
    # Only the type here: the rest is Twisted's to parse when the listener
    # is made, and its error names the key too.
    if value.strip():
        kindOf(value)
    return value.strip()


LISTEN = Rule(
    f"a Twisted server endpoint description ({', '.join(k + ':' for k in KINDS)}), or empty",
    _listen,
)
FRAME_SIZE = _bounded("{noun} >= 65536", lambda v: v >= 65536)

LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "off")


def _logLevel(value: str) -> str:
    level = value.strip().lower()
    if level and level not in LOG_LEVELS:
        raise ValueError(value)
    return level


LOG_LEVEL = Rule(f"one of {', '.join(LOG_LEVELS)} or empty", _logLevel)


def _idleTimeout(value: float) -> float:
    # prometheus-proxy documents -1 as "use the default"; keep the meaning
    # but store the number the proxy actually uses.
    if value == -1:
        return 45.0
    if value <= 0:
        raise ValueError(value)
    return value


IDLE_TIMEOUT = Rule("{noun} that is -1 (45 seconds) or > 0", _idleTimeout)


def _urlPath(value: str) -> str:
    # Paths are compared without their leading "/", as prometheus-proxy does.
    path = value.removeprefix("/")
    if not path or any(c in "?#" or c.isspace() for c in path):
        raise ValueError(value)
    return path


def _endpointPath(value: str) -> str:
    # An empty path turns the endpoint off.
    return _urlPath(value) if value.strip() else ""


ENDPOINT_PATH = Rule("a URL path without '?', '#' or whitespace, or empty", _endpointPath)

URL_PATH = Rule("a non-empty URL path without '?', '#' or whitespace", _urlPath)


def _hostPort(parts: SplitResult, scheme: str) -> str:
    """
    Render C{parts}' host and port (or the scheme's default port) as
    C{host:port}, bracketing IPv6 addresses.
    """
    host = parts.hostname
    if not host:
        raise ValueError(parts)
    port = {"http": 80, "https": 443}[scheme] if parts.port is None else parts.port
    return str(ProxyEndpoint(host, PORT.apply(port)))


def _targetPrefix(value: str) -> str:
    # prometheus-proxy puts this string verbatim into http_sd targets, so its
    # documented form "http://host:port/" yields targets Prometheus rejects.
    # A target is host:port; accept either form and keep only that.
    text = value.strip()
    if not text:
        return ""
    if any(c.isspace() for c in text):
        raise ValueError(value)
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(value)
        return _hostPort(parts, scheme)
    return _hostPort(urlsplit("//" + text), "http")


TARGET_PREFIX = Rule("host:port, or an http:// or https:// URL", _targetPrefix)

_NOUNS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


@dataclass(frozen=True)
class Setting:
    """
    One known scalar configuration key and every way of setting it.

    @ivar key: the full HOCON path, e.g. C{proxy.http.port}.
    @ivar kind: C{bool}, C{int}, C{float} or C{str}.
    @ivar default: the value when no source sets it; for keys with a C{field},
        the settings dataclass's own default (filled in by L{_withDefaults}).
    @ivar field: the settings dataclass field this key feeds, or L{None}.
    @ivar derived: the key has no field of its own but is used to compute one
        (C{agent.proxy.hostname} and C{port} make C{proxy_endpoints}).  Keys
        with neither are accepted for compatibility but have no effect.
    @ivar env: the environment variable, if any.
    @ivar options: command-line long option names; the first is canonical,
        the others are accepted spellings of it.
    @ivar short: the one-letter command-line option, if any.
    @ivar help: one line for C{--help}; only needed with C{options}.
    """

    key: str
    kind: type
    default: object = None
    field: str | None = None
    derived: bool = False
    env: str | None = None
    options: tuple[str, ...] = ()
    short: str | None = None
    rule: Rule | None = None
    help: str = ""

    @property
    def option(self) -> str | None:
        """
        The canonical long option name, if the key has a command-line option.
        """
        return self.options[0] if self.options else None

    @property
    def effective(self) -> bool:
        """
        Whether promtwist acts on this key at all.
        """
        return self.field is not None or self.derived

    @property
    def expects(self) -> str:
        """
        What a valid value looks like, for error messages.
        """
        noun = _NOUNS[self.kind]
        return self.rule.expects.format(noun=noun) if self.rule else noun


@dataclass(frozen=True)
class Role:
    """
    The keys of one process's configuration section.

    @ivar section: C{proxy} or C{agent}; the process reads only this section.
    @ivar configEnv: the environment variable naming the config file or URL.
    @ivar settings: the scalar keys.
    @ivar lists: keys whose value is a list (or object), read specially.
    @ivar removed: keys prometheus-proxy no longer reads; ignored silently.
    """

    section: str
    configEnv: str
    settings: tuple[Setting, ...]
    lists: tuple[str, ...]
    removed: tuple[str, ...] = ()

    @property
    def known(self) -> frozenset[str]:
        """
        Every key that is not reported as unknown.
        """
        return frozenset(s.key for s in self.settings) | set(self.lists) | set(self.removed)

    def changedKeys(
        self,
        old: object,
        new: object,
        applied: Iterable[str],
        keyOfField: Mapping[str, str] = {},
    ) -> list[str]:
        """
        What differs between two settings objects of this role, except the
        fields a reload C{applied}, named as an operator writes them: the
        key of each field, or C{keyOfField}'s name for fields not fed by
        one key.
        """
        keys = {s.field: s.key for s in self.settings if s.field}
        skipped = set(applied)
        return [
            keyOfField.get(f.name) or keys.get(f.name, f.name)
            for f in fields(type(old))  # type: ignore[arg-type]
            if f.name not in skipped and getattr(old, f.name) != getattr(new, f.name)
        ]


def _withDefaults(settingsClass: type, settings: tuple[Setting, ...]) -> tuple[Setting, ...]:
    """
    Take the default of every field-backed setting from the settings
    dataclass, so that each default is written down exactly once.
    """
    defaults = {f.name: f.default for f in fields(settingsClass)}
    return tuple(replace(s, default=defaults[s.field]) if s.field else s for s in settings)


def _common(
    section: str, adminPort: int, metricsPort: int, zipkinService: str, logLevelEnv: str
) -> tuple[Setting, ...]:
    """
    The keys both processes have, under their own section, with the options
    and environment variables prometheus-proxy shares between them.
    """
    s = section
    metricsExports = (
        "standardExportsEnabled",
        "memoryPoolsExportsEnabled",
        "garbageCollectorExportsEnabled",
        "threadExportsEnabled",
        "classLoadingExportsEnabled",
        "versionInfoExportsEnabled",
        "grpc.metricsEnabled",
        "grpc.allMetricsReported",
    )
    return (
        Setting(
            f"{s}.logLevel",
            str,
            field="log_level",
            env=logLevelEnv,
            options=("log_level",),
            rule=LOG_LEVEL,
            help="Log level: trace, debug, info, warn, error or off",
        ),
        Setting(
            f"{s}.agentToken",
            str,
            field="agent_token",
            env="AGENT_TOKEN",
            options=("agent_token",),
            help="Shared token agents present to the proxy",
        ),
        Setting(
            f"{s}.transportFilterDisabled",
            bool,
            False,
            env="TRANSPORT_FILTER_DISABLED",
            options=("tf_disabled", "tf-disabled"),
            help="prometheus-proxy's nginx mode (no effect in promtwist)",
        ),
        Setting(
            f"{s}.admin.enabled",
            bool,
            False,
            field="admin_enabled",
            env="ADMIN_ENABLED",
            options=("admin",),
            short="r",
            help="Serve the admin endpoints",
        ),
        Setting(
            f"{s}.admin.port",
            int,
            adminPort,
            field="admin_port",
            env="ADMIN_PORT",
            options=("admin_port",),
            short="i",
            rule=PORT,
            help="Admin port",
        ),
        Setting(
            f"{s}.admin.listen",
            str,
            field="admin_listen",
            options=("admin_listen",),
            rule=LISTEN,
            help="Where the admin port listens, as a Twisted endpoint (replaces --admin_port)",
        ),
        Setting(f"{s}.admin.pingPath", str, field="admin_ping_path", rule=ENDPOINT_PATH),
        Setting(f"{s}.admin.versionPath", str, field="admin_version_path", rule=ENDPOINT_PATH),
        Setting(
            f"{s}.admin.healthCheckPath", str, field="admin_health_check_path", rule=ENDPOINT_PATH
        ),
        Setting(
            f"{s}.admin.threadDumpPath", str, field="admin_thread_dump_path", rule=ENDPOINT_PATH
        ),
        Setting(
            f"{s}.admin.debugEnabled",
            bool,
            False,
            field="admin_debug_enabled",
            env="DEBUG_ENABLED",
            options=("debug",),
            short="b",
            help="Serve the /debug admin endpoint",
        ),
        Setting(
            f"{s}.metrics.enabled",
            bool,
            False,
            field="metrics_enabled",
            env="METRICS_ENABLED",
            options=("metrics",),
            short="e",
            help="Serve the process's own metrics",
        ),
        Setting(
            f"{s}.metrics.port",
            int,
            metricsPort,
            field="metrics_port",
            env="METRICS_PORT",
            options=("metrics_port",),
            short="m",
            rule=PORT,
            help="Metrics port",
        ),
        Setting(
            f"{s}.metrics.listen",
            str,
            field="metrics_listen",
            options=("metrics_listen",),
            rule=LISTEN,
            help="Where the metrics port listens, as a Twisted endpoint (replaces --metrics_port)",
        ),
        Setting(f"{s}.metrics.path", str, field="metrics_path", rule=ENDPOINT_PATH),
        Setting(
            f"{s}.internal.scrapeRequestBacklogUnhealthySize",
            int,
            field="scrape_request_backlog_unhealthy_size",
            rule=POSITIVE,
        ),
        Setting(
            f"{s}.internal.shutdownGraceSecs",
            float,
            field="shutdown_grace_secs",
            rule=NON_NEGATIVE,
        ),
        *(Setting(f"{s}.metrics.{name}", bool, False) for name in metricsExports),
        Setting(
            f"{s}.tls.certChainFilePath",
            str,
            field="tls_cert_chain_file_path",
            env="CERT_CHAIN_FILE_PATH",
            options=("cert",),
            short="t",
            help="TLS certificate chain file (PEM)",
        ),
        Setting(
            f"{s}.tls.privateKeyFilePath",
            str,
            field="tls_private_key_file_path",
            env="PRIVATE_KEY_FILE_PATH",
            options=("key",),
            short="k",
            help="TLS private key file (PEM)",
        ),
        Setting(
            f"{s}.tls.trustCertCollectionFilePath",
            str,
            field="tls_trust_cert_collection_file_path",
            env="TRUST_CERT_COLLECTION_FILE_PATH",
            options=("trust",),
            short="s",
            help="CA certificates trusted for the peer (PEM)",
        ),
        Setting(
            f"{s}.grpc.keepAliveTimeSecs",
            int,
            -1,
            env="KEEPALIVE_TIME_SECS",
            options=("keepalive_time_secs",),
            rule=MINUS_ONE_OR_POSITIVE,
            help="gRPC keepalive interval (no effect in promtwist)",
        ),
        Setting(
            f"{s}.grpc.keepAliveTimeoutSecs",
            int,
            -1,
            env="KEEPALIVE_TIMEOUT_SECS",
            options=("keepalive_timeout_secs",),
            rule=MINUS_ONE_OR_POSITIVE,
            help="gRPC keepalive timeout (no effect in promtwist)",
        ),
        Setting(f"{s}.internal.maxFrameBytes", int, field="max_frame_bytes", rule=FRAME_SIZE),
        Setting(f"{s}.internal.zipkin.enabled", bool, False),
        Setting(f"{s}.internal.zipkin.hostname", str, "localhost"),
        Setting(f"{s}.internal.zipkin.port", int, 9411, rule=PORT),
        Setting(f"{s}.internal.zipkin.path", str, "api/v2/spans"),
        Setting(f"{s}.internal.zipkin.serviceName", str, zipkinService),
        Setting(f"{s}.internal.zipkin.grpcReportingEnabled", bool, False),
    )


PROXY = Role(
    section="proxy",
    configEnv="PROXY_CONFIG",
    settings=_withDefaults(
        ProxySettings,
        (
            Setting(
                "proxy.http.port",
                int,
                field="http_port",
                env="PROXY_PORT",
                options=("port",),
                short="p",
                rule=PORT,
                help="Port Prometheus scrapes",
            ),
            Setting(
                "proxy.http.listen",
                str,
                field="http_listen",
                options=("listen",),
                rule=LISTEN,
                help="Where Prometheus scrapes, as a Twisted endpoint (replaces --port)",
            ),
            Setting(
                "proxy.agent.port",
                int,
                field="agent_port",
                env="AGENT_PORT",
                options=("agent_port",),
                short="a",
                rule=PORT,
                help="Port agents connect to",
            ),
            Setting(
                "proxy.agent.listen",
                str,
                field="agent_listen",
                options=("agent_listen",),
                rule=LISTEN,
                help="Where agents connect, as a Twisted endpoint (replaces --agent_port)",
            ),
            Setting(
                "proxy.service.discovery.enabled",
                bool,
                field="sd_enabled",
                env="SD_ENABLED",
                options=("sd_enabled",),
                help="Serve Prometheus http_sd targets",
            ),
            Setting(
                "proxy.service.discovery.path",
                str,
                field="sd_path",
                env="SD_PATH",
                options=("sd_path",),
                rule=URL_PATH,
                help="Path of the http_sd document",
            ),
            Setting(
                "proxy.service.discovery.targetPrefix",
                str,
                field="sd_target_prefix",
                env="SD_TARGET_PREFIX",
                options=("sd_target_prefix",),
                rule=TARGET_PREFIX,
                help="host:port put in http_sd targets (empty: the request's Host)",
            ),
            Setting(
                "proxy.service.discovery.perPathInstance",
                bool,
                field="sd_per_path_instance",
                options=("sd_per_path_instance",),
                help="Label each http_sd target instance=<host:port>/<path> (promtwist's own)",
            ),
            Setting(
                "proxy.http.idleTimeoutSecs",
                float,
                field="http_idle_timeout_secs",
                rule=IDLE_TIMEOUT,
            ),
            Setting("proxy.http.requestLoggingEnabled", bool, field="request_logging_enabled"),
            Setting(
                "proxy.reflectionDisabled",
                bool,
                False,
                env="REFLECTION_DISABLED",
                options=("ref_disabled", "ref-disabled"),
                help="Disable gRPC reflection (no effect in promtwist)",
            ),
            Setting(
                "proxy.admin.recentRequestsQueueSize",
                int,
                field="admin_recent_requests_queue_size",
                rule=NON_NEGATIVE,
            ),
            Setting(
                "proxy.dashboard.enabled",
                bool,
                False,
                env="DASHBOARD_ENABLED",
                options=("dashboard",),
                help="Serve the dashboard",
            ),
            Setting(
                "proxy.dashboard.port",
                int,
                8094,
                env="DASHBOARD_PORT",
                options=("dashboard_port",),
                rule=PORT,
                help="Dashboard port",
            ),
            Setting(
                "proxy.dashboard.path",
                str,
                "dashboard",
                env="DASHBOARD_PATH",
                options=("dashboard_path",),
                help="Dashboard base path",
            ),
            Setting("proxy.dashboard.refreshIntervalSecs", int, 2, rule=POSITIVE),
            Setting("proxy.dashboard.recentScrapesQueueSize", int, 200, rule=NON_NEGATIVE),
            Setting(
                "proxy.grpc.handshakeTimeoutSecs",
                int,
                -1,
                env="HANDSHAKE_TIMEOUT_SECS",
                options=("handshake_timeout_secs",),
                rule=MINUS_ONE_OR_POSITIVE,
                help="gRPC handshake timeout (no effect; see proxy.internal.handshakeTimeoutSecs)",
            ),
            Setting(
                "proxy.grpc.permitKeepAliveWithoutCalls",
                bool,
                False,
                env="PERMIT_KEEPALIVE_WITHOUT_CALLS",
                options=("permit_keepalive_without_calls",),
                help="gRPC keepalive policy (no effect in promtwist)",
            ),
            Setting(
                "proxy.grpc.permitKeepAliveTimeSecs",
                int,
                -1,
                env="PERMIT_KEEPALIVE_TIME_SECS",
                options=("permit_keepalive_time_secs",),
                rule=MINUS_ONE_OR_POSITIVE,
                help="gRPC keepalive policy (no effect in promtwist)",
            ),
            Setting(
                "proxy.grpc.maxConnectionIdleSecs",
                int,
                -1,
                env="MAX_CONNECTION_IDLE_SECS",
                options=("max_connection_idle_secs",),
                rule=MINUS_ONE_OR_POSITIVE,
                help="gRPC connection limit (no effect in promtwist)",
            ),
            Setting(
                "proxy.grpc.maxConnectionAgeSecs",
                int,
                -1,
                env="MAX_CONNECTION_AGE_SECS",
                options=("max_connection_age_secs",),
                rule=MINUS_ONE_OR_POSITIVE,
                help="gRPC connection limit (no effect in promtwist)",
            ),
            Setting(
                "proxy.grpc.maxConnectionAgeGraceSecs",
                int,
                -1,
                env="MAX_CONNECTION_AGE_GRACE_SECS",
                options=("max_connection_age_grace_secs",),
                rule=MINUS_ONE_OR_POSITIVE,
                help="gRPC connection limit (no effect in promtwist)",
            ),
            Setting(
                "proxy.internal.staleAgentCheckEnabled", bool, field="stale_agent_check_enabled"
            ),
            Setting(
                "proxy.internal.maxAgentInactivitySecs",
                float,
                field="max_agent_inactivity_secs",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.staleAgentCheckPauseSecs",
                float,
                field="stale_agent_check_pause_secs",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.scrapeRequestTimeoutSecs",
                float,
                field="scrape_request_timeout_secs",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.scrapeRequestMapUnhealthySize",
                int,
                field="scrape_request_map_unhealthy_size",
                rule=POSITIVE,
            ),
            Setting("proxy.internal.chunkContextMapUnhealthySize", int, 25, rule=POSITIVE),
            Setting("proxy.internal.maxZippedContentSizeMBytes", int, 5, rule=NON_NEGATIVE),
            Setting(
                "proxy.internal.maxUnzippedContentSizeMBytes",
                int,
                field="max_unzipped_content_size_mbytes",
                rule=NON_NEGATIVE,
            ),
            Setting(
                "proxy.internal.maxConsolidatedBufferMBytes",
                int,
                field="max_consolidated_buffer_mbytes",
                rule=POSITIVE,
            ),
            Setting("proxy.internal.blitz.enabled", bool, False),
            Setting("proxy.internal.blitz.path", str, "mu-dd4bffbb-ff2e9926-5a80952c-1c6cb64d.txt"),
            Setting(
                "proxy.internal.heartbeatPeriodSecs",
                float,
                field="heartbeat_period_secs",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.handshakeTimeoutSecs",
                float,
                field="handshake_timeout_secs",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxPendingHandshakes",
                int,
                field="max_pending_handshakes",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxPendingHandshakesPerAddress",
                int,
                field="max_pending_handshakes_per_address",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxWaitingHandshakes",
                int,
                field="max_waiting_handshakes",
                rule=NON_NEGATIVE,
            ),
            Setting(
                "proxy.internal.maxAuthFailuresPerAddress",
                int,
                field="max_auth_failures_per_address",
                rule=NON_NEGATIVE,
            ),
            Setting(
                "proxy.internal.maxAgentNameLength",
                int,
                field="max_agent_name_length",
                rule=POSITIVE,
            ),
            Setting("proxy.internal.maxAgents", int, field="max_agents", rule=POSITIVE),
            Setting(
                "proxy.internal.maxPathsPerAgent", int, field="max_paths_per_agent", rule=POSITIVE
            ),
            Setting("proxy.internal.maxPathLength", int, field="max_path_length", rule=POSITIVE),
            Setting(
                "proxy.internal.maxPathNameLength", int, field="max_path_name_length", rule=POSITIVE
            ),
            Setting(
                "proxy.internal.maxLabelsPerPath", int, field="max_labels_per_path", rule=POSITIVE
            ),
            Setting(
                "proxy.internal.maxLabelNameLength",
                int,
                field="max_label_name_length",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxLabelValueLength",
                int,
                field="max_label_value_length",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxRegisteredBytes",
                int,
                field="max_registered_bytes",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.departedPathRetentionSecs",
                float,
                field="departed_path_retention_secs",
                rule=NON_NEGATIVE,
            ),
            Setting(
                "proxy.http.forwardAuthorization",
                bool,
                field="forward_authorization",
            ),
            Setting(
                "proxy.http.maxHeaderBytes",
                int,
                field="http_max_header_bytes",
                rule=_bounded("{noun} >= 1024", lambda v: v >= 1024),
            ),
            Setting(
                "proxy.http.headerTimeoutSecs",
                float,
                field="http_header_timeout_secs",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.http.tls.certChainFilePath",
                str,
                field="http_tls_cert_chain_file_path",
                options=("http_cert",),
                help="TLS certificate chain for the scrape port (PEM)",
            ),
            Setting(
                "proxy.http.tls.privateKeyFilePath",
                str,
                field="http_tls_private_key_file_path",
                options=("http_key",),
                help="TLS private key for the scrape port (PEM)",
            ),
            Setting(
                "proxy.http.tls.trustCertCollectionFilePath",
                str,
                field="http_tls_trust_cert_collection_file_path",
                options=("http_trust",),
                help="CAs for required client certificates on the scrape port (PEM)",
            ),
            Setting("proxy.http.basicAuth.username", str, field="http_basic_auth_username"),
            Setting("proxy.http.basicAuth.password", str, field="http_basic_auth_password"),
            Setting("proxy.http.bearerToken", str, field="http_bearer_token"),
            *_common("proxy", 8092, 8082, "prometheus-proxy", "PROXY_LOG_LEVEL"),
        ),
    ),
    lists=("proxy.auth", "proxy.http.allowedNetworks", "proxy.admin.allowedNetworks"),
    removed=(
        "proxy.http.maxThreads",
        "proxy.http.minThreads",
        "proxy.internal.scrapeRequestCheckMillis",
    ),
)

AGENT = Role(
    section="agent",
    configEnv="AGENT_CONFIG",
    settings=_withDefaults(
        AgentSettings,
        (
            # --proxy and $PROXY_HOSTNAME take a comma-separated list that replaces
            # agent.proxy.endpoints; see _proxyEndpoints.
            Setting(
                "agent.proxy.hostname",
                str,
                "localhost",
                derived=True,
                env="PROXY_HOSTNAME",
                options=("proxy",),
                short="p",
                help="Proxy host[:port], or a comma-separated failover list",
            ),
            Setting("agent.proxy.port", int, 50051, derived=True, rule=PORT),
            Setting(
                "agent.name",
                str,
                field="name",
                env="AGENT_NAME",
                options=("name",),
                short="n",
                help="Agent name (empty: Unnamed-<hostname>)",
            ),
            Setting(
                "agent.consolidated",
                bool,
                field="consolidated",
                env="CONSOLIDATED",
                options=("consolidated",),
                short="o",
                help="Share paths with other agents as a consolidated group",
            ),
            Setting(
                "agent.chunkContentSizeKbs",
                int,
                field="chunk_content_size_kbs",
                env="CHUNK_CONTENT_SIZE_KBS",
                options=("chunk",),
                rule=POSITIVE,
                help="Chunk size of bodies on the link, compressed or not, KiB",
            ),
            Setting(
                "agent.minGzipSizeBytes",
                int,
                field="min_gzip_size_bytes",
                env="MIN_GZIP_SIZE_BYTES",
                options=("gzip",),
                rule=NON_NEGATIVE,
                help="Compress bodies larger than this for the link, bytes",
            ),
            Setting(
                "agent.scrapeTimeoutSecs",
                float,
                field="scrape_timeout_secs",
                env="SCRAPE_TIMEOUT_SECS",
                options=("timeout",),
                rule=POSITIVE,
                help="Timeout of one target fetch, retries included, seconds",
            ),
            Setting(
                "agent.scrapeMaxRetries",
                int,
                field="scrape_max_retries",
                env="SCRAPE_MAX_RETRIES",
                options=("max_retries",),
                rule=NON_NEGATIVE,
                help="Retries of a target fetch that failed to connect or answered 5xx",
            ),
            Setting(
                "agent.http.enableTrustAllX509Certificates",
                bool,
                field="trust_all_x509_certificates",
                env="TRUST_ALL_X509_CERTIFICATES",
                options=("trust_all_x509",),
                help="Do not verify HTTPS targets' certificates",
            ),
            Setting(
                "agent.http.trustStorePath",
                str,
                field="https_trust_store_path",
                env="HTTPS_TRUST_STORE_PATH",
                options=("https_truststore",),
                help="CA certificates for HTTPS targets (PEM, PKCS#12 or JKS)",
            ),
            Setting(
                "agent.http.trustStorePassword",
                str,
                field="https_trust_store_password",
                env="HTTPS_TRUST_STORE_PASSWORD",
                options=("https_truststore_password",),
                help="Password of a PKCS#12 or JKS trust store",
            ),
            Setting(
                "agent.http.maxConcurrentClients",
                int,
                field="max_concurrent_clients",
                env="MAX_CONCURRENT_CLIENTS",
                options=("max_concurrent_clients",),
                rule=POSITIVE,
                help="Target fetches in flight at once",
            ),
            Setting(
                "agent.http.clientTimeoutSecs",
                float,
                field="client_timeout_secs",
                env="CLIENT_TIMEOUT_SECS",
                options=("client_timeout_secs",),
                rule=POSITIVE,
                help="Timeout of one request to a target, connect to last byte, seconds",
            ),
            Setting(
                "agent.http.maxContentLengthMBytes",
                int,
                field="max_content_length_mbytes",
                options=("max_content_length_mbytes",),
                rule=POSITIVE,
                help="Largest target body accepted, MiB",
            ),
            Setting(
                "agent.http.clientCache.maxSize",
                int,
                100,
                env="MAX_CLIENT_CACHE_SIZE",
                options=("max_cache_size",),
                rule=POSITIVE,
                help="HTTP client cache size (no effect in promtwist)",
            ),
            Setting(
                "agent.http.clientCache.maxAgeMins",
                int,
                30,
                env="MAX_CLIENT_CACHE_AGE_MINS",
                options=("max_cache_age_mins",),
                rule=POSITIVE,
                help="HTTP client cache age (no effect in promtwist)",
            ),
            Setting(
                "agent.http.clientCache.maxIdleMins",
                int,
                10,
                env="MAX_CLIENT_CACHE_IDLE_MINS",
                options=("max_cache_idle_mins",),
                rule=POSITIVE,
                help="HTTP client cache idle time (no effect in promtwist)",
            ),
            Setting(
                "agent.http.clientCache.cleanupIntervalMins",
                int,
                5,
                env="CLIENT_CACHE_CLEANUP_INTERVAL_MINS",
                options=("cache_cleanup_interval_mins",),
                rule=POSITIVE,
                help="HTTP client cache cleanup (no effect in promtwist)",
            ),
            # promtwist's own: TLS with no agent.tls file, trusting the
            # system's CAs (prometheus-proxy's issue #106).
            Setting("agent.tls.enabled", bool, field="tls_enabled"),
            Setting(
                "agent.tls.overrideAuthority",
                str,
                field="tls_override_authority",
                env="OVERRIDE_AUTHORITY",
                options=("override", "over"),
                help="TLS server name expected from the proxy",
            ),
            Setting("agent.discovery.enabled", bool, field="discovery_enabled"),
            Setting("agent.discovery.file.path", str, field="discovery_file_path"),
            Setting(
                "agent.discovery.reconcileIntervalSecs",
                float,
                field="discovery_reconcile_interval_secs",
                rule=POSITIVE,
            ),
            Setting(
                "agent.grpc.keepAliveWithoutCalls",
                bool,
                False,
                env="KEEPALIVE_WITHOUT_CALLS",
                options=("keepalive_without_calls",),
                help="gRPC keepalive policy (no effect in promtwist)",
            ),
            Setting(
                "agent.grpc.unaryDeadlineSecs",
                int,
                30,
                env="UNARY_DEADLINE_SECS",
                options=("unary_deadline_secs",),
                rule=NON_NEGATIVE,
                help="gRPC call deadline (no effect in promtwist)",
            ),
            # prometheus-proxy's older name for agent.http.clientTimeoutSecs;
            # see _clientTimeout.
            Setting("agent.internal.cioTimeoutSecs", int, 90, derived=True, rule=POSITIVE),
            Setting(
                "agent.internal.reconnectPauseSecs",
                float,
                field="reconnect_pause_secs",
                rule=POSITIVE,
            ),
            Setting("agent.internal.heartbeatEnabled", bool, field="heartbeat_enabled"),
            Setting("agent.internal.heartbeatCheckPauseMillis", int, 500, rule=POSITIVE),
            Setting(
                "agent.internal.heartbeatMaxInactivitySecs",
                float,
                field="heartbeat_max_inactivity_secs",
                rule=POSITIVE,
            ),
            *_common("agent", 8093, 8083, "prometheus-agent", "AGENT_LOG_LEVEL"),
        ),
    ),
    lists=(
        "agent.pathConfigs",
        "agent.filters",
        "agent.proxy.endpoints",
        "agent.admin.allowedNetworks",
    ),
)


# ---------------------------------------------------------------------------
# Reading the configuration source.

FETCH_TIMEOUT_SECS = 10.0

_SYNTAX_BY_SUFFIX = {
    ".json": "json",
    ".jsn": "json",
    ".properties": "properties",
    ".props": "properties",
}

# Names usable in a HOCON ${VAR} substitution; others could not be put into the
# fallback tree as a single key (see _parseHOCON).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_PROPERTIES_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def fetchURL(url: str) -> bytes:
    """
    Fetch a configuration URL.  This blocks, which is fine: configuration is
    read before the reactor starts.

    @raise OSError: for network and HTTP errors.
    """
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECS) as response:
        body: bytes = response.read()
    return body


def _isURL(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _label(source: str) -> str:
    """
    How a configuration source is named in messages: as given, except that a
    URL's password is not repeated in logs.
    """
    if not _isURL(source):
        return source
    parts = urlsplit(source)
    if parts.password is None:
        return source
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _read(source: str, label: str, fetch: Callable[[str], bytes]) -> str:
    try:
        if _isURL(source):
            data = fetch(source)
        else:
            with open(source, "rb") as f:
                data = f.read()
    except (OSError, ValueError, http.client.HTTPException) as e:
        # An HTTPError says it best itself; other errors bury their reason.
        reason = (
            e
            if isinstance(e, HTTPError)
            else (getattr(e, "reason", None) or getattr(e, "strerror", None) or e)
        )
        raise ConfigError(f"{label}: cannot read the configuration: {reason}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: not UTF-8 text (byte {e.start})") from e


def _parseHOCON(text: str, basedir: str | None, environ: Mapping[str, str]) -> Mapping[str, Any]:
    """
    Parse HOCON, resolving C{${VAR}} substitutions against C{environ}.

    pyhocon looks environment variables up in L{os.environ} only; giving it the
    variables as a fallback tree resolves them from C{environ} with the same
    precedence (the file's own keys win), without touching the process.
    """
    try:
        tree = ConfigFactory.parse_string(text, basedir=basedir, resolve=False)
        if not isinstance(tree, ConfigTree):
            raise TypeError("expected an object at the top level, not a list")
        env = ConfigTree(root=True)
        for name, value in environ.items():
            if _ENV_NAME.match(name):
                env.put(name, value)
        resolved: Mapping[str, Any] = tree.with_fallback(env).as_plain_ordered_dict()
    except ParseBaseException as e:
        message = re.sub(r"\s*\(at char \d+\).*", "", str(e))
        raise ValueError(f"line {e.lineno}, column {e.col}: {message}") from e
    except (ConfigException, OSError, TypeError) as e:
        raise ValueError(str(e)) from e
    # Only sections the file wrote; the fallback tree must not make one up.
    return {name: resolved[name] for name in tree}


def _parseJSON(text: str) -> Mapping[str, Any]:
    try:
        root = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {e.lineno}, column {e.colno}: {e.msg}") from e
    if isinstance(root, dict):
        return root
    raise ValueError("expected an object at the top level")


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if len(escaped) == 5:
            return chr(int(escaped[1:], 16))
        return _PROPERTIES_ESCAPES.get(escaped, escaped)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", replace, text, flags=re.DOTALL)


def _propertiesLine(line: str) -> tuple[str, str]:
    """
    Split one logical Java-properties line into its key and value.

    The key ends at the first unescaped C{=}, C{:} or whitespace; blanks and
    one C{=} or C{:} separate it from the value; backslash escapes apply.
    """
    line = line.lstrip(" \t\f")
    end = 0
    while end < len(line) and line[end] not in "=: \t\f":
        end += 2 if line[end] == "\\" else 1
    rest = line[end:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(line[:end]), _unescape(rest)


def _parseProperties(text: str) -> Mapping[str, Any]:
    """
    Parse a Java properties file into a tree: dotted keys are paths, as
    prometheus-proxy's configuration library reads them.
    """
    root: dict[str, Any] = {}
    lines = iter(text.splitlines())
    for physical in lines:
        logical = physical.lstrip(" \t\f")
        if not logical or logical[0] in "#!":
            continue
        # An odd number of trailing backslashes continues the line.
        while (len(logical) - len(logical.rstrip("\\"))) % 2:
            logical = logical[:-1] + next(lines, "").lstrip(" \t\f")
        key, value = _propertiesLine(logical)
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        # As in HOCON, an object wins over a plain value at the same path.
        if not isinstance(node.get(leaf), dict):
            node[leaf] = value
    return root


def _load(
    source: str, label: str, environ: Mapping[str, str], fetch: Callable[[str], bytes]
) -> Mapping[str, Any]:
    """
    Read and parse a configuration file or URL, choosing the syntax by its
    extension as prometheus-proxy does.
    """
    text = _read(source, label, fetch)
    path = urlsplit(source).path if _isURL(source) else source
    syntax = _SYNTAX_BY_SUFFIX.get(os.path.splitext(path)[1].lower(), "hocon")
    try:
        if syntax == "json":
            return _parseJSON(text)
        if syntax == "properties":
            return _parseProperties(text)
        # Includes are relative to a file's directory (a fetched file's, to
        # the working directory).
        basedir = None if _isURL(source) else os.path.dirname(source)
        return _parseHOCON(text, basedir, environ)
    except ValueError as e:
        raise ConfigError(f"{label}: {e}") from e


# Typesafe Config's own extensions, in the order its parseFileAnySyntax
# prefers them when a name without one is given.
_ANY_SYNTAX_SUFFIXES = (".conf", ".json", ".properties")


def _anySyntax(source: str) -> list[str]:
    """
    The files a configuration name stands for, most preferred first.

    A URL, an existing file, or a name ending in one of Typesafe Config's
    extensions is itself.  Otherwise, as prometheus-proxy's
    C{parseFileAnySyntax} does, the name is tried with C{.conf}, C{.json}
    and C{.properties}, and every one found is read; none found leaves the
    name itself, for L{_read} to report.
    """
    if (
        _isURL(source)
        or os.path.exists(source)
        or os.path.splitext(source)[1].lower() in _ANY_SYNTAX_SUFFIXES
    ):
        return [source]
    found = [source + suffix for suffix in _ANY_SYNTAX_SUFFIXES if os.path.isfile(source + suffix)]
    return found or [source]


def _merged(high: Mapping[str, Any], low: Mapping[str, Any]) -> dict[str, Any]:
    """
    Two parsed files as one, as Typesafe Config merges them: objects merge
    key by key, anything else in C{high} replaces what C{low} has.
    """
    out = dict(low)
    for key, value in high.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = _merged(value, below)
        else:
            out[key] = value
    return out


def _loadAnySyntax(
    source: str,
    environ: Mapping[str, str],
    fetch: Callable[[str], bytes],
    warn: Callable[[str], None],
) -> tuple[Mapping[str, Any], str]:
    """
    Read a configuration name the way prometheus-proxy does (see
    L{_anySyntax}), saying which files a name without an extension stood for.

    @return: the parsed tree, and how the source is named in messages.
    """
    files = _anySyntax(source)
    if files == [source]:
        label = _label(source)
        return _load(source, label, environ, fetch), label
    if len(files) == 1:
        warn(f"{source}: no such file; read {files[0]}, as prometheus-proxy does")
    else:
        warn(
            f"{source}: no such file; read {', '.join(files)} merged, as prometheus-proxy"
            f" does ({files[0]} wins where they set the same key)"
        )
    root: Mapping[str, Any] = {}
    for file in reversed(files):
        root = _merged(_load(file, file, environ, fetch), root)
    return root, " + ".join(files)


# ---------------------------------------------------------------------------
# Resolving values.

_WORDS = {"true": True, "false": False}
# HOCON and Java properties also read these; environment variables do not.
_LENIENT_WORDS = {**_WORDS, "yes": True, "on": True, "no": False, "off": False}


def _show(value: object) -> str:
    """
    Render a rejected value for an error message, quoted like JSON so that
    empty strings and stray blanks are visible.
    """
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _fail(origin: str, key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{origin}: {key}: expected {expected}, got {_show(value)}")


def _coerce(kind: type, value: object, lenient: bool) -> Any:
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
            return _show(value)
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
        return _show(value)
    raise ValueError(value)


@dataclass(frozen=True)
class _Value:
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
class _Gathered:
    """
    One role's configuration, read from every source.

    @ivar values: every scalar setting's L{_Value}, by key.
    @ivar file: the role's section of the configuration, flattened to keys.
    @ivar label: the configuration source as named in messages.
    @ivar source: the configuration source as given.
    """

    values: dict[str, _Value]
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
) -> _Value:
    """
    Take a setting from the first source that has it (command line,
    environment, -D, file), then convert and check it.
    """
    if setting.option is not None and options.get(setting.option) is not None:
        found = _Value(options[setting.option], f"option --{setting.option}", direct=True)
    elif setting.env is not None and setting.env in environ:
        found = _Value(environ[setting.env], f"environment variable {setting.env}", direct=True)
    elif setting.key in defines:
        found = _Value(defines[setting.key], "option -D")
    elif setting.key in file:
        found = _Value(file[setting.key], label)
    else:
        return _Value(setting.default, "default")
    try:
        value = _coerce(setting.kind, found.value, lenient=not found.direct)
        if setting.rule is not None:
            value = setting.rule.apply(value)
    except (ValueError, OverflowError) as e:
        raise _fail(found.origin, setting.key, setting.expects, found.value) from e
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


def _asList(value: object, origin: str, key: str) -> list[Any]:
    """
    A list-valued key's entries.  Java properties can only spell a list as an
    object with keys 0, 1, ..., which prometheus-proxy also accepts.
    """
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping) and value and all(str(k).isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    raise _fail(origin, key, "a list", value)


def _defines(options: Mapping[str, object]) -> dict[str, str]:
    """
    The C{-Dkey=value} overrides, later ones winning, each read as a Java
    properties line with a value's surrounding double quotes removed.
    """
    defines: dict[str, str] = {}
    for define in cast("Sequence[str]", options.get("defines", ())):
        key, value = _propertiesLine(define)
        if not key:
            raise ConfigError(f"option -D: expected key=value, got {_show(define)}")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        defines[key] = value
    return defines


def _configSource(role: Role, options: Mapping[str, object], environ: Mapping[str, str]) -> str:
    return str(options.get("config") or environ.get(role.configEnv) or "")


def _checkKnown(key: str, known: Iterable[str], origin: str, prefix: str = "") -> None:
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


def _gather(
    role: Role,
    options: Mapping[str, object],
    environ: Mapping[str, str],
    fetch: Callable[[str], bytes],
    warn: Callable[[str], None],
) -> _Gathered:
    """
    Read a role's configuration source and resolve every scalar setting,
    refusing unknown keys and warning about those that have no effect.
    """
    source = _configSource(role, options, environ)
    root, label = _loadAnySyntax(source, environ, fetch, warn) if source else ({}, "")
    section = root.get(role.section, {})
    if not isinstance(section, Mapping):
        raise _fail(label, role.section, "an object", section)
    known = role.known
    file = dict(_flatten(section, role.section, known))
    defines = _defines(options)

    for key in file:
        _checkKnown(key, known, label)
    for key in defines:
        if key in role.lists:
            raise ConfigError(f"option -D: {key}: lists cannot be set with -D")
        if key.startswith(f"{role.section}."):
            _checkKnown(key, known, "option -D")

    values = {}
    for setting in role.settings:
        value = values[setting.key] = _resolve(setting, options, environ, defines, file, label)
        if not setting.effective and value.value != setting.default:
            warn(f"configuration key {setting.key} ({value.origin}) has no effect in promtwist")
    return _Gathered(values, file, label, source)


# ---------------------------------------------------------------------------
# Building the settings objects.


def _fieldValues(role: Role, gathered: _Gathered) -> dict[str, Any]:
    return {s.field: gathered.values[s.key].value for s in role.settings if s.field}


def _checkKeyPair(gathered: _Gathered, tls: str) -> None:
    """
    A certificate without its key (or the reverse) is a mistake to report
    now, not when the first connection fails.

    @param tls: the section holding the pair, e.g. C{proxy.tls}.
    """
    cert = f"{tls}.certChainFilePath"
    key = f"{tls}.privateKeyFilePath"
    for given, missing in ((cert, key), (key, cert)):
        value = gathered.values[given]
        if value.value and not gathered.values[missing].value:
            raise ConfigError(f"{value.origin}: {given} is set, so {missing} must be set too")


def _endpoint(text: str, defaultPort: int) -> ProxyEndpoint:
    """
    Parse C{host[:port]}, C{[ipv6][:port]} or a bare IPv6 address, with an
    optional C{http://} or C{https://} in front.

    @raise ValueError: if C{text} is not such an address.
    """
    spec = text.strip()
    scheme, sep, rest = spec.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        spec = rest
    spec = spec.removesuffix("/")
    port: str | None = None
    if spec.startswith("["):
        host, bracket, after = spec[1:].partition("]")
        if not bracket or after[:1] not in ("", ":"):
            raise ValueError(text)
        port = after[1:] if after else None
    elif spec.count(":") == 1:
        host, _, port = spec.partition(":")
    else:
        host = spec
    if not re.fullmatch(r"[\w.%:-]+", host) or (port is not None and not port.isdigit()):
        raise ValueError(text)
    return ProxyEndpoint(host, PORT.apply(int(port) if port is not None else defaultPort))


_ENDPOINT = "host[:port] with a port in 1..65535"


def _proxyEndpoints(gathered: _Gathered) -> tuple[ProxyEndpoint, ...]:
    """
    The proxies to dial, in failover order.

    C{--proxy} or C{$PROXY_HOSTNAME} (a comma-separated list) wins; then
    C{agent.proxy.endpoints}; then C{agent.proxy.hostname}.  Entries without a
    port use C{agent.proxy.port}.
    """
    port = gathered.values["agent.proxy.port"].value
    hostname = gathered.values["agent.proxy.hostname"]
    entries: list[tuple[object, str, str]] = []
    listed = gathered.file.get("agent.proxy.endpoints")
    if not hostname.direct and listed:
        key = "agent.proxy.endpoints"
        entries = [
            (entry, gathered.label, f"{key}[{i}]")
            for i, entry in enumerate(_asList(listed, gathered.label, key))
        ]
    if not entries:
        entries = [
            (part, hostname.origin, "agent.proxy.hostname") for part in hostname.value.split(",")
        ]
    endpoints = []
    for entry, origin, key in entries:
        try:
            endpoints.append(_endpoint(_coerce(str, entry, lenient=True), port))
        except ValueError as e:
            raise _fail(origin, key, _ENDPOINT, entry) from e
    return tuple(endpoints)


def _targetURL(value: str) -> str:
    parts = urlsplit(value)
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in value)
        # .port itself raises ValueError when the port is not a number.
        or parts.port == 0
    ):
        raise ValueError(value)
    return value


def _labels(value: object) -> dict[str, str]:
    """
    An entry's labels, given as JSON in a string (prometheus-proxy's form) or
    as a HOCON object, with every value made a string: http_sd accepts
    nothing else.
    """
    labels = json.loads(value) if isinstance(value, str) else value
    if isinstance(labels, Mapping):
        return {
            str(name): item if isinstance(item, str) else _show(item)
            for name, item in labels.items()
        }
    raise ValueError(value)


_PATH_CONFIG_KEYS = ("name", "path", "url", "labels")


def _pathConfig(
    entry: object, where: str, label: str, lenient: Callable[[str], None] | None = None
) -> PathConfig:
    """
    One C{agent.pathConfigs} entry, checked.

    @param where: the entry's key, e.g. C{agent.pathConfigs[0]}, for messages.
    @param lenient: given, the entry is read as prometheus-proxy reads it where
        that is more forgiving: labels that are not a JSON object are dropped
        and a URL without a scheme gets C{http://}; each is told to this
        callable in one line.  Without it, both are errors.
    """
    if not isinstance(entry, Mapping):
        raise _fail(label, where, "an object with path and url", entry)
    for name in entry:
        _checkKnown(str(name), _PATH_CONFIG_KEYS, label, f"{where}.")

    def check(name: str, parse: Callable[[Any], Any], expected: str) -> Any:
        if name not in entry:
            raise ConfigError(f"{label}: {where}: {name} is required")
        try:
            return parse(entry[name])
        except ValueError as e:
            raise _fail(label, f"{where}.{name}", expected, entry[name]) from e

    def string(value: object) -> str:
        return cast(str, _coerce(str, value, lenient=True))

    def targetURL(value: object) -> str:
        text = string(value)
        if lenient is not None and "://" not in text and text.strip():
            lenient(
                f"{label}: {where}.url: {_show(text)} has no scheme;"
                " prepending http://, as prometheus-proxy does"
            )
            text = f"http://{text}"
        return _targetURL(text)

    def labelsOf(value: object) -> dict[str, str]:
        try:
            return _labels(value)
        except ValueError:
            if lenient is None:
                raise
            lenient(
                f"{label}: {where}.labels: {_show(value)} is not a JSON object;"
                " serving the path without labels, as prometheus-proxy does"
            )
            return {}

    path = check("path", lambda v: _urlPath(string(v)), URL_PATH.expects)
    url = check("url", targetURL, "an http:// or https:// URL with a host")
    labels = check("labels", labelsOf, "a JSON object") if "labels" in entry else {}
    name = check("name", string, "a string").strip() if "name" in entry else ""
    return PathConfig(name=name or path, path=path, url=url, labels=labels)


def _pathConfigs(gathered: _Gathered, warn: Callable[[str], None]) -> tuple[PathConfig, ...]:
    """
    The agent's static paths, in order.  A path listed twice is served by
    its last entry, as prometheus-proxy's path map keeps the last one put,
    with a warning naming both entries.
    """
    key = "agent.pathConfigs"
    entries = _asList(gathered.file.get(key, []), gathered.label, key)
    found: dict[str, tuple[str, PathConfig]] = {}
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        config = _pathConfig(entry, where, gathered.label, warn)
        if config.path in found:
            warn(
                f"{gathered.label}: {where}.path: duplicate path {_show(config.path)};"
                f" this entry replaces {found[config.path][0]}, as in prometheus-proxy"
            )
        # Re-inserting keeps the order of the last occurrences.
        found.pop(config.path, None)
        found[config.path] = (where, config)
    return tuple(config for _, config in found.values())


LEGACY_TOKEN_IDENTITY = "legacy-agent-token"
_IDENTITY_KEYS = ("name", "token", "paths", "perAgent")
_GLOB = re.compile(r"[^#%\s]+\Z")


def _identities(gathered: _Gathered, legacyToken: str) -> tuple[Identity, ...]:
    """
    C{proxy.auth}, checked: names and tokens unique (the legacy
    C{proxy.agentToken} included), every glob a plain path pattern. A token
    may be left out only when agents present client certificates, whose
    subject then names the identity.
    """
    key = "proxy.auth"
    label = gathered.label
    certificates = bool(gathered.values["proxy.tls.trustCertCollectionFilePath"].value)
    identities: list[Identity] = []
    names: dict[str, str] = {}
    tokens: dict[str, str] = {LEGACY_TOKEN_IDENTITY: legacyToken} if legacyToken else {}
    for index, entry in enumerate(_asList(gathered.file.get(key, []), label, key)):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise _fail(label, where, "an object with name, token and paths", entry)
        for name in entry:
            _checkKnown(str(name), _IDENTITY_KEYS, label, f"{where}.")
        name = str(_coerce(str, entry.get("name", ""), lenient=True)).strip()
        token = str(_coerce(str, entry.get("token", ""), lenient=True))
        if not name:
            raise ConfigError(f"{label}: {where}.name is required")
        if name in names or name == LEGACY_TOKEN_IDENTITY:
            raise ConfigError(
                f"{label}: {where}.name: duplicate identity name {_show(name)}"
                f" (also {names.get(name, 'the legacy proxy.agentToken identity')})"
            )
        if not token and not certificates:
            raise ConfigError(
                f"{label}: {where}.token is required"
                " (or client certificates, with proxy.tls.trustCertCollectionFilePath)"
            )
        for other, otherToken in tokens.items():
            if token and otherToken == token:
                raise ConfigError(
                    f"{label}: {where}.token: the same token as identity {_show(other)};"
                    " every identity needs its own token"
                )
        paths = tuple(
            str(_coerce(str, glob, lenient=True)).lstrip("/")
            for glob in _asList(entry.get("paths", []), label, f"{where}.paths")
        )
        for glob in paths:
            if not _GLOB.match(glob):
                raise _fail(label, f"{where}.paths", "a path glob such as team_a_*", glob)
        try:
            perAgent = bool(_coerce(bool, entry.get("perAgent", False), lenient=True))
        except ValueError:
            raise _fail(
                label, f"{where}.perAgent", "true or false", entry.get("perAgent")
            ) from None
        names[name] = where
        tokens[name] = token
        identities.append(Identity(name, token, paths, perAgent))
    return tuple(identities)


def _networks(gathered: _Gathered, key: str) -> tuple[str, ...]:
    """
    A list of networks (C{10.0.0.0/8}, C{::1}, C{192.0.2.7}), normalised,
    and C{unix} for the clients of a unix-socket listener.
    """
    networks = []
    for index, entry in enumerate(_asList(gathered.file.get(key, []), gathered.label, key)):
        if str(entry).strip() == UNIX_PEERS:
            networks.append(UNIX_PEERS)
            continue
        try:
            networks.append(str(ipaddress.ip_network(str(entry).strip(), strict=False)))
        except ValueError as e:
            raise _fail(
                gathered.label,
                f"{key}[{index}]",
                "an IP network such as 10.0.0.0/8, or unix",
                entry,
            ) from e
    return tuple(networks)


_FILTER_KEYS = ("path", "metricNameAllow", "metricNameDeny")


def _filters(gathered: _Gathered) -> tuple[MetricFilter, ...]:
    """
    C{agent.filters}: every field present (prometheus-proxy requires all
    three), every pattern a valid regular expression.
    """
    key = "agent.filters"
    label = gathered.label
    filters = []
    for index, entry in enumerate(_asList(gathered.file.get(key, []), label, key)):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise _fail(
                label, where, "an object with path, metricNameAllow and metricNameDeny", entry
            )
        for name in entry:
            _checkKnown(str(name), _FILTER_KEYS, label, f"{where}.")
        for name in _FILTER_KEYS:
            if name not in entry:
                raise ConfigError(f"{label}: {where}: {name} is required")
        patterns: dict[str, tuple[str, ...]] = {}
        for name in _FILTER_KEYS[1:]:
            patterns[name] = tuple(
                str(_coerce(str, item, lenient=True))
                for item in _asList(entry[name], label, f"{where}.{name}")
            )
            for pattern in patterns[name]:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise _fail(label, f"{where}.{name}", "regular expressions", pattern) from e
        path = str(_coerce(str, entry["path"], lenient=True)).strip().removeprefix("/")
        filters.append(MetricFilter(path, patterns["metricNameAllow"], patterns["metricNameDeny"]))
    return tuple(filters)


_log = Logger(namespace="promtwist.config")


def _logWarning(notice: str) -> None:
    # Not "message" or "warning": legacy observers give those keys a meaning.
    _log.warn("{notice}", notice=notice)


def warningsOnce(warn: Callable[[str], None] = _logWarning) -> Callable[[str], None]:
    """
    A loader's C{warn} that passes each distinct line on only the first time:
    a process gives the same one to its startup load and to every C{SIGHUP}
    reload, so that re-reading an unchanged file does not repeat what was
    already said, while whatever a changed file brings is still said.
    """
    said: set[str] = set()

    def once(notice: str) -> None:
        if notice not in said:
            said.add(notice)
            warn(notice)

    return once


def loadProxySettings(
    options: Mapping[str, object],
    environ: Mapping[str, str],
    *,
    fetch: Callable[[str], bytes] = fetchURL,
    warn: Callable[[str], None] = _logWarning,
) -> ProxySettings:
    """
    Resolve the proxy's settings from every source.

    @param options: command-line values the user actually gave, by canonical
        long option name (as in L{PROXY}'s table; L{None} counts as not
        given), plus C{config} (a file path or URL) and C{defines} (a list of
        C{-D} C{key=value} strings).
    @param environ: the environment variables.
    @param fetch: reads a configuration URL.
    @param warn: receives one line per key that has no effect.
    @raise ConfigError: for any invalid source or value.
    """
    gathered = _gather(PROXY, options, environ, fetch, warn)
    _checkKeyPair(gathered, "proxy.tls")
    _checkKeyPair(gathered, "proxy.http.tls")
    values = _fieldValues(PROXY, gathered)
    if bool(values["http_basic_auth_username"]) != bool(values["http_basic_auth_password"]):
        raise ConfigError(
            f"{gathered.label}: proxy.http.basicAuth needs both username and password"
        )
    return ProxySettings(
        identities=_identities(gathered, values["agent_token"]),
        http_allowed_networks=_networks(gathered, "proxy.http.allowedNetworks"),
        admin_allowed_networks=_networks(gathered, "proxy.admin.allowedNetworks"),
        **values,
    )


def _clientTimeout(gathered: _Gathered, clientTimeout: float) -> float:
    """
    C{agent.http.clientTimeoutSecs}, or as prometheus-proxy the deprecated
    C{agent.internal.cioTimeoutSecs} when only that one was changed from
    the default of 90.
    """
    cio = gathered.values["agent.internal.cioTimeoutSecs"].value
    if cio != 90 and clientTimeout == 90:
        return float(cio)
    return clientTimeout


def loadAgentSettings(
    options: Mapping[str, object],
    environ: Mapping[str, str],
    *,
    fetch: Callable[[str], bytes] = fetchURL,
    warn: Callable[[str], None] = _logWarning,
) -> AgentSettings:
    """
    Resolve the agent's settings from every source; like
    L{loadProxySettings}, except that the agent cannot run without a
    configuration source, since that is where its paths are.
    """
    if not _configSource(AGENT, options, environ):
        raise ConfigError(
            f"A configuration file or url must be specified with --config or ${AGENT.configEnv}"
        )
    gathered = _gather(AGENT, options, environ, fetch, warn)
    _checkKeyPair(gathered, "agent.tls")
    values = _fieldValues(AGENT, gathered)
    values["name"] = values["name"].strip() or f"Unnamed-{socket.gethostname()}"
    values["client_timeout_secs"] = _clientTimeout(gathered, values["client_timeout_secs"])
    if values["discovery_enabled"] and not values["discovery_file_path"]:
        raise ConfigError(
            f"{gathered.label}: agent.discovery.file.path is required when"
            " agent.discovery.enabled is true"
        )
    return AgentSettings(
        config_source=gathered.source,
        proxy_endpoints=_proxyEndpoints(gathered),
        path_configs=_pathConfigs(gathered, warn),
        path_configs_listed="agent.pathConfigs" in gathered.file,
        filters=_filters(gathered),
        admin_allowed_networks=_networks(gathered, "agent.admin.allowedNetworks"),
        **values,
    )
