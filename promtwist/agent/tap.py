"""
C{twistd promproxy-agent}: options and service.
"""

from __future__ import annotations

from twisted.application.service import IService

from promtwist.agent.service import AgentService
from promtwist.cli import AgentOptions as Options
from promtwist.logs import applyLogLevel

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    applyLogLevel(options.settings.log_level)
    return AgentService(options.settings)
