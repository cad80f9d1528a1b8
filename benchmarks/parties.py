"""
The processes a benchmark run starts, each on 127.0.0.1 with a free port and
its files in the run's temporary directory: the target (nginx, or a Twisted
stand-in when nginx is absent), promtwist's proxy and agent, and PushProx's
proxy and client. L{Parties} starts them, waits until each answers, and stops
every one of them when the run ends, whatever happened.
"""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from promtwist.test.processes import freePort

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
NGINX = "/usr/sbin/nginx"
BUILD_PUSHPROX = os.path.join(REPO, "peers", "build-pushprox")
PUSHPROX_BINARIES = ("pushprox-proxy", "pushprox-client")
# The PushProx client refuses a scrape without this header; every route
# gets it so that all three see the same request.
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How a scrape names what it wants from a proxy: a path an agent serves
# (prometheus-proxy's way), or the target's own host:port in an absolute URI
# (proxy_url, PushProx's way; docs/proxy-url.md).
PATH, HOST = "path", "host"
ROUTINGS = (PATH, HOST)


# ---------------------------------------------------------------------------
# Bodies.


def metricText(target: int) -> bytes:
    """
    Prometheus text exposition of roughly C{target} bytes: counters of a
    small exporter, a few families of labelled series.
    """
    lines: list[str] = []
    size = 0
    i = 0
    while size < target:
        family = f"bench_http_requests_{i // 40}"
        if i % 40 == 0:
            lines.append(f"# HELP {family}_total Requests handled, by handler and code.\n")
            lines.append(f"# TYPE {family}_total counter\n")
        handler = f"/api/v1/resource{i % 17}"
        code = (200, 404, 500)[i % 3]
        lines.append(f'{family}_total{{handler="{handler}",code="{code}"}} {i * 7919 % 100003}\n')
        size = sum(map(len, lines))
        i += 1
    text = "".join(lines)
    return text[:target].rsplit("\n", 1)[0].encode("ascii") + b"\n"


def writeBigBody(path: str, size: int) -> str:
    """
    Write about C{size} bytes of random-looking metric text (so neither a
    compressor nor a cache makes it cheap) to C{path}, a few MB at a time.

    @return: the hex SHA-256 of what was written.
    """
    import hashlib

    rng = random.Random(10)
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as f:
        f.write(b"# TYPE bench_big gauge\n")
        digest.update(b"# TYPE bench_big gauge\n")
        while written < size:
            chunk = "".join(
                f'bench_big{{shard="{rng.randrange(10**6)}",pod="p{rng.getrandbits(40):x}"}}'
                f" {rng.random()!r}\n"
                for _ in range(20000)
            ).encode("ascii")
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return digest.hexdigest()


def writeBodies(root: str, bodies: dict[str, bytes]) -> None:
    """
    Each body as C{root/name}, with its gzip beside it as C{root/name.gz}
    (what nginx's C{gzip_static} serves to C{Accept-Encoding: gzip}).
    """
    os.makedirs(root, exist_ok=True)
    for name, body in bodies.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(body)
        with open(os.path.join(root, name + ".gz"), "wb") as f:
            f.write(gzip.compress(body, 6, mtime=0))


# ---------------------------------------------------------------------------
# Small helpers.


