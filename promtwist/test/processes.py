"""
Running promtwist as users do, for the process-level tests: C{twistd}
proxy and agent children on loopback ports, a scrape target in the test's
reactor, and polling with deadlines instead of sleeps.

C{twistd} is the one installed next to the running Python (C{.venv/bin/twistd}
under C{scripts/test}), so the tests also check that the installed package's
twistd plugins are found.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar, cast

import treq
from treq.client import HTTPClient
from twisted.internet import reactor as _globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IListeningPort, IReactorSSL
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from promtwist.endpoints import probe, wildcard
from promtwist.test.certs import Issued

T = TypeVar("T")

# The twistd of the environment running the tests: with scripts/test that is
# .venv/bin/twistd, which finds the installed promproxy-* plugins.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# The console scripts installed beside it (setup.cfg's console_scripts), by
# the twistd plugin each one runs.
CONSOLE_SCRIPTS = {
    "promproxy-proxy": os.path.join(os.path.dirname(sys.executable), "promtwist-proxy"),
    "promproxy-agent": os.path.join(os.path.dirname(sys.executable), "promtwist-agent"),
}

SAMPLE = b'promtwist_e2e_sample{kind="x"} 42\n'
# Enough lines that the body crosses the agent's minGzipSizeBytes (512), so
# the link's gzip path is exercised too.
FILLER = b"".join(b'promtwist_e2e_filler{i="%d"} %d\n' % (i, i) for i in range(60))
PAYLOAD = (
    b"# HELP promtwist_e2e_sample A sample the end-to-end test looks for.\n"
    b"# TYPE promtwist_e2e_sample gauge\n"
    + SAMPLE
    + b"# TYPE promtwist_e2e_filler gauge\n"
    + FILLER
)
CONTENT_TYPE = b"text/plain; version=0.0.4"

# "n": 2 is a JSON number on purpose: discovery must turn it into "2".
LABELS_JSON = '{"team": "a", "n": 2}'
AGENT_NAME = "e2e-agent"
# The paths under which a Cluster with metrics serves the proxy's and the
# agent's own metrics.
PROXY_METRICS_PATH = "e2e_proxy_metrics"
AGENT_METRICS_PATH = "e2e_agent_metrics"


_handedOut: set[int] = set()


def freePort() -> int:
    """
    A TCP port nobody listens on right now on any address, for a process
    about to be started, and not handed out before by this process.

    It is taken below the kernel's ephemeral range: a port from that range
    (what binding port 0 gives) can be taken by any outgoing connection in
    the moment between this check and the process binding it, and on a
    busy machine it is.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, ephemeral - 16384), ephemeral)
        if port in _handedOut:
            continue
        try:
            # Where a proxy binds by default: every address of both families.
            probe(wildcard(_globalReactor, port))
        except OSError:
            continue
        _handedOut.add(port)
        return port
    raise RuntimeError(f"no free port below {ephemeral} in 100 tries")


