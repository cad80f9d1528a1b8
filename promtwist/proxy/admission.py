# -*- test-case-name: promtwist.test.test_admission -*-
"""
Who may open a link on the proxy's agent port, and what a Hello may say.

Everything here is about peers that have not proved anything yet, so each
bound is there to keep what they can cost the proxy small: connections still
in their handshake are capped in total and per source address, an address
that keeps failing authentication is refused for a while without its token
being checked, and a Hello's fields have bounded sizes.
"""

from __future__ import annotations

import ipaddress
import re
import resource
from collections import OrderedDict, defaultdict

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol

from promtwist.addresses import peerAddress
from promtwist.config.settings import ProxySettings
from promtwist.protocol.framing import encodeFrame
from promtwist.protocol.promtwist_pb2 import Frame, Hello, Reject
from promtwist.protocol.session import HANDSHAKE_MAX_FRAME_BYTES

# Bounds on a Hello's fields, beyond proxy.internal.maxAgentNameLength: a
# host name is at most 253 characters in the DNS; a launch id is 32 hex
# digits from promtwist agents; labels are a handful of short pairs.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
MAX_HOST_NAME_LENGTH = 255
MAX_LAUNCH_ID_LENGTH = 128
MAX_SOFTWARE_VERSION_LENGTH = 128
MAX_HELLO_LABELS = 32
MAX_HELLO_LABEL_NAME_LENGTH = 128
MAX_HELLO_LABEL_VALUE_LENGTH = 1024


def hostOf(addr: IAddress | None) -> str:
    """
    The source a connection is counted under by the per-address limits: an
    IPv4 address in normal form (L{promtwist.addresses.peerAddress}: as
    C{192.0.2.7} whether it arrived mapped on a dual-stack listener or not),
    the /64 an IPv6 address is in, or C{""} when the transport has none (a
    UNIX socket, whose clients are all one source; a test).

    An IPv6 host usually holds a whole /64 and can take a new address from
    it for every connection: counted by address, it would pass every
    per-address limit at will.
    """
    ip = peerAddress(addr)
    if ip is None:
        host = getattr(addr, "host", "")
        return host if isinstance(host, str) else ""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class PendingHandshakes:
    """
    Connections that have not completed their handshake, counted in total
    (C{proxy.internal.maxPendingHandshakes}) and per source address
    (C{proxy.internal.maxPendingHandshakesPerAddress}), so that one host
    holding slots cannot keep agents dialling from elsewhere out.

    The same count bounds other connections that have proved nothing yet
    (gRPC connections before their first authenticated call): C{what}
    names them, C{setting} the total's setting (the per-address one is it
    with C{PerAddress}, or none when C{setting} is empty), C{kind} the
    metric label.
    """

    def __init__(
        self,
        total: int,
        perAddress: int,
        what: str = "handshake",
        setting: str = "proxy.internal.maxPendingHandshakes",
        kind: str = "pending_handshakes",
    ) -> None:
        self.total = total
        self.perAddress = perAddress
        self.what = what
        self.setting = setting
        self.kind = kind
        self._count = 0
        self._byHost: defaultdict[str, int] = defaultdict(int)

    def __len__(self) -> int:
        return self._count

    def refusal(self, host: str) -> tuple[str, str] | None:
        """
        Why a new connection from C{host} may not start a handshake, as a
        metric label and a message for the peer; L{None} if it may.
        """
        if self._count >= self.total:
            return (
                self.kind,
                f"the proxy is at its {self.what} limit of {self.total}"
                + (f" ({self.setting})" if self.setting else ""),
            )
        if self._byHost.get(host, 0) >= self.perAddress:
            return (
                f"{self.kind}_per_address",
                f"the proxy is at its {self.what} limit of {self.perAddress} for {host or '?'}"
                + (f" ({self.setting}PerAddress)" if self.setting else ""),
            )
        return None

    def enter(self, host: str) -> None:
        self._count += 1
        self._byHost[host] += 1

    def leave(self, host: str) -> None:
        self._count -= 1
        self._byHost[host] -= 1
        if not self._byHost[host]:
            del self._byHost[host]


