"""
C{twistd promproxy-agent}: options and service.
"""

from __future__ import annotations

import os
from functools import partial

from twisted.application.service import IService

from promtwist.agent.build import buildAgent
from promtwist.cli import AgentOptions as Options
from promtwist.config.load import loadAgentSettings
from promtwist.logs import applyLogLevel
from promtwist.signals import exitNormallyOnShutdown
from promtwist.startup import reportStartupErrors

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    applyLogLevel(options.settings.log_level)
    reportStartupErrors()
    # SIGHUP re-reads the configuration with the same command-line values
    # and environment as at startup, so their precedence over the file holds.
    environ = dict(os.environ if options._environ is None else options._environ)
    service = buildAgent(
        options.settings,
        loadSettings=partial(loadAgentSettings, options.given(), environ, warn=options.warn),
        environ=environ,
    )
    exitNormallyOnShutdown(service.clock)
    # Before twistd daemonises, while the error can still reach the terminal.
    for listener in service.listeners:
        listener.checkAvailable()
    return service
