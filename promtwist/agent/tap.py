"""
C{twistd promproxy-agent}: options and service.
"""

from __future__ import annotations

from twisted.application.service import IService

from promtwist.agent.build import buildAgent
from promtwist.cli import AgentOptions as Options
from promtwist.config.load import hostFQDN
from promtwist.logs import applyLogLevel
from promtwist.signals import exitNormallyOnShutdown
from promtwist.startup import reportStartupErrors

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    applyLogLevel(options.settings.log_level)
    reportStartupErrors()
    # The default agent.fqdn is a resolver lookup: made now, before the
    # reactor runs, so that no reload (in the reactor) has to.
    hostFQDN()
    service = buildAgent(
        options.settings,
        loadSettings=options.reloadSettings,
        warn=options.warn,
        environ=options.environ(),
    )
    exitNormallyOnShutdown(service.clock)
    # Before twistd daemonises, while the error can still reach the terminal.
    for listener in service.listeners:
        listener.checkAvailable()
    return service
