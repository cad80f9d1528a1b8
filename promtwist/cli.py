"""
The command-line options of C{twistd promproxy-proxy} and
C{twistd promproxy-agent}.

They are generated from the key tables in L{promtwist.config.keys}, so the option
names, their environment variables and their config keys cannot drift apart,
and they keep prometheus-proxy's spellings so that existing command lines,
container definitions and unit files keep working.
"""

from __future__ import annotations

import itertools
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Generic, TextIO, TypeVar

from twisted.python import usage

from promtwist import __version__
from promtwist.config.keys import AGENT, PROXY
from promtwist.config.load import loadAgentSettings, loadProxySettings, warningsOnce
from promtwist.config.schema import Role, Setting
from promtwist.config.settings import AgentSettings, ConfigError, ProxySettings
from promtwist.logs import filterTwistdLogs
from promtwist.startup import StartupError, checkTwistdFiles
from promtwist.tls import checkFiles

_S = TypeVar("_S", ProxySettings, AgentSettings)

_LONGDESC = (
    "Each setting is taken from the first of: a command-line option, its environment"
    " variable, a -D override, the configuration file, the built-in default."
)


def _render(value: object) -> str:
    """
    A default as a user would write it in a configuration file.
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(setting: Setting) -> str:
    """
    One C{--help} line: what the option does, where else it can be set, and
    its default.
    """
    where = [setting.key]
    if setting.env:
        where.append(f"${setting.env}")
    if setting.default != "":
        where.append(f"default {_render(setting.default)}")
    effect = "" if setting.effective else " (no effect in promtwist)"
    return f"{setting.help}{effect} ({', '.join(where)})"


def _optionTables(role: Role) -> tuple[list[list[str | None]], list[list[str | None]]]:
    """
    Build C{optFlags} and C{optParameters} for a role: booleans are flags
    (present means true), everything else takes a value.  Parameters default
    to L{None} so that an option the user did not give can be told apart and
    does not hide the environment or the file.
    """
    flags: list[list[str | None]] = []
    parameters: list[list[str | None]] = [
        ["config", "c", None, f"Configuration file or http(s) URL (${role.configEnv})"],
        ["conf", None, None, "Same as --config"],
    ]
    for setting in role.settings:
        for name in setting.options:
            if name == setting.option:
                short, doc = setting.short, _describe(setting)
            else:
                short, doc = None, f"Same as --{setting.option}"
            if setting.kind is bool:
                flags.append([name, short, doc])
            else:
                parameters.append([name, short, None, doc])
    return flags, parameters


def _foldCase(args: Sequence[str], longOpt: Sequence[str], shortOpt: str) -> list[str]:
    """
    C{args} with each option name written in another case replaced by the
    option it names, as prometheus-proxy's parser (JCommander, case
    insensitive) takes C{--ADMIN} or C{-P 8080}; Twisted's getopt matches
    names exactly.  Option values, everything after C{--}, and names that fold
    to no option or to more than one are left as they are.
    """
    longs = {name.rstrip("="): name.endswith("=") for name in longOpt}
    shorts = {c: shortOpt[i + 1 : i + 2] == ":" for i, c in enumerate(shortOpt) if c != ":"}

    def fold(name: str, known: Mapping[str, bool]) -> str:
        if name in known:
            return name
        matches = [k for k in known if k.lower() == name.lower()]
        return matches[0] if len(matches) == 1 else name

    folded: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            folded.append(arg)
            folded.extend(rest)
            break
        takesValue = False
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = fold(name, longs)
            arg = f"--{name}{eq}{value}"
            takesValue = longs.get(name, False) and not eq
        elif len(arg) == 2 and arg[0] == "-" and arg[1] != "-":
            name = fold(arg[1], shorts)
            arg = f"-{name}"
            takesValue = shorts.get(name, False)
        folded.append(arg)
        if takesValue:
            folded.extend(itertools.islice(rest, 1))
    return folded


class _SettingsOptions(usage.Options, ABC, Generic[_S]):
    """
    Options shared by both processes.  After parsing, C{settings} holds the
    resolved settings object.

    @cvar _stdout: where C{--version} and C{--usage} write; L{None} means
        C{sys.stdout}.
    @cvar _stderr: where a configuration error is reported; L{None} means
        C{sys.stderr}.
    @cvar _environ: the environment to read; L{None} means L{os.environ}.
        These three exist so that tests can substitute them.
    @ivar warn: where the loader's warnings go, each line once: the startup
        load and every C{SIGHUP} reload share it (see L{warningsOnce}).
    """

    _role: ClassVar[Role]
    _stdout: TextIO | None = None
    _stderr: TextIO | None = None
    _environ: Mapping[str, str] | None = None

    longdesc = _LONGDESC
    settings: _S

    def __init__(self) -> None:
        super().__init__()
        self.warn = warningsOnce()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        super().parseOptions(_foldCase(options, self.longOpt, self.shortOpt))

    def opt_define(self, define: str) -> None:
        """
        Override a configuration key, e.g. -Dagent.proxy.hostname=proxy.example
        (repeatable).
        """
        self.setdefault("defines", []).append(define)

    opt_D = opt_define

    def opt_version(self) -> None:
        """
        Print the promtwist version and exit.
        """
        (self._stdout or sys.stdout).write(f"{__version__.public()}\n")
        raise SystemExit(0)

    opt_v = opt_version

    def opt_usage(self) -> None:
        """
        Display this help and exit (prometheus-proxy's spelling of --help).
        """
        # Not an alias of opt_help: usage.Options cannot list two long names
        # of one handler in its help.
        (self._stdout or sys.stdout).write(f"{self}\n")
        raise SystemExit(0)

    opt_u = opt_usage

    def given(self) -> dict[str, object]:
        """
        The values the user actually gave, by canonical option name, plus
        C{config} and C{defines}: the C{options} argument of the loaders.
        """
        values: dict[str, object] = {"defines": list(self.get("defines", []))}
        # usage.Options has no aliases for flags and parameters, so each
        # spelling is an option of its own, folded into the canonical name
        # here.  Flags are 0 until given, parameters None.
        spellings = [("config", ("config", "conf"), False)] + [
            (s.options[0], s.options, s.kind is bool) for s in self._role.settings if s.options
        ]
        for canonical, names, flag in spellings:
            for name in names:
                if self[name] not in (None, 0):
                    values[canonical] = True if flag else self[name]
        return values

    def environ(self) -> Mapping[str, str]:
        """
        The environment the settings are read from.
        """
        return os.environ if self._environ is None else self._environ

    def reloadSettings(self, warn: Callable[[str], None]) -> _S:
        """
        The settings read again, for C{SIGHUP}: from the same command line
        and environment, so that their precedence over the configuration
        file holds, and from the file as it is now. Called in a thread
        (L{promtwist.reloads}), so the warnings go to C{warn}, not the log;
        the caller passes them to L{warn} in the reactor thread.

        @raise promtwist.config.settings.ConfigError: when they do not load.
        """
        return self._load(self.given(), self.environ(), warn)

    def postOptions(self) -> None:
        """
        Resolve the settings, read the TLS files they name, and check that
        twistd's pidfile and log file can be written.  An error is reported
        as one line and exits with status 1:
        twistd would otherwise print the whole usage text, burying the one
        line that matters.
        """
        try:
            self.settings = self._load(self.given(), self.environ(), self.warn)
            checkFiles(self.settings)
            # twistd's own options, when these are its plugin's.
            twistd = getattr(self, "parent", None)
            if twistd is not None:
                checkTwistdFiles(twistd)
                # makeService sets the level, before twistd logs a line.
                filterTwistdLogs(twistd)
        except (ConfigError, StartupError) as e:
            (self._stderr or sys.stderr).write(f"promtwist: {e}\n")
            raise SystemExit(1) from None

    @abstractmethod
    def _load(
        self,
        options: Mapping[str, object],
        environ: Mapping[str, str],
        warn: Callable[[str], None],
    ) -> _S:
        """
        Resolve this process's settings with its loader, its warnings going
        to C{warn}.
        """


class ProxyOptions(_SettingsOptions[ProxySettings]):
    """
    Options of C{twistd promproxy-proxy}.
    """

    _role = PROXY
    optFlags, optParameters = _optionTables(PROXY)

    def _load(
        self,
        options: Mapping[str, object],
        environ: Mapping[str, str],
        warn: Callable[[str], None],
    ) -> ProxySettings:
        return loadProxySettings(options, environ, warn=warn)


class AgentOptions(_SettingsOptions[AgentSettings]):
    """
    Options of C{twistd promproxy-agent}.
    """

    _role = AGENT
    optFlags, optParameters = _optionTables(AGENT)

    def _load(
        self,
        options: Mapping[str, object],
        environ: Mapping[str, str],
        warn: Callable[[str], None],
    ) -> AgentSettings:
        return loadAgentSettings(options, environ, warn=warn)
