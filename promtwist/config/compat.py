# -*- test-case-name: promtwist.test.test_config,promtwist.test.test_cli -*-
"""
The keys prometheus-proxy reads that promtwist accepts without acting on
them: gRPC tuning, zipkin, the dashboard, the HTTP client cache, the JVM's
metric exports.

They are known so that an existing file, environment or command line keeps
loading; each one set to something other than its default is told in one
"has no effect" warning, and C{--help} says so next to its option. Their
type, default, rule, environment variable and options are prometheus-proxy's
(reference/prometheus-proxy.md §B), so that a value it would refuse is
refused here too.

One row per key: the key under its section, the default (whose type is the
key's), then optionally the environment variable, the options
(space-separated, the first canonical), the rule and the help line.
"""

from __future__ import annotations

from promtwist.config.schema import (
    MINUS_ONE_OR_POSITIVE,
    NON_NEGATIVE,
    PORT,
    POSITIVE,
    Rule,
    Setting,
)

_Row = tuple[str, object] | tuple[str, object, str | None, str, Rule | None, str]

# A table reads best one row a line, however wide (pyproject.toml lets this
# file's lines be long).
# fmt: off

# In both sections (zipkin.serviceName, whose default is the process's name,
# is in each section's own rows).
_BOTH: tuple[_Row, ...] = (
    ("transportFilterDisabled", False, "TRANSPORT_FILTER_DISABLED", "tf_disabled tf-disabled", None, "prometheus-proxy's nginx mode"),
    ("metrics.standardExportsEnabled", False),
    ("metrics.memoryPoolsExportsEnabled", False),
    ("metrics.garbageCollectorExportsEnabled", False),
    ("metrics.threadExportsEnabled", False),
    ("metrics.classLoadingExportsEnabled", False),
    ("metrics.versionInfoExportsEnabled", False),
    ("metrics.grpc.metricsEnabled", False),
    ("metrics.grpc.allMetricsReported", False),
    ("grpc.keepAliveTimeSecs", -1, "KEEPALIVE_TIME_SECS", "keepalive_time_secs", MINUS_ONE_OR_POSITIVE, "gRPC keepalive interval"),
    ("grpc.keepAliveTimeoutSecs", -1, "KEEPALIVE_TIMEOUT_SECS", "keepalive_timeout_secs", MINUS_ONE_OR_POSITIVE, "gRPC keepalive timeout"),
    ("internal.zipkin.enabled", False),
    ("internal.zipkin.hostname", "localhost"),
    ("internal.zipkin.port", 9411, None, "", PORT, ""),
    ("internal.zipkin.path", "api/v2/spans"),
    ("internal.zipkin.grpcReportingEnabled", False),
)

_PROXY: tuple[_Row, ...] = (
    ("reflectionDisabled", False, "REFLECTION_DISABLED", "ref_disabled ref-disabled", None, "Disable gRPC reflection"),
    ("dashboard.enabled", False, "DASHBOARD_ENABLED", "dashboard", None, "Serve the dashboard"),
    ("dashboard.port", 8094, "DASHBOARD_PORT", "dashboard_port", PORT, "Dashboard port"),
    ("dashboard.path", "dashboard", "DASHBOARD_PATH", "dashboard_path", None, "Dashboard base path"),
    ("dashboard.refreshIntervalSecs", 2, None, "", POSITIVE, ""),
    ("dashboard.recentScrapesQueueSize", 200, None, "", NON_NEGATIVE, ""),
    ("grpc.handshakeTimeoutSecs", -1, "HANDSHAKE_TIMEOUT_SECS", "handshake_timeout_secs", MINUS_ONE_OR_POSITIVE, "gRPC handshake timeout, see proxy.internal.handshakeTimeoutSecs"),
    ("grpc.permitKeepAliveWithoutCalls", False, "PERMIT_KEEPALIVE_WITHOUT_CALLS", "permit_keepalive_without_calls", None, "gRPC keepalive policy"),
    ("grpc.permitKeepAliveTimeSecs", -1, "PERMIT_KEEPALIVE_TIME_SECS", "permit_keepalive_time_secs", MINUS_ONE_OR_POSITIVE, "gRPC keepalive policy"),
    ("grpc.maxConnectionIdleSecs", -1, "MAX_CONNECTION_IDLE_SECS", "max_connection_idle_secs", MINUS_ONE_OR_POSITIVE, "gRPC connection limit"),
    ("grpc.maxConnectionAgeSecs", -1, "MAX_CONNECTION_AGE_SECS", "max_connection_age_secs", MINUS_ONE_OR_POSITIVE, "gRPC connection limit"),
    ("grpc.maxConnectionAgeGraceSecs", -1, "MAX_CONNECTION_AGE_GRACE_SECS", "max_connection_age_grace_secs", MINUS_ONE_OR_POSITIVE, "gRPC connection limit"),
    ("internal.chunkContextMapUnhealthySize", 25, None, "", POSITIVE, ""),
    ("internal.maxZippedContentSizeMBytes", 5, None, "", NON_NEGATIVE, ""),
    ("internal.blitz.enabled", False),
    ("internal.blitz.path", "mu-dd4bffbb-ff2e9926-5a80952c-1c6cb64d.txt"),
    ("internal.zipkin.serviceName", "prometheus-proxy"),
)

_AGENT: tuple[_Row, ...] = (
    ("http.clientCache.maxSize", 100, "MAX_CLIENT_CACHE_SIZE", "max_cache_size", POSITIVE, "HTTP client cache size"),
    ("http.clientCache.maxAgeMins", 30, "MAX_CLIENT_CACHE_AGE_MINS", "max_cache_age_mins", POSITIVE, "HTTP client cache age"),
    ("http.clientCache.maxIdleMins", 10, "MAX_CLIENT_CACHE_IDLE_MINS", "max_cache_idle_mins", POSITIVE, "HTTP client cache idle time"),
    ("http.clientCache.cleanupIntervalMins", 5, "CLIENT_CACHE_CLEANUP_INTERVAL_MINS", "cache_cleanup_interval_mins", POSITIVE, "HTTP client cache cleanup"),
    ("grpc.keepAliveWithoutCalls", False, "KEEPALIVE_WITHOUT_CALLS", "keepalive_without_calls", None, "gRPC keepalive policy"),
    ("grpc.unaryDeadlineSecs", 30, "UNARY_DEADLINE_SECS", "unary_deadline_secs", NON_NEGATIVE, "gRPC call deadline"),
    ("internal.heartbeatCheckPauseMillis", 500, None, "", POSITIVE, ""),
    ("internal.zipkin.serviceName", "prometheus-agent"),
)
# fmt: on


def _setting(section: str, row: _Row) -> Setting:
    if len(row) == 2:
        (key, default), env, options, rule, help = row, None, "", None, ""
    else:
        key, default, env, options, rule, help = row
    return Setting(
        f"{section}.{key}",
        type(default),
        default,
        env=env,
        options=tuple(options.split()),
        rule=rule,
        help=help,
    )


PROXY_COMPAT = tuple(_setting("proxy", row) for row in _BOTH + _PROXY)
AGENT_COMPAT = tuple(_setting("agent", row) for row in _BOTH + _AGENT)
