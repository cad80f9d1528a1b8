"""
C{twistd promproxy-proxy}: options and service.
"""

from __future__ import annotations

from twisted.application.service import IService

from promtwist.cli import ProxyOptions as Options
from promtwist.logs import applyLogLevel
from promtwist.proxy.server import ProxyService

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    applyLogLevel(options.settings.log_level)
    return ProxyService(options.settings)