def procStatusKiB(pid: int, field: str) -> int:
    """
    C{field} of /proc/<pid>/status in KiB: VmRSS (now) or VmHWM (peak).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def cpuSeconds(pids: Iterable[int]) -> float:
    """
    utime + stime of the processes C{pids}, from /proc/<pid>/stat.
    """
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        # utime and stime are fields 14 and 15 (1-based), 11 and 12 after ")".
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def fetch(
    url: str, headers: dict[str, str], proxy: str | None = None, timeout: float = 5
) -> tuple[int, bytes]:
    """
    One GET with C{urllib}, through the HTTP proxy C{proxy} if given (the
    absolute-URI form PushProx's proxy routes on), the body as sent.
    """
    handlers = [urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---------------------------------------------------------------------------
# The processes.


@dataclass
class Route:
    """
    One way to the target: how wrk and the Python generators reach a path
    on it, and which processes' CPU and memory a scrape costs.

    @ivar connect: host:port the client connects to.
    @ivar target: the request target: a path, or an absolute URI for a proxy.
    @ivar host: the Host header.
    @ivar pids: the processes between the client and the target.
    """

    name: str
    connect: str
    target: str
    host: str
    pids: tuple[int, ...] = ()

    def wrkUrl(self) -> str:
        """
        The URL wrk is given: for a proxy route the proxy's address, the
        absolute URI then set as the request target by wrk's script.
        """
        return f"http://{self.connect}" + ("/" if self.proxy() else self.target)

    def proxy(self) -> str | None:
        return f"http://{self.connect}" if self.target.startswith("http://") else None

    def absolute(self) -> str:
        """
        The URL a proxy-aware client asks for.
        """
        if self.target.startswith("http://"):
            return self.target
        return f"http://{self.connect}{self.target}"


class Parties:
    """
    Starts and stops the benchmark's processes; logs go to C{workdir}.
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {
            k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
        }
        self.targetPort = 0

    def spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.workdir, log), "wb") as out:
            p = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env
            )
        self.procs.append(p)
        return p

    def stopAll(self) -> None:
        for child in reversed(self.procs):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(self.procs):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def waitFor(
        self,
        url: str,
        what: str,
        headers: dict[str, str] | None = None,
        proxy: str | None = None,
        timeout: float = 30,
    ) -> None:
        """
        Poll C{url} (at most every 0.1 s, at most C{timeout} s) until it
        answers 200; give up at once when a child has exited.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise SystemExit(
                        f"{what}: a child process exited early ({p.args!r}); logs in {self.workdir}"
                    )
            try:
                status, body = fetch(url, headers or {}, proxy, timeout=2)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise SystemExit(f"{what}: not ready within {timeout}s ({last}); logs in {self.workdir}")

    # -- the target ---------------------------------------------------------

    def startTarget(self, root: str, forceTwisted: bool = False) -> str:
        """
        Serve the files in C{root} on a loopback port: with nginx when
        C{/usr/sbin/nginx} exists (unprivileged, one process, everything in
        the work directory), else with L{twistedTarget}.

        @return: a one-line description of the target, for the output.
        """
        self.targetPort = freePort()
        if os.path.exists(NGINX) and not forceTwisted:
            conf = os.path.join(self.workdir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(nginxConfig(self.workdir, root, self.targetPort))
            errors = os.path.join(self.workdir, "nginx-error.log")
            self.spawn([NGINX, "-p", self.workdir, "-e", errors, "-c", conf], "nginx.out")
            version = subprocess.run(
                [NGINX, "-v"], capture_output=True, text=True, check=False
            ).stderr.strip()
            description = f"{version.partition(': ')[2] or NGINX}, gzip_static, one process"
        else:
            port = str(self.targetPort)
            self.spawn(
                [sys.executable, os.path.join(HERE, "bench.py"), "target", root, "--port", port],
                "target.out",
            )
            why = "--twisted-target" if forceTwisted else f"{NGINX} is absent"
            description = (
                f"Twisted stand-in (bench.py target; {why}): slower than nginx, so direct"
                " figures are not comparable with a run on nginx (Debian: apt-get install"
                " nginx-light)"
            )
        self.waitFor(f"http://127.0.0.1:{self.targetPort}/small", "target")
        return description

    def direct(self, name: str) -> Route:
        addr = f"127.0.0.1:{self.targetPort}"
        return Route("direct", addr, f"/{name}", addr, ())

    # -- promtwist ----------------------------------------------------------

    def startPromtwist(
        self, names: Iterable[str], agentSettings: str = "", routing: str = PATH
    ) -> dict[str, Route]:
        """
        C{twistd -n promproxy-proxy} and C{twistd -n promproxy-agent}, the
        agent configured by L{agentConfig} for C{routing}; ready when the
        first of C{names} answers.
        """
        conf = os.path.join(self.workdir, "agent.conf")
        names = list(names)
        with open(conf, "w") as f:
            f.write(agentConfig(self.targetPort, names, agentSettings, routing))
        proxy, scrapeAddr, agentAddr = self.startPromtwistProxy("proxy")
        agent = self.twistd(
            "agent", ["promproxy-agent", "-c", conf, "--proxy", agentAddr, "--name", "bench"]
        )
        routes = self.routesThrough("promtwist", scrapeAddr, (proxy.pid, agent.pid), names, routing)
        # Only the first path is asked: the others may be big (bigbody mode
        # measures the memory its first scrape takes).
        self.waitUntilServed(routes[names[0]], "promtwist")
        return routes

    def startPromtwistProxy(self, role: str) -> tuple[subprocess.Popen[bytes], str, str]:
        """
        C{twistd -n promproxy-proxy} with default settings, its logs named
        C{role}.

        @return: the process, and the host:port of its scrape port and of
            its agent port.
        """
        scrapePort, agentPort = freePort(), freePort()
        proxy = self.twistd(
            role, ["promproxy-proxy", "--port", str(scrapePort), "--agent_port", str(agentPort)]
        )
        return proxy, f"127.0.0.1:{scrapePort}", f"127.0.0.1:{agentPort}"

    def twistd(self, role: str, args: list[str]) -> subprocess.Popen[bytes]:
        """
        C{twistd -n ARGS} (the twistd beside this Python, so the promtwist
        installed in its venv), logging to C{role.log}.
        """
        if not os.path.exists(TWISTD):
            raise SystemExit(
                f"no twistd next to {sys.executable}: run this with the venv promtwist is"
                " installed in"
            )
        logFile = os.path.join(self.workdir, f"{role}.log")
        return self.spawn(
            [TWISTD, "-n", "--pidfile=", f"--logfile={logFile}", *args], f"{role}.out"
        )

    def routesThrough(
        self,
        label: str,
        proxyAddr: str,
        pids: tuple[int, ...],
        names: Iterable[str],
        routing: str,
    ) -> dict[str, Route]:
        """
        The routes to the target's files C{names} through the proxy at
        C{proxyAddr}: by C{routing}, a path the agent serves
        (C{/bench_<name>}, L{agentConfig}), or the target's own URL sent
        to the proxy as an absolute URI, as Prometheus sends it with
        C{proxy_url}.
        """
        target = f"127.0.0.1:{self.targetPort}"
        if routing == HOST:
            return {n: Route(label, proxyAddr, f"http://{target}/{n}", target, pids) for n in names}
        return {n: Route(label, proxyAddr, f"/bench_{n}", proxyAddr, pids) for n in names}

    def waitUntilServed(self, route: Route, what: str) -> None:
        """
        L{waitFor} C{route}'s first answer, with the header the PushProx
        client insists on.
        """
        self.waitFor(
            route.absolute(), what, headers={SCRAPE_TIMEOUT_HEADER: "5"}, proxy=route.proxy()
        )

    # -- PushProx -----------------------------------------------------------

    def startPushProx(self, bindir: str, names: Iterable[str]) -> dict[str, Route]:
        """
        C{pushprox-proxy} and one C{pushprox-client} registered as
        C{127.0.0.1} (the host the client then scrapes), both on loopback;
        scrapes go to the proxy in the absolute-URI form, as Prometheus
        sends them with C{proxy_url}.
        """
        proxyAddr = f"127.0.0.1:{freePort()}"
        proxy = self.spawn(
            [
                os.path.join(bindir, "pushprox-proxy"),
                f"--web.listen-address={proxyAddr}",
                "--log.level=warn",
            ],
            "pushprox-proxy.out",
        )
        return self.pushproxClientOn(bindir, proxyAddr, proxy.pid, names, "PushProx")

    def startClientOnPromtwist(
        self, bindir: str, names: Iterable[str], label: str
    ) -> dict[str, Route]:
        """
        The same C{pushprox-client} as L{startPushProx}'s, polling a
        promtwist proxy of its own instead (PushProx's client protocol on
        promtwist's scrape port, docs/pushprox.md). Not the proxy of
        L{startPromtwist}: with host routing its agent declares
        C{127.0.0.1:<target port>}, a claim on the exact port, which would
        take the scrapes meant for the client's claim on C{127.0.0.1}.
        """
        proxy, scrapeAddr, _ = self.startPromtwistProxy(f"proxy-{label}")
        return self.pushproxClientOn(bindir, scrapeAddr, proxy.pid, names, label)

    def pushproxClientOn(
        self, bindir: str, proxyAddr: str, proxyPid: int, names: Iterable[str], label: str
    ) -> dict[str, Route]:
        """
        One C{pushprox-client} registered as C{127.0.0.1} with the proxy at
        C{proxyAddr} (PushProx's, or promtwist's scrape port, which serves
        the same client protocol); the routes through that proxy, ready
        when the first answers.
        """
        client = self.spawn(
            [
                os.path.join(bindir, "pushprox-client"),
                "--fqdn=127.0.0.1",
                f"--proxy-url=http://{proxyAddr}/",
                f"--metrics-addr=127.0.0.1:{freePort()}",
                "--log.level=warn",
            ],
            f"pushprox-client-{label}.out",
        )
        names = list(names)
        routes = self.routesThrough(label, proxyAddr, (proxyPid, client.pid), names, HOST)
        self.waitUntilServed(routes[names[0]], label)
        return routes


def agentConfig(targetPort: int, names: Iterable[str], settings: str, routing: str) -> str:
    """
    The bench agent's configuration: for path routing a path
    C{bench_<name>} per target file C{/<name>}; for host routing the
    target's C{127.0.0.1:<port>} in C{agent.targets}, so that the agent
    fetches whatever path a proxy_url scrape names on it. C{settings} goes
    into the C{agent} block as it is.
    """
    if routing == HOST:
        return f'agent {{\n{settings}  targets = ["127.0.0.1:{targetPort}"]\n}}\n'
    paths = "".join(
        f'    {{ name = "bench {name}", path = "bench_{name}", '
        f'url = "http://127.0.0.1:{targetPort}/{name}" }}\n'
        for name in names
    )
    return f"agent {{\n{settings}  pathConfigs = [\n{paths}  ]\n}}\n"


def nginxConfig(workdir: str, root: str, port: int) -> str:
    """
    An nginx configuration that touches nothing outside C{workdir}: one
    process in the foreground, its pid file, error log and temporary
    directories there, no access log; static files from C{root}, with
    C{gzip_static} so C{Accept-Encoding: gzip} gets the precompressed body.
    """
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/nginx-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    types {{ }}
    default_type "{TEXT_TYPE}";
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        gzip_static on;
        location / {{ }}
    }}
}}
"""


def findPushProx(bindir: str | None, cachedir: str) -> str:
    """
    The directory holding C{pushprox-proxy} and C{pushprox-client}:
    C{bindir} when given and complete, else C{cachedir}, built there with
    C{peers/build-pushprox} (in the repository) if
    needed. Exits with what to do when neither works.
    """

    def complete(d: str) -> bool:
        return all(os.access(os.path.join(d, b), os.X_OK) for b in PUSHPROX_BINARIES)

    if bindir is not None:
        if complete(bindir):
            return bindir
        cachedir = bindir
    if complete(cachedir):
        return cachedir
    if not os.access(BUILD_PUSHPROX, os.X_OK):
        raise SystemExit(
            f"PushProx not found: no pushprox-proxy and pushprox-client in {cachedir}, and no"
            f" {BUILD_PUSHPROX} to build them. Pass --pushprox-dir DIR with both binaries"
            " (built from prometheus-community/PushProx), or --no-pushprox to measure direct"
            " and promtwist only."
        )
    print(f"building PushProx into {cachedir} with {BUILD_PUSHPROX} ...", flush=True)
    os.makedirs(cachedir, exist_ok=True)
    build = subprocess.run([BUILD_PUSHPROX, cachedir], capture_output=True, text=True, check=False)
    if build.returncode != 0 or not complete(cachedir):
        tail = (build.stdout + build.stderr).strip().splitlines()[-5:]
        raise SystemExit(
            f"building PushProx failed (exit {build.returncode}): {' / '.join(tail)}."
            f" {BUILD_PUSHPROX} needs Debian's Go packages (root for apt-get the first time);"
            " build it once as root, or pass --pushprox-dir DIR with pushprox-proxy and"
            " pushprox-client, or --no-pushprox."
        )
    return cachedir


def defaultCacheDir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "promtwist-bench", "pushprox-5d89cdb")
