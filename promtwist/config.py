"""
Configuration: HOCON files, environment variables and command-line options
turned into frozen, validated settings objects.

Precedence per setting is prometheus-proxy's: command-line option > environment
variable > config file (including C{-Dkey=value} overrides) > built-in default.
Everything is read and checked once, before the reactor runs; nothing here is
consulted on the scrape path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

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
class ProxySettings:
    """
    Everything the proxy process needs, resolved from all sources.
    """

    http_port: int = 8080
    agent_port: int = 50051
    agent_token: str = ""
    log_level: str = ""
    sd_enabled: bool = False
    sd_path: str = "discovery"
    # Normalised to "host:port"; "" means: derive it from the Host header of
    # the discovery request, which arrives on the scrape port.
    sd_target_prefix: str = ""
    http_idle_timeout_secs: float = 45.0
    request_logging_enabled: bool = True
    scrape_request_timeout_secs: float = 90.0
    stale_agent_check_enabled: bool = True
    max_agent_inactivity_secs: float = 60.0
    stale_agent_check_pause_secs: float = 10.0
    max_unzipped_content_size_mbytes: int = 10
    # promtwist's own keys, under proxy.internal.
    max_frame_bytes: int = MiB
    heartbeat_period_secs: float = 5.0
    handshake_timeout_secs: float = 10.0
    # TLS on the agent link (issue 3); carried so they can be refused honestly.
    tls_cert_chain_file_path: str = ""
    tls_private_key_file_path: str = ""
    tls_trust_cert_collection_file_path: str = ""


@dataclass(frozen=True)
class AgentSettings:
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
    log_level: str = ""
    # promtwist's own key, under agent.internal.
    max_frame_bytes: int = MiB
    # TLS on the agent link (issue 3); carried so they can be refused honestly.
    tls_cert_chain_file_path: str = ""
    tls_private_key_file_path: str = ""
    tls_trust_cert_collection_file_path: str = ""
    tls_override_authority: str = ""
    trust_all_x509_certificates: bool = False
    https_trust_store_path: str = ""