class GrpcAdmission:
    """
    The gRPC connections of the agent port: at most
    C{proxy.internal.maxGrpcConnections} open, and of them at most
    C{proxy.internal.maxUnauthenticatedGrpcConnections} (and its
    per-address share) that have not yet made an authenticated call. A
    connection proves itself at the HEADERS of such a call; one that has
    not within C{proxy.internal.handshakeTimeoutSecs} is closed
    (L{promtwist.grpc.limits.Limits.authenticateSeconds}). Proved
    connections have no per-address share: a front end such as nginx opens
    one from its one address for each call of each agent behind it.
    """

    def __init__(self, total: int, unauthenticated: int, perAddress: int) -> None:
        self.total = total
        self.open = 0
        self.unauthenticated = PendingHandshakes(
            unauthenticated,
            perAddress,
            what="unauthenticated gRPC connection",
            setting="proxy.internal.maxUnauthenticatedGrpcConnections",
            kind="unauthenticated_grpc_connections",
        )

    def refusal(self, host: str) -> tuple[str, str] | None:
        """
        Why a new gRPC connection from C{host} is refused, as a metric label
        and a message; L{None} if it is not.
        """
        if self.open >= self.total:
            return (
                "grpc_connections",
                f"the proxy is at its limit of {self.total} gRPC connections "
                "(proxy.internal.maxGrpcConnections)",
            )
        return self.unauthenticated.refusal(host)

    def enter(self, host: str) -> None:
        self.open += 1
        self.unauthenticated.enter(host)

    def proven(self, host: str) -> None:
        """
        A connection from C{host} made its first authenticated call.
        """
        self.unauthenticated.leave(host)

    def leave(self, host: str, proven: bool) -> None:
        self.open -= 1
        if not proven:
            self.unauthenticated.leave(host)


# Open files the proxy needs besides its agent links and the connections
# waiting for a handshake place: listening ports, logs, scrape-port and
# admin connections, target files.
FILES_RESERVED = 256


def filesNeeded(settings: ProxySettings) -> int:
    """
    The open files the agent port may use at its caps, and the others.
    """
    return (
        grpcFiles(settings)
        + settings.max_agents
        + settings.max_pending_handshakes
        + settings.max_waiting_handshakes
        + FILES_RESERVED
    )


def grpcFiles(settings: ProxySettings) -> int:
    """
    The open files the agent port's gRPC connections may use.
    """
    return settings.max_grpc_connections if settings.agent_grpc_enabled else 0


