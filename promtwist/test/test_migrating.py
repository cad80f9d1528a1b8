"""
Tests that keep docs/migrating.md's command-line translation table true.

The table promises a prometheus-proxy user that every option and
environment variable of prometheus-proxy 4.0.1 still works, or says why it
has no effect.  These tests hold the table to that: it has exactly one row
per upstream option (the list is in C{data/prometheus-proxy-4.0.1-options.txt},
with its source), each row names upstream's own variable, and promtwist's
options accept every spelling and read the variable, to the effect the row
claims.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from promtwist import __version__
from promtwist.cli import AgentOptions, ProxyOptions
from promtwist.test.certs import certificates
from promtwist.test.helpers import sourceTreeFile

UPSTREAM = FilePath(__file__).sibling("data").child("prometheus-proxy-4.0.1-options.txt")
MIGRATING = "docs/migrating.md"

# The translation table's section, and the process each of its tables is for.
SECTION = "### Command-line translation"
TABLES = {
    "#### Proxy options": "proxy",
    "#### Agent options": "agent",
    "#### Options of both": "both",
}
NO_VARIABLE = "—"


@dataclass(frozen=True)
class Option:
    """
    One prometheus-proxy option.

    @ivar process: C{proxy}, C{agent} or C{both}.
    @ivar spellings: its names, e.g. C{("-p", "--port")}.
    @ivar variable: the environment variable it falls back to, if any.
    """

    process: str
    spellings: tuple[str, ...]
    variable: str | None


@dataclass(frozen=True)
class Row:
    """
    One row of the translation table.

    @ivar promtwist: the text of its promtwist column.
    """

    option: Option
    promtwist: str

    @property
    def noEffect(self) -> bool:
        """
        Whether the row says the option is accepted but does nothing.
        """
        return self.promtwist.startswith("no effect")


def upstreamOptions(text: str) -> list[Option]:
    """
    The options listed in the upstream data file: C{process | spellings |
    variable} lines, C{-} for no variable, C{#} comments.
    """
    options = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        process, spellings, variable = (field.strip() for field in line.split(" | "))
        options.append(
            Option(
                process,
                tuple(s.strip() for s in spellings.split(",")),
                None if variable == "-" else variable,
            )
        )
    return options


def translationRows(markdown: str) -> list[Row]:
    """
    The rows of the translation table's three tables in C{markdown}.

    @raise ValueError: when the section or one of its tables is missing.
    """
    start = markdown.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"no {SECTION!r} section")
    rest = markdown[start + len(SECTION) + 2 :]
    end = re.search(r"^#{1,3} ", rest, re.MULTILINE)
    section = rest[: end.start()] if end else rest

    rows: list[Row] = []
    seen: set[str] = set()
    process: str | None = None
    for line in section.splitlines():
        if line.startswith("#"):
            process = TABLES.get(line.strip())
            if process is None:
                raise ValueError(f"unexpected heading {line!r} in {SECTION!r}")
            seen.add(process)
        elif line.startswith("| `") and process is not None:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            spellings, variable, promtwist = cells
            variables = re.findall(r"`([^`]+)`", variable)
            rows.append(
                Row(
                    Option(
                        process,
                        tuple(re.findall(r"`([^`]+)`", spellings)),
                        variables[0] if variables else None,
                    ),
                    promtwist,
                )
            )
            if not variables and variable != NO_VARIABLE:
                raise ValueError(f"variable cell {variable!r} is neither `NAME` nor {NO_VARIABLE}")
    missing = set(TABLES.values()) - seen
    if missing:
        raise ValueError(f"no table for {sorted(missing)} in {SECTION!r}")
    return rows


def mismatches(upstream: Sequence[Option], rows: Sequence[Row]) -> tuple[list[Option], list[Row]]:
    """
    What the table lacks and what it has in excess: upstream options with no
    row of the same process, spellings and variable, and rows that match no
    upstream option (a wrong variable is both).
    """
    documented = {row.option for row in rows}
    listed = set(upstream)
    return (
        [option for option in upstream if option not in documented],
        [row for row in rows if row.option not in listed],
    )


class TableTests(SynchronousTestCase):
    """
    The table lists exactly upstream's options.
    """

    def setUp(self) -> None:
        self.upstream = upstreamOptions(UPSTREAM.getContent().decode("utf-8"))
        with open(sourceTreeFile(MIGRATING), encoding="utf-8") as f:
            self.markdown = f.read()

    def test_upstreamList(self) -> None:
        """
        The data file lists prometheus-proxy's options (a sample of them,
        and how many there are), so that a damaged file cannot make the
        comparison below pass vacuously.
        """
        self.assertEqual(len(self.upstream), 55)
        self.assertIn(Option("proxy", ("-p", "--port"), "PROXY_PORT"), self.upstream)
        self.assertIn(Option("agent", ("--max_content_length_mbytes",), None), self.upstream)
        self.assertIn(
            Option("both", ("--tf-disabled", "--tf_disabled"), "TRANSPORT_FILTER_DISABLED"),
            self.upstream,
        )

    def test_oneRowPerUpstreamOption(self) -> None:
        """
        Every upstream option has a row with its spellings and its
        variable, in the table of its process, and there is no other row;
        so every upstream variable is named too.
        """
        missing, extra = mismatches(self.upstream, translationRows(self.markdown))
        self.assertEqual(missing, [], "upstream options without a row in docs/migrating.md")
        self.assertEqual(extra, [], "rows of docs/migrating.md that are no upstream option")

    def test_missingRowNoticed(self) -> None:
        """
        A table without one of the rows, or with a row naming another
        variable, does not pass.
        """
        rows = translationRows(self.markdown)
        line = "| `--sd_path` | `SD_PATH` |"
        self.assertIn(line, self.markdown)
        renamed = self.markdown.replace(line, "| `--sd_path` | `SDPATH` |")
        missing, extra = mismatches(self.upstream, translationRows(renamed))
        self.assertEqual(missing, [Option("proxy", ("--sd_path",), "SD_PATH")])
        self.assertEqual([row.option for row in extra], [Option("proxy", ("--sd_path",), "SDPATH")])
        shorter = [row for row in rows if row.option.spellings != ("--sd_path",)]
        self.assertEqual(
            mismatches(self.upstream, shorter)[0], [Option("proxy", ("--sd_path",), "SD_PATH")]
        )

    def test_malformedTable(self) -> None:
        """
        A table that cannot be read is an error, not an empty table.
        """
        self.assertRaises(ValueError, translationRows, "# Migrating\n")
        self.assertRaises(
            ValueError, translationRows, self.markdown.replace("#### Options of both", "#### Both")
        )


# A value for each option that takes one, different from its default; the
# others take "7".  The TLS options and the config file are set up per test.
SAMPLES = {
    "--log_level": "debug",
    "--sd_target_prefix": "proxy.example:9",
    "--proxy": "proxy.example:7",
}
DEFINES = {"proxy": "proxy.http.port=7", "agent": "agent.name=seven"}
# How an origin is named in warnings and errors: told apart only by how the
# value was given, which the comparisons leave out.
ORIGIN = re.compile(r"option -{1,2}[\w-]+|environment variable \w+")
NO_EFFECT = r"\Aconfiguration key [\w.]+ \(<given>\) has no effect in promtwist\Z"


@dataclass(frozen=True)
class Outcome:
    """
    What a process's options made of a command line and an environment,
    with where each value came from left out of the messages.

    @ivar settings: the resolved settings, or L{None} when parsing exited.
    @ivar warnings: the lines the loader warned.
    @ivar exit: the exit status, when parsing exited.
    @ivar output: what was written to standard output and standard error.
    """

    settings: object = None
    warnings: frozenset[str] = frozenset()
    exit: int | str | None = None
    output: str = ""


class BehaviourTests(SynchronousTestCase):
    """
    Each row's option and variable do what the row says.
    """

    def setUp(self) -> None:
        with open(sourceTreeFile(MIGRATING), encoding="utf-8") as f:
            self.rows = translationRows(f.read())
        # Both processes start from a file that sets their TLS files, so
        # that --cert, --key and --trust can name other copies of them.
        self.certs = certs = certificates(self)
        tls = {
            "proxy": (certs.server.cert, certs.server.key, certs.ca),
            "agent": (certs.client.cert, certs.client.key, certs.ca),
        }
        self.copies: dict[str, dict[str, str]] = {}
        self.configs: dict[str, str] = {}
        for process, (cert, key, ca) in tls.items():
            copies = [self.copy(path) for path in (cert, key, ca)]
            self.copies[process] = dict(zip(("--cert", "--key", "--trust"), copies, strict=True))
            config = FilePath(self.mktemp())
            paths = ""
            if process == "agent":
                paths = 'pathConfigs = [{ path = app1, url = "http://app1.example:9100/metrics" }]'
            config.setContent(
                (
                    f"{process} {{\n  {paths}\n  tls {{\n"
                    f'    certChainFilePath = "{cert}"\n'
                    f'    privateKeyFilePath = "{key}"\n'
                    f'    trustCertCollectionFilePath = "{ca}"\n'
                    "  }\n}\n"
                ).encode()
            )
            self.configs[process] = config.path

    def copy(self, path: str) -> str:
        """
        The same file under another name.
        """
        target: str = self.mktemp()
        shutil.copyfile(path, target)
        return target

    def observe(self, process: str, argv: Sequence[str], environ: Mapping[str, str]) -> Outcome:
        """
        What C{process}'s options make of C{argv} and C{environ}.
        """
        options = ProxyOptions() if process == "proxy" else AgentOptions()
        options._environ = environ
        options._stdout = stdout = io.StringIO()
        options._stderr = stderr = io.StringIO()
        warnings: list[str] = []
        options.warn = warnings.append
        try:
            options.parseOptions(list(argv))
        except SystemExit as e:
            output = stdout.getvalue() + stderr.getvalue()
            return Outcome(exit=e.code, output=ORIGIN.sub("<given>", output))
        return Outcome(options.settings, frozenset(ORIGIN.sub("<given>", w) for w in warnings))

    def value(self, process: str, row: Row) -> str:
        """
        The value given to the row's option, or set in its variable.
        """
        name = row.option.spellings[-1]
        if name == "--config":
            return self.configs[process]
        if name in self.copies[process]:
            return self.copies[process][name]
        if name == "--https_truststore":
            return str(self.certs.ca)
        if name == "-D":
            return DEFINES[process]
        return SAMPLES.get(name, "7")

    def takesValue(self, process: str, spelling: str) -> bool:
        """
        Whether C{spelling} is followed by a value on the command line.
        """
        options = ProxyOptions if process == "proxy" else AgentOptions
        names = {p[0] for p in options.optParameters} | {p[1] for p in options.optParameters}
        return spelling.lstrip("-") in names | {"D"}

    def check(self, process: str, row: Row) -> None:
        """
        Every spelling of C{row}'s option, and its variable, have one and
        the same effect on C{process}, and that effect is the row's claim.
        """
        option = row.option
        configRow = option.spellings[-1] == "--config"
        base = [] if configRow else ["-c", self.configs[process]]
        value = self.value(process, row)
        takesValue = self.takesValue(process, option.spellings[-1])
        given = []
        for spelling in option.spellings:
            argv = [spelling, value] if takesValue else [spelling]
            given.append((spelling, self.observe(process, base + argv, {})))
        if option.variable is not None:
            environ = {option.variable: value if takesValue else "true"}
            given.append((option.variable, self.observe(process, base, environ)))
        first = given[0][1]
        for name, observed in given[1:]:
            self.assertEqual(observed, first, f"{process}: {name} is not {given[0][0]}")

        name = option.spellings[-1]
        if name == "--version":
            self.assertEqual(first, Outcome(exit=0, output=f"{__version__.public()}\n"))
            return
        if name == "--usage":
            self.assertEqual(first.exit, 0, process)
            self.assertIn("--config=", first.output)
            return
        self.assertIsNot(first.settings, None, f"{process}: {name}: {first}")
        baseline = self.observe(process, base, {})
        if row.noEffect:
            self.assertEqual(first.settings, baseline.settings, f"{process}: {name} has an effect")
            added = first.warnings - baseline.warnings
            self.assertTrue(added, f"{process}: {name} warns nothing")
            for warning in added:
                # As docs/migrating.md quotes it.
                self.assertRegex(warning, NO_EFFECT)
        else:
            self.assertNotEqual(
                first.settings, baseline.settings, f"{process}: {name} changes nothing"
            )

    def test_rows(self) -> None:
        """
        Every row, for each process it is for.
        """
        self.assertEqual(len(self.rows), 55)
        for row in self.rows:
            both = row.option.process == "both"
            for process in ("proxy", "agent") if both else (row.option.process,):
                self.check(process, row)
