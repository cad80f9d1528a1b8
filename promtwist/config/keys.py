# -*- test-case-name: promtwist.test.test_config,promtwist.test.test_cli -*-
"""
The table of known keys: L{PROXY} and L{AGENT}, one L{Role} per process.

One table per role drives everything: reading the file, the environment and
-D overrides, generating the command-line options (L{promtwist.cli}) and their
help, validation, the refusal of unknown keys and the warnings about
unsupported ones.  The keys written out here are the ones promtwist acts on;
those prometheus-proxy knows but promtwist does not act on come from
L{promtwist.config.compat}, so that existing files load, with a "has no
effect" warning for each one set.

A key that feeds a settings field takes its default from the field
(L{promtwist.config.settings}): each default is written down once.
"""

from __future__ import annotations

from dataclasses import fields, replace

from promtwist.config.compat import AGENT_COMPAT, PROXY_COMPAT
from promtwist.config.schema import (
    ENDPOINT_PATH,
    FRAME_SIZE,
    IDLE_TIMEOUT,
    LISTEN,
    LOG_LEVEL,
    NON_NEGATIVE,
    PORT,
    POSITIVE,
    TARGET_PREFIX,
    TRANSPORT,
    URL_PATH,
    Role,
    Setting,
    bounded,
)
from promtwist.config.settings import AgentSettings, ProxySettings


def _withDefaults(settingsClass: type, settings: tuple[Setting, ...]) -> tuple[Setting, ...]:
    """
    Take the default of every field-backed setting from the settings
    dataclass, so that each default is written down exactly once.
    """
    defaults = {f.name: f.default for f in fields(settingsClass)}
    for s in settings:
        if s.field and s.default is not None:
            raise TypeError(f"{s.key}: the default of a field's key is the field's own")
    return tuple(replace(s, default=defaults[s.field]) if s.field else s for s in settings)


def _common(section: str, logLevelEnv: str) -> tuple[Setting, ...]:
    """
    The keys both processes have, under their own section, with the options
    and environment variables prometheus-proxy shares between them.
    """
    s = section
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
            f"{s}.admin.enabled",
            bool,
            field="admin_enabled",
            env="ADMIN_ENABLED",
            options=("admin",),
            short="r",
            help="Serve the admin endpoints",
        ),
        Setting(
            f"{s}.admin.port",
            int,
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
            field="admin_debug_enabled",
            env="DEBUG_ENABLED",
            options=("debug",),
            short="b",
            help="Serve the /debug admin endpoint",
        ),
        Setting(
            f"{s}.metrics.enabled",
            bool,
            field="metrics_enabled",
            env="METRICS_ENABLED",
            options=("metrics",),
            short="e",
            help="Serve the process's own metrics",
        ),
        Setting(
            f"{s}.metrics.port",
            int,
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
        Setting(f"{s}.internal.maxFrameBytes", int, field="max_frame_bytes", rule=FRAME_SIZE),
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
                "proxy.agent.grpcEnabled",
                bool,
                field="agent_grpc_enabled",
                help="Serve prometheus-proxy agents (gRPC) on the agent port too",
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
                "proxy.admin.recentRequestsQueueSize",
                int,
                field="admin_recent_requests_queue_size",
                rule=NON_NEGATIVE,
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
            Setting(
                "proxy.internal.maxChunkedBufferMBytes",
                int,
                field="max_chunked_buffer_mbytes",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxGrpcMessageBufferMBytes",
                int,
                field="max_grpc_message_buffer_mbytes",
                rule=POSITIVE,
            ),
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
                "proxy.internal.maxGrpcConnections",
                int,
                field="max_grpc_connections",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxUnauthenticatedGrpcConnections",
                int,
                field="max_unauthenticated_grpc_connections",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.internal.maxUnauthenticatedGrpcConnectionsPerAddress",
                int,
                field="max_unauthenticated_grpc_connections_per_address",
                rule=POSITIVE,
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
                rule=bounded("{noun} >= 1024", lambda v: v >= 1024),
            ),
            Setting(
                "proxy.http.maxConnections",
                int,
                field="http_max_connections",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.http.maxConnectionsPerAddress",
                int,
                field="http_max_connections_per_address",
                rule=POSITIVE,
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
            Setting(
                "proxy.pushprox.pushBudgetMBytes",
                int,
                field="pushprox_push_budget_mbytes",
                rule=POSITIVE,
            ),
            Setting(
                "proxy.pushprox.selfScrapeEnabled",
                bool,
                field="pushprox_self_scrape_enabled",
            ),
            *_common("proxy", "PROXY_LOG_LEVEL"),
            *PROXY_COMPAT,
        ),
    ),
    lists={
        "proxy.auth": "identities",
        "proxy.http.allowedNetworks": "http_allowed_networks",
        "proxy.admin.allowedNetworks": "admin_allowed_networks",
        "proxy.pushprox.allowedNetworks": "pushprox_allowed_networks",
    },
    removed=(
        "proxy.http.maxThreads",
        "proxy.http.minThreads",
        "proxy.internal.scrapeRequestCheckMillis",
    ),
    # promtwist.proxy.server's reload checks agents against new identities.
    live=frozenset({"identities", "agent_token"}),
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
            # promtwist's own: TLS with no agent.tls file, trusting the
            # system's CAs (prometheus-proxy's issue #106).
            Setting("agent.tls.enabled", bool, field="tls_enabled"),
            # promtwist's own: the link inside one gRPC call, for L7 front
            # ends (docs/grpc-link.md).
            Setting(
                "agent.transport",
                str,
                field="transport",
                options=("transport",),
                rule=TRANSPORT,
                help="How the link reaches the proxy: native (its own framing on TCP/TLS)"
                " or grpc (the same inside one gRPC call, across L7 gRPC front ends)",
            ),
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
            Setting(
                "agent.internal.heartbeatMaxInactivitySecs",
                float,
                field="heartbeat_max_inactivity_secs",
                rule=POSITIVE,
            ),
            *_common("agent", "AGENT_LOG_LEVEL"),
            *AGENT_COMPAT,
        ),
    ),
    lists={
        "agent.pathConfigs": "path_configs",
        "agent.targets": "targets",
        "agent.filters": "filters",
        "agent.proxy.endpoints": "proxy_endpoints",
        "agent.admin.allowedNetworks": "admin_allowed_networks",
    },
    named={
        "config_source": "--config",
        "path_configs_listed": "agent.pathConfigs",
        "proxy_endpoints": "agent.proxy.endpoints (or hostname/port, --proxy)",
    },
    # promtwist.agent.service's reload registers the new paths and targets.
    live=frozenset({"path_configs", "path_configs_listed", "targets", "fqdn"}),
)