def raiseOpenFileLimit(needed: int) -> int:
    """
    Raise this process's soft open-file limit towards C{needed}, as far as
    its hard limit allows (no privilege needed), and return the soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return needed if soft == resource.RLIM_INFINITY else soft


def waitingRoom(settings: ProxySettings, openFiles: int) -> int:
    """
    How many connections may wait for a handshake place: as many as
    C{proxy.internal.maxWaitingHandshakes} allows, and the open-file limit
    C{openFiles} leaves beside every agent, every handshake, every gRPC
    connection and L{FILES_RESERVED}. Each waiting connection holds a file; were they to
    exhaust the limit, no port of the proxy could accept anything.
    """
    room = (
        openFiles
        - grpcFiles(settings)
        - settings.max_agents
        - settings.max_pending_handshakes
        - FILES_RESERVED
    )
    return max(0, min(settings.max_waiting_handshakes, room))


class Refusal(Protocol):
    """
    A connection over a handshake cap: it is told why in a Reject, then
    closed. Nothing it sends is read.
    """

    def __init__(self, message: str) -> None:
        self.message = message

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            encodeFrame(Frame(reject=Reject(reason=Reject.OVERLOADED, message=self.message)))
        )
        self.transport.loseConnection()


class _Failures:
    __slots__ = ("blockedUntil", "count", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.blockedUntil = 0.0


class AuthThrottle:
    """
    Failed authentications per source address: after C{allowed} of them
    within L{WINDOW_SECONDS}, the address is refused for L{BACKOFF_SECONDS}
    without its token being checked, so guessing costs the guesser time and
    the proxy almost nothing. Retries while refused do not extend the
    backoff, so an agent whose token was fixed gets in once it ends.

    The table keeps at most L{MAX_ADDRESSES} addresses, dropping the least
    recently failed, so an attacker with many addresses cannot grow it.
    Agents behind one NAT address share its budget: set
    C{proxy.internal.maxAuthFailuresPerAddress} to 0 to turn this off.
    """

    WINDOW_SECONDS = 60.0
    BACKOFF_SECONDS = 60.0
    MAX_ADDRESSES = 4096

    def __init__(self, clock: IReactorTime, allowed: int) -> None:
        self.clock = clock
        self.allowed = allowed
        self._table: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def blockedFor(self, host: str) -> float:
        """
        Seconds until C{host} may try a token again; 0 when it may now.
        """
        record = self._table.get(host)
        if record is None or not record.blockedUntil:
            return 0.0
        left = record.blockedUntil - self.clock.seconds()
        if left <= 0:
            # The backoff is over: a fresh budget.
            del self._table[host]
            return 0.0
        return left

    def failed(self, host: str) -> None:
        """
        C{host} presented credentials that proved nothing.
        """
        if not self.allowed:
            return
        now = self.clock.seconds()
        record = self._table.get(host)
        if record is None or now - record.start >= self.WINDOW_SECONDS:
            record = _Failures(now)
        record.count += 1
        if record.count >= self.allowed:
            record.blockedUntil = now + self.BACKOFF_SECONDS
        self._table[host] = record
        self._table.move_to_end(host)
        while len(self._table) > self.MAX_ADDRESSES:
            self._table.popitem(last=False)


def helloProblem(hello: Hello, maxAgentNameLength: int) -> str | None:
    """
    What makes C{hello} unacceptable whoever sent it, naming the field and
    the limit (never repeating the value); L{None} when nothing does.
    """
    for name, limit, key in (
        ("agent_name", maxAgentNameLength, " (proxy.internal.maxAgentNameLength)"),
        ("host_name", MAX_HOST_NAME_LENGTH, ""),
        ("launch_id", MAX_LAUNCH_ID_LENGTH, ""),
        ("software_version", MAX_SOFTWARE_VERSION_LENGTH, ""),
    ):
        value = getattr(hello, name)
        if len(value) > limit:
            return f"{name} of {len(value)} characters exceeds the limit of {limit}{key}"
        control = _CONTROL.search(value)
        if control is not None:
            # Names reach log lines, pages and HTTP headers.
            return f"{name} holds the control character 0x{ord(control.group()):02x}"
    if len(hello.labels) > MAX_HELLO_LABELS:
        return f"{len(hello.labels)} labels exceed the limit of {MAX_HELLO_LABELS}"
    for label, value in hello.labels.items():
        if len(label) > MAX_HELLO_LABEL_NAME_LENGTH:
            return (
                f"a label name of {len(label)} characters exceeds the limit of "
                f"{MAX_HELLO_LABEL_NAME_LENGTH}"
            )
        if len(value) > MAX_HELLO_LABEL_VALUE_LENGTH:
            return (
                f"a label value of {len(value)} characters exceeds the limit of "
                f"{MAX_HELLO_LABEL_VALUE_LENGTH}"
            )
    if hello.max_frame_bytes and hello.max_frame_bytes < HANDSHAKE_MAX_FRAME_BYTES:
        return (
            f"the agent accepts frames of at most {hello.max_frame_bytes} bytes, less than "
            f"the {HANDSHAKE_MAX_FRAME_BYTES} a scrape request may need; "
            f"raise agent.internal.maxFrameBytes"
        )
    return None
