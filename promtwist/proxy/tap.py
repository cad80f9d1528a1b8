"""
C{twistd promproxy-proxy}: options and service.
"""

from __future__ import annotations

from twisted.application.service import IService

from promtwist.cli import ProxyOptions as Options
from promtwist.logs import applyLogLevel
from promtwist.proxy.build import buildProxy
from promtwist.signals import exitNormallyOnShutdown
from promtwist.startup import reportStartupErrors

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    applyLogLevel(options.settings.log_level)
    reportStartupErrors()
    service = buildProxy(options.settings, reloadSettings=options.reloadSettings, warn=options.warn)
    exitNormallyOnShutdown(service.reactor)
    # Before twistd daemonises, while the error can still reach the terminal.
    for listener in service.listeners:
        listener.checkAvailable()
    return service
