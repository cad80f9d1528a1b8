# -*- test-case-name: promtwist.test.test_config -*-
"""
The two loaders, L{loadProxySettings} and L{loadAgentSettings}: every source
read, every key resolved, the cross-key checks made, and one frozen settings
object built.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from twisted.logger import Logger

from promtwist.config.keys import AGENT, PROXY
from promtwist.config.records import (
    readFilters,
    readIdentities,
    readNetworks,
    readPathConfigs,
    readProxyEndpoints,
    readTargets,
)
from promtwist.config.resolve import Gathered, configSource, gather
from promtwist.config.schema import Role
from promtwist.config.settings import AgentSettings, ConfigError, ProxySettings
from promtwist.config.sources import fetchURL


def _fieldValues(role: Role, gathered: Gathered) -> dict[str, Any]:
    return {s.field: gathered.values[s.key].value for s in role.settings if s.field}


def _checkKeyPair(gathered: Gathered, tls: str) -> None:
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
    gathered = gather(PROXY, options, environ, fetch, warn)
    _checkKeyPair(gathered, "proxy.tls")
    _checkKeyPair(gathered, "proxy.http.tls")
    values = _fieldValues(PROXY, gathered)
    if bool(values["http_basic_auth_username"]) != bool(values["http_basic_auth_password"]):
        raise ConfigError(
            f"{gathered.label}: proxy.http.basicAuth needs both username and password"
        )
    return ProxySettings(
        identities=readIdentities(gathered, values["agent_token"]),
        http_allowed_networks=readNetworks(gathered, "proxy.http.allowedNetworks"),
        admin_allowed_networks=readNetworks(gathered, "proxy.admin.allowedNetworks"),
        pushprox_allowed_networks=readNetworks(gathered, "proxy.pushprox.allowedNetworks"),
        **values,
    )


def _clientTimeout(gathered: Gathered, clientTimeout: float) -> float:
    """
    C{agent.http.clientTimeoutSecs}, or as prometheus-proxy the deprecated
    C{agent.internal.cioTimeoutSecs} when only that one was changed from
    the default of 90.
    """
    cio = gathered.values["agent.internal.cioTimeoutSecs"].value
    if cio != 90 and clientTimeout == 90:
        return float(cio)
    return clientTimeout


@cache
def hostFQDN() -> str:
    """
    This host's fully qualified name, the default of C{agent.fqdn}, as
    pushprox-client's C{--fqdn}: asked of the resolver once, at startup
    (L{promtwist.agent.tap.makeService} asks before the reactor runs), and
    the same answer given to every reload after, so that the targets an
    agent declares keep their names whatever the resolver says later.
    """
    return socket.getfqdn()


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
    if not configSource(AGENT, options, environ):
        raise ConfigError(
            f"A configuration file or url must be specified with --config or ${AGENT.configEnv}"
        )
    gathered = gather(AGENT, options, environ, fetch, warn)
    _checkKeyPair(gathered, "agent.tls")
    values = _fieldValues(AGENT, gathered)
    values["name"] = values["name"].strip() or f"Unnamed-{socket.gethostname()}"
    values["fqdn"] = values["fqdn"].strip() or hostFQDN()
    values["client_timeout_secs"] = _clientTimeout(gathered, values["client_timeout_secs"])
    if values["discovery_enabled"] and not values["discovery_file_path"]:
        raise ConfigError(
            f"{gathered.label}: agent.discovery.file.path is required when"
            " agent.discovery.enabled is true"
        )
    return AgentSettings(
        config_source=gathered.source,
        proxy_endpoints=readProxyEndpoints(gathered),
        path_configs=readPathConfigs(gathered, warn),
        path_configs_listed="agent.pathConfigs" in gathered.file,
        targets=readTargets(gathered, values["fqdn"]),
        filters=readFilters(gathered),
        admin_allowed_networks=readNetworks(gathered, "agent.admin.allowedNetworks"),
        **values,
    )