def writeFile(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def hoconString(text: str) -> str:
    """
    C{text} as a quoted HOCON (JSON) string.
    """
    return json.dumps(text)


async def sleep(seconds: float) -> None:
    await deferLater(_globalReactor, seconds, lambda: None)


def childEnvironment() -> dict[str, str]:
    """
    A minimal environment for child processes: nothing from the developer's
    shell (PROXY_CONFIG, AGENT_PORT, ...) may change what the test runs.
    """
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------------------
# Child processes.


class _ChildProtocol(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int | None] = Deferred()
        self.exitCode: int | None = None
        self.signal: int | None = None
        self.running = False

    def connectionMade(self) -> None:
        self.running = True
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        del self.output[: max(0, len(self.output) - 200_000)]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        value = reason.value
        if isinstance(value, (ProcessDone, ProcessTerminated)):
            self.exitCode = value.exitCode
            self.signal = value.signal
        self.ended.callback(self.exitCode)


class Child:
    """
    One child process, stopped (and waited for) when the test ends.

    @ivar logFile: where its log goes, if it writes one.
    """

    def __init__(
        self,
        case: TestCase,
        name: str,
        argv: list[str],
        cwd: str,
        logFile: str | None = None,
        environ: Mapping[str, str] | None = None,
        inherited: Mapping[int, int] | None = None,
    ) -> None:
        """
        @param environ: variables added to L{childEnvironment}.
        @param inherited: descriptors the child gets beyond 0, 1 and 2:
            the child's number → this process's descriptor.
        """
        self.case = case
        self.environ = dict(environ or {})
        self.inherited = dict(inherited or {})
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.logFile = logFile
        self.protocol: _ChildProtocol | None = None
        self.starts = 0
        self.expectedExit = False

    @property
    def running(self) -> bool:
        return self.protocol is not None and self.protocol.running

    pid: int | None = None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.protocol = _ChildProtocol()
        self.expectedExit = False
        self.starts += 1
        if self.starts == 1:
            self.case.addCleanup(lambda: Deferred.fromCoroutine(self.stop()))
        fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r", **self.inherited}
        process = _globalReactor.spawnProcess(
            self.protocol,
            self.argv[0],
            self.argv,
            env={**childEnvironment(), **self.environ},
            path=self.cwd,
            childFDs=fds,
        )
        self.pid = process.pid

    def died(self) -> bool:
        """
        Whether it has exited without being told to.
        """
        return self.protocol is not None and not self.protocol.running and not self.expectedExit

    def signalProcess(self, sig: int) -> None:
        if self.running:
            assert self.protocol is not None and self.protocol.transport is not None
            try:
                self.protocol.transport.signalProcess(sig)
            except (OSError, ProcessExitedAlready):
                pass

    async def kill(self) -> None:
        """
        SIGKILL, and wait until it is gone.
        """
        self.expectedExit = True
        if self.running:
            self.signalProcess(signal.SIGKILL)
            assert self.protocol is not None
            await self.protocol.ended

    async def stop(self, grace: float = 10.0) -> int | None:
        """
        SIGTERM, then SIGKILL if it is still there after C{grace} seconds;
        wait until it is gone. Returns the exit code (None when killed).
        """
        self.expectedExit = True
        protocol = self.protocol
        if protocol is None:
            return None
        if protocol.running:
            self.signalProcess(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while protocol.running and time.monotonic() < deadline:
                await sleep(0.05)
            if protocol.running:
                self.signalProcess(signal.SIGKILL)
        if not protocol.ended.called:
            await protocol.ended
        return protocol.exitCode

    def describe(self, tail: int = 60) -> str:
        """
        The last lines of its log and output, for failure messages.
        """
        lines = [f"----- {self.name}: {' '.join(self.argv)}"]
        if self.protocol is not None:
            state = (
                "running"
                if self.protocol.running
                else f"exited (code {self.protocol.exitCode}, signal {self.protocol.signal})"
            )
            lines.append(f"      pid {self.pid}, {state}")
        if self.logFile is not None:
            try:
                with open(self.logFile, encoding="utf-8", errors="replace") as f:
                    text = f.read().splitlines()
            except OSError as e:
                text = [f"(no log: {e})"]
            lines.append(f"----- {self.name} log {self.logFile} (last {tail} lines):")
            lines.extend(text[-tail:])
        if self.protocol is not None and self.protocol.output:
            out = self.protocol.output.decode("utf-8", "replace").splitlines()
            lines.append(f"----- {self.name} stdout/stderr (last {tail} lines):")
            lines.extend(out[-tail:])
        return "\n".join(lines)

    def log(self) -> str:
        assert self.logFile is not None
        with open(self.logFile, encoding="utf-8", errors="replace") as f:
            return f.read()


def twistdChild(case: TestCase, name: str, plugin: str, args: list[str], workdir: str) -> Child:
    """
    A C{twistd -n <plugin>} child logging to C{<workdir>/<name>.log}, with no
    pidfile, run from C{workdir} (so that the installed package, not the
    source tree, is what twistd imports).
    """
    logFile = os.path.join(workdir, f"{name}.log")
    argv = [TWISTD, "-n", "--pidfile=", f"--logfile={logFile}", plugin, *args]
    return Child(case, name, argv, workdir, logFile)


def socketActivatedChild(
    case: TestCase,
    name: str,
    plugin: str,
    args: list[str],
    workdir: str,
    listening: int,
    socketName: str,
) -> Child:
    """
    A L{twistdChild} handed the listening socket C{listening} as systemd
    hands one over: as descriptor 3, with C{LISTEN_FDS=1}, its
    C{FileDescriptorName} in C{LISTEN_FDNAMES}, and C{LISTEN_PID} the
    child's own pid, which only the child knows (a shell sets it, then
    execs twistd in its place).
    """
    child = twistdChild(case, name, plugin, args, workdir)
    child.argv = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', *child.argv]
    child.environ["LISTEN_FDS"] = "1"
    child.environ["LISTEN_FDNAMES"] = socketName
    child.inherited[3] = listening
    return child


def consoleChild(
    case: TestCase,
    name: str,
    plugin: str,
    args: Sequence[str],
    workdir: str,
    environ: Mapping[str, str] | None = None,
) -> Child:
    """
    The console script standing for C{plugin} (C{promtwist-proxy} for
    C{promproxy-proxy}) as a child, run from C{workdir}; it logs to its
    standard output, which L{Child} keeps.
    """
    script = CONSOLE_SCRIPTS[plugin]
    if not os.path.exists(script):
        # An environment installed before the scripts existed.
        raise case.failureException(
            f"{script} is not installed: reinstall promtwist into this environment"
            " (pip install '.[test]'), as scripts/test does"
        )
    return Child(case, name, [script, *args], workdir, environ=environ)


# ---------------------------------------------------------------------------
# The target.


class _Metrics(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def render_GET(self, request: Request) -> bytes:
        self.hits += 1
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return PAYLOAD


class SlowResource(Resource):
    """
    Answers nothing until L{release}: scrapes of it stay in flight.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Request] = []
        self.arrived = 0

    def render_GET(self, request: Request) -> int:
        self.arrived += 1
        self.pending.append(request)
        request.notifyFinish().addBoth(lambda _: self._gone(request))
        return NOT_DONE_YET

    def _gone(self, request: Request) -> None:
        if request in self.pending:
            self.pending.remove(request)

    def release(self) -> None:
        for request in list(self.pending):
            request.setHeader(b"Content-Type", CONTENT_TYPE)
            request.write(SAMPLE)
            request.finish()


class TargetServer:
    """
    The scraped application: C{/metrics} answers L{PAYLOAD} at once,
    C{/slow} only when released. Runs in the test's reactor; every
    connection is closed when the test ends.

    @ivar scheme: C{https} when it serves TLS with the certificate given.
    """

    def __init__(self, case: TestCase, tls: Issued | None = None) -> None:
        root = Resource()
        self.metrics = _Metrics()
        self.slow = SlowResource()
        root.putChild(b"metrics", self.metrics)
        root.putChild(b"slow", self.slow)
        site = Site(root)
        site.log = lambda request: None  # type: ignore[method-assign]
        self.factory = WrappingFactory(site)
        self.scheme = "http" if tls is None else "https"
        self.port: IListeningPort
        if tls is None:
            self.port = _globalReactor.listenTCP(
                0,
                self.factory,  # type: ignore[arg-type]
                interface="127.0.0.1",
            )
        else:
            with open(tls.cert, "rb") as cert, open(tls.key, "rb") as key:
                options = PrivateCertificate.loadPEM(cert.read() + key.read()).options()
            self.port = cast(IReactorSSL, _globalReactor).listenSSL(
                0,
                self.factory,  # type: ignore[arg-type]
                options,
                interface="127.0.0.1",
            )
        case.addCleanup(lambda: Deferred.fromCoroutine(self.close()))

    @property
    def portNumber(self) -> int:
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.portNumber}/{path}"

    async def close(self) -> None:
        self.slow.release()
        stopped = self.port.stopListening()
        if stopped is not None:
            await stopped
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
        deadline = time.monotonic() + 5
        while self.factory.protocols and time.monotonic() < deadline:
            await sleep(0.01)


# ---------------------------------------------------------------------------
# Proxy + agent.


class ProcessGroup:
    """
    Child processes a test runs together, an HTTP client for the test, and
    waits that fail with every child's log; all torn down by the test's
    cleanups.

    @ivar children: the processes, in the order they were made.
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.children: list[Child] = []
        self.pool = HTTPConnectionPool(_globalReactor, persistent=True)
        self.http = HTTPClient(Agent(_globalReactor, pool=self.pool))
        case.addCleanup(self.pool.closeCachedConnections)

    def describe(self) -> str:
        return "\n".join(child.describe() for child in self.children if child.protocol is not None)

    def fail(self, message: str) -> Exception:
        return self.case.failureException(f"{message}\n\n{self.describe()}")

    def checkAlive(self) -> None:
        for child in self.children:
            if child.died():
                raise self.fail(f"{child.name} exited unexpectedly")

    async def eventually(
        self,
        check: Callable[[], Awaitable[T | None]],
        what: str,
        within: float,
        interval: float = 0.1,
    ) -> T:
        """
        Run C{check} until it returns something other than None (or False)
        without raising, for at most C{within} seconds; fail with every
        process's log otherwise.
        """
        deadline = time.monotonic() + within
        last = "never checked"
        while True:
            self.checkAlive()
            try:
                result = await check()
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = f"{type(e).__name__}: {e}"
            else:
                if result is not None and result is not False:
                    return result
                last = f"check returned {result!r}"
            if time.monotonic() >= deadline:
                raise self.fail(f"{what}: not within {within:g}s (last: {last})")
            await sleep(interval)

    async def text(self, url: str, limit: float = 2.0) -> str:
        """
        The body of C{url} (an admin page, say), as text.
        """
        response = await self.http.get(url, timeout=limit)
        return (await treq.content(response)).decode("utf-8", "replace")


class Cluster(ProcessGroup):
    """
    A target server, a promtwist proxy and a promtwist agent (both as twistd
    processes), plus an HTTP client for the test; all torn down by the test's
    cleanups.

    @ivar paths: the agent's paths: path -> target path on L{target}, or an
        absolute URL.
    @ivar proxyMetricsPort: the proxy's own metrics port, when it has one.
    @ivar agentMetricsPort: the agent's own metrics port, when it has one.
    """

    def __init__(
        self,
        case: TestCase,
        paths: dict[str, str] | None = None,
        sd: bool = True,
        metrics: bool = False,
        proxyArgs: Sequence[str] = (),
        agentArgs: Sequence[str] = (),
        targets: Sequence[str] = (),
    ) -> None:
        """
        @param metrics: whether the proxy and the agent serve their own
            metrics (on L{proxyMetricsPort} and L{agentMetricsPort}).
        @param targets: the agent's C{agent.targets} entries.
        @param proxyArgs: more options for the proxy.
        @param agentArgs: more options for the agent.
        """
        super().__init__(case)
        self.workdir = os.path.abspath(case.mktemp())
        os.makedirs(self.workdir)
        self.target = TargetServer(case)
        self.scrapePort = freePort()
        self.agentPort = freePort()
        self.proxyMetricsPort = freePort() if metrics else None
        self.agentMetricsPort = freePort() if metrics else None
        self.paths = dict(
            paths if paths is not None else {"e2e_one": "metrics", "e2e_two": "metrics"}
        )
        self.targets = tuple(targets)
        if metrics:
            # As examples/agent.conf does: both processes' own metrics through
            # the proxy as well, so Prometheus may scrape each under two jobs.
            self.paths[PROXY_METRICS_PATH] = f"http://127.0.0.1:{self.proxyMetricsPort}/metrics"
            self.paths[AGENT_METRICS_PATH] = f"http://127.0.0.1:{self.agentMetricsPort}/metrics"
        self.agentConfig = writeFile(os.path.join(self.workdir, "agent.conf"), self.agentConf())
        options = ["--port", str(self.scrapePort), "--agent_port", str(self.agentPort)]
        if sd:
            options.append("--sd_enabled")
        extraAgentArgs = list(agentArgs)
        if self.proxyMetricsPort is not None:
            options.extend(["--metrics", "--metrics_port", str(self.proxyMetricsPort)])
        if self.agentMetricsPort is not None:
            extraAgentArgs.extend(["--metrics", "--metrics_port", str(self.agentMetricsPort)])
        self.proxy = twistdChild(
            case, "proxy", "promproxy-proxy", [*options, *proxyArgs], self.workdir
        )
        self.children.append(self.proxy)
        self.agent = self.agentChild("agent", args=extraAgentArgs)

    def agentChild(
        self,
        childName: str,
        agentName: str = AGENT_NAME,
        config: str | None = None,
        args: Sequence[str] = (),
    ) -> Child:
        """
        One more agent of this proxy (not started), with the cluster's
        agent config unless C{config} names another file.
        """
        child = twistdChild(
            self.case,
            childName,
            "promproxy-agent",
            [
                "-c",
                config or self.agentConfig,
                "--proxy",
                f"127.0.0.1:{self.agentPort}",
                "--name",
                agentName,
                *args,
            ],
            self.workdir,
        )
        self.children.append(child)
        return child

    def agentConf(
        self, paths: dict[str, str] | None = None, target: TargetServer | None = None
    ) -> str:
        """
        An agent config serving C{paths} (path -> target path; the
        cluster's by default) from C{target} (the cluster's by default).
        """
        target = target or self.target
        entries = "\n".join(
            "    {\n"
            f"      name = {hoconString('promtwist test ' + path)}\n"
            f"      path = {hoconString(path)}\n"
            f"      url = {hoconString(self._targetURL(target, targetPath))}\n"
            f"      labels = {hoconString(LABELS_JSON)}\n"
            "    }"
            for path, targetPath in (paths or self.paths).items()
        )
        targets = (
            f"  targets = [{', '.join(hoconString(target) for target in self.targets)}]\n"
            if self.targets
            else ""
        )
        return (
            "// Written by promtwist.test.test_endtoend.\n"
            "agent {\n"
            '  proxy.hostname = "127.0.0.1"\n'
            f"  proxy.port = {self.agentPort}\n"
            "  pathConfigs = [\n"
            f"{entries}\n"
            "  ]\n"
            f"{targets}"
            "}\n"
        )

    @staticmethod
    def _targetURL(target: TargetServer, targetPath: str) -> str:
        if targetPath.startswith("http://"):
            return targetPath
        return target.url(targetPath)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.scrapePort}/{path}"

    async def get(self, path: str, limit: float = 5.0) -> tuple[int, bytes]:
        """
        Scrape C{path} through the proxy, giving up after C{limit} seconds:
        (status, body).
        """
        response = await self.http.get(self.url(path), timeout=limit)
        body = await treq.content(response)
        return response.code, body

    async def servedOnce(self, path: str = "e2e_one") -> float | None:
        """
        One scrape of C{path}: its arrival time if it returned the payload.
        """
        code, body = await self.get(path, limit=2.0)
        if code == 200 and SAMPLE in body:
            return time.monotonic()
        return None

    async def start(self, within: float = 20.0) -> None:
        """
        Start the proxy and the agent; return once every path is served.
        """
        self.proxy.start()

        async def listening() -> bool:
            response = await self.http.get(self.url(""), timeout=2.0)
            await treq.content(response)
            return True

        # The agent would connect anyway, but only after a backoff delay.
        await self.eventually(listening, "the proxy's scrape port", within, interval=0.05)
        self.agent.start()
        for path, targetPath in self.paths.items():
            if targetPath == "metrics":
                await self.eventually(
                    partial(self.servedOnce, path),
                    f"a scrape of /{path} through promtwist",
                    within,
                )
