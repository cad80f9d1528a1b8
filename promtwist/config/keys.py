# -*- test-case-name: promtwist.test.test_config,promtwist.test.test_cli -*-
"""
The table of known keys.

One table per role drives everything: reading the file, the environment and
-D overrides, generating the command-line options (L{promtwist.cli}) and their
help, validation, the refusal of unknown keys and the warnings about
unsupported ones.  Keys prometheus-proxy knows but promtwist does not act on
are listed too (with no field), so that existing files load, with a "has no
effect" warning for each one set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import SplitResult, urlsplit

from promtwist.config.settings import AgentSettings, ProxyEndpoint, ProxySettings
from promtwist.endpoints import KINDS, kindOf


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


def urlPath(value: str) -> str:
    # Paths are compared without their leading "/", as prometheus-proxy does.
    path = value.removeprefix("/")
    if not path or any(c in "?#" or c.isspace() for c in path):
        raise ValueError(value)
    return path


def _endpointPath(value: str) -> str:
    # An empty path turns the endpoint off.
    return urlPath(value) if value.strip() else ""


ENDPOINT_PATH = Rule("a URL path without '?', '#' or whitespace, or empty", _endpointPath)

URL_PATH = Rule("a non-empty URL path without '?', '#' or whitespace", urlPath)


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
            Setting(
                "proxy.pushprox.enabled",
                bool,
                field="pushprox_enabled",
            ),
            Setting(
                "proxy.pushprox.pollHoldSecs",
                float,
                field="pushprox_poll_hold_secs",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.pushprox.clientGraceSecs",
                float,
                field="pushprox_client_grace_secs",
                rule=POSITIVE,
            ),
            *_common("proxy", 8092, 8082, "prometheus-proxy", "PROXY_LOG_LEVEL"),
        ),
    ),
    lists=(
        "proxy.auth",
        "proxy.http.allowedNetworks",
        "proxy.admin.allowedNetworks",
        "proxy.pushprox.allowedNetworks",
    ),
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
            # agent.proxy.endpoints; see readProxyEndpoints.
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
                "agent.fqdn",
                str,
                field="fqdn",
                help="Host of agent.targets entries that name none (empty: this host's FQDN)",
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
        "agent.targets",
        "agent.filters",
        "agent.proxy.endpoints",
        "agent.admin.allowedNetworks",
    ),
)
