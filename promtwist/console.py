# -*- test-case-name: promtwist.test.test_console -*-
"""
The console scripts C{promtwist-proxy} and C{promtwist-agent}: what
C{twistd --nodaemon --pidfile= promproxy-proxy ...} does, as one command, for
containers and other supervisors that run the process in the foreground
(upstream's users run C{java -jar prometheus-proxy.jar ...}).

They are twistd itself with those two options fixed, not a runner of their
own: twistd's runner is what installs the reactor's SIGTERM/SIGINT handling
that drains the service, what starts the logging (text on standard output
in the foreground; C{--logger} chooses another observer, e.g.
C{promtwist.logs.jsonLogger}) and what turns a service's end into the exit
status, so the console scripts and the twistd plugins cannot behave
differently.  (L{twisted.application.runner} would have to be given each of
those again, and has no place for twistd plugins' options.)  The plugins'
own L{ServiceMaker}s are handed to twistd directly instead of being looked
up, so the scripts do not depend on Twisted's plugin cache, which a
read-only container image cannot rewrite.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TextIO, TypeVar, cast

from twisted.application.service import ServiceMaker
from twisted.python import usage

# What twistd.ServerOptions is on POSIX (promtwist's only platform), named
# where it is defined: twistd does not re-export it for type checkers.
from twisted.scripts._twistd_unix import ServerOptions
from twisted.scripts.twistd import runApp

from twisted.plugins.promtwist_plugins import promproxyAgent, promproxyProxy

_T = TypeVar("_T")

# The twistd options every console script runs with: in the foreground, with
# no pidfile (the supervisor tracks the process; an image's working directory
# may not be writable).
_FIXED = ("--nodaemon", "--pidfile=")


def _splitLogger(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """
    Separate leading C{--logger FQN} / C{--logger=FQN} options, which are
    twistd's, from the plugin's options that follow.  Only leading ones:
    anywhere else the word could be another option's value.

    @return: (twistd's extra options, the plugin's options).
    """
    twistd: list[str] = []
    rest = list(argv)
    while rest and (rest[0] == "--logger" or rest[0].startswith("--logger=")):
        take = 1 if "=" in rest[0] else 2
        if len(rest) < take:
            raise usage.UsageError("option --logger requires an argument")
        twistd.extend(rest[:take])
        del rest[:take]
    return twistd, rest


def twistdArguments(plugin: str, argv: Sequence[str]) -> list[str]:
    """
    The twistd command line (without the program name) that a console
    script's arguments C{argv} stand for.

    @raise usage.UsageError: a C{--logger} without its value.
    """
    twistd, rest = _splitLogger(argv)
    return [*_FIXED, *twistd, plugin, *rest]


def _serverOptions(name: str, maker: ServiceMaker) -> ServerOptions:
    """
    twistd's options knowing one plugin, C{maker}, under the name C{name}:
    so that C{name --help} says C{Usage: name [options]}.
    """
    plugin = ServiceMaker(maker.name, maker.module, maker.description, name)

    class Options(ServerOptions):
        @staticmethod
        def _getPlugins(interface: type[_T], package: ModuleType | None = None) -> Iterable[_T]:
            # Asked only for IServiceMaker, which ServiceMaker provides.
            return [cast(_T, plugin)]

        def getSynopsis(self) -> str:
            # The plugin's synopsis is this, its name and "[options]".
            return "Usage:"

    return Options()


def main(
    name: str,
    maker: ServiceMaker,
    argv: Sequence[str],
    stderr: TextIO | None = None,
) -> None:
    """
    Run the service of C{maker} as C{twistd -n --pidfile=} would, with
    C{argv} as the plugin's options (after optional leading C{--logger}s).

    A configuration error exits with status 1 and its one line, as the
    plugin's options already do; an unknown or malformed option does the
    same here, where twistd would print its whole usage text first.
    """
    config = _serverOptions(name, maker)
    try:
        config.parseOptions(twistdArguments(name, argv))
    except usage.UsageError as e:
        (stderr or sys.stderr).write(f"{name}: {e} (see {name} --help)\n")
        raise SystemExit(1) from None
    runApp(config)


def proxy() -> None:
    """
    C{promtwist-proxy}: the proxy in the foreground.
    """
    main("promtwist-proxy", promproxyProxy, sys.argv[1:])


def agent() -> None:
    """
    C{promtwist-agent}: the agent in the foreground.
    """
    main("promtwist-agent", promproxyAgent, sys.argv[1:])
