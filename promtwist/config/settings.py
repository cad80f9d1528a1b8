# -*- test-case-name: promtwist.test.test_config -*-
"""
The settings types: what the rest of promtwist receives from the
configuration, frozen and already checked, plus the error every
configuration problem is raised as.

Nothing here reads or parses anything; the defaults written on the fields
are the defaults (L{promtwist.config.keys} takes them from here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    @ivar targets: globs matched against the C{host:port} of a host-routed
        claim (C{host} for a claim on any port). Empty means any target only
        when C{paths} is empty too: an identity limited to some paths claims
        no host.
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
    targets: tuple[str, ...] = ()


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
    # Upstream prometheus-proxy agents (gRPC) on the agent port too.
    agent_grpc_enabled: bool = True
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
    # gRPC agents' chunked results held at once, until their summaries.
    max_chunked_buffer_mbytes: int = 256
    # Unfinished gRPC messages held at once on the agent port, by source.
    max_grpc_message_buffer_mbytes: int = 256
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
    # gRPC connections to the agent port (proxy.agent.grpcEnabled): all of
    # them, and those that have not yet made a call with a valid token or
    # client certificate (closed after handshakeTimeoutSecs), in total and
    # per source address. A front end such as nginx opens one backend
    # connection per concurrent call from its one address: four per agent
    # (its request stream, two result streams, a heartbeat), and a burst of
    # them when it (re)starts.
    max_grpc_connections: int = 4000
    max_unauthenticated_grpc_connections: int = 256
    max_unauthenticated_grpc_connections_per_address: int = 64
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
    # Connections the scrape port holds at once, in total (lowered at start,
    # with a warning, to what the open-file limit leaves beside the agent
    # port's) and per source address (an IPv6 /64 is one): Prometheus'
    # connections, PushProx clients' polls (one each) and pushes. One
    # address may hold half the port, so a NAT hiding 1000 PushProx clients
    # (a poll and a push each) still fits, and so do everyone else's.
    http_max_connections: int = 4096
    http_max_connections_per_address: int = 2048
    # PushProx 0.2 clients on the scrape port (promtwist's own keys,
    # proxy.pushprox.*; see docs/pushprox.md).
    pushprox_enabled: bool = True
    pushprox_poll_hold_secs: float = 50.0
    pushprox_client_grace_secs: float = 15.0
    pushprox_push_budget_mbytes: int = 64
    pushprox_allowed_networks: tuple[str, ...] = ()
    pushprox_self_scrape_enabled: bool = True
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
    # promtwist's own: how the link reaches every proxy endpoint, "native"
    # (its framing on TCP or TLS) or "grpc" (the same framing inside one
    # gRPC call, for L7 front ends: promtwist.agent.grpclink).
    transport: str = "native"
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
    # agent.targets, each a PathConfig whose path is the target's host key
    # (promtwist.hostkeys) and whose url is scheme://host:port/; agent.fqdn
    # is the host of the entries that name none.
    targets: tuple[PathConfig, ...] = ()
    fqdn: str = ""
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

    @property
    def claims(self) -> tuple[PathConfig, ...]:
        """
        What the agent registers: its paths, then its targets.
        """
        return self.path_configs + self.targets


# The identity name under which the legacy C{proxy.agentToken} is checked.
LEGACY_TOKEN_IDENTITY = "legacy-agent-token"
