# -*- test-case-name: promtwist.test.test_admission -*-
"""
Who may open a link on the proxy's agent port, what a Hello may say, and
how many connections the proxy's ports may hold in its open-file limit.

Everything here is about peers that have not proved anything yet, so each
bound is there to keep what they can cost the proxy small: connections still
in their handshake, and the scrape port's connections, are capped in total
and per source address, an address that keeps failing authentication is
refused for a while without its token being checked, and a Hello's fields
have bounded sizes.
"""

from __future__ import annotations

import ipaddress
import re
import resource
from collections import OrderedDict, defaultdict
from functools import lru_cache

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol

from promtwist.addresses import IPAddress, peerAddress
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
    return _sourceOf(ip)


@lru_cache(maxsize=4096)
def _sourceOf(ip: IPAddress) -> str:
    """
    L{hostOf} an address, remembered: a PushProx client's every poll and
    push asks it, and spelling an address or its /64 costs more than the
    rest of the check. Bounded, however many peers come and go.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressCaps:
    """
    Connections of one kind counted in total and per source address
    (L{hostOf}), so that one host holding places cannot keep everyone
    else out: the agent port's handshakes
    (C{proxy.internal.maxPendingHandshakes} and
    C{proxy.internal.maxPendingHandshakesPerAddress}), the scrape port's
    connections (C{proxy.http.maxConnections} and
    C{proxy.http.maxConnectionsPerAddress}).

    @ivar kind: names the refusals: C{kind} at the total cap,
        C{kind_per_address} at a source's (the agent port counts its
        refusals in C{proxy_rejections_total} by these).
    @ivar limit: what the refusal says the limit is of.
    @ivar keys: the settings of the total and the per-address cap.
    """

    def __init__(
        self, total: int, perAddress: int, *, kind: str, limit: str, keys: tuple[str, str]
    ) -> None:
        self.total = total
        self.perAddress = perAddress
        self.kind = kind
        self.limit = limit
        self.keys = keys
        self._count = 0
        self._byHost: defaultdict[str, int] = defaultdict(int)

    def __len__(self) -> int:
        return self._count

    def refusal(self, host: str) -> tuple[str, str] | None:
        """
        Why a new connection from C{host} may not take a place, as a metric
        label and a message for the peer and the log; L{None} if it may.
        """
        if self._count >= self.total:
            return (
                self.kind,
                f"the proxy is at its {self.limit} limit of {self.total} ({self.keys[0]})",
            )
        if self._byHost.get(host, 0) >= self.perAddress:
            return (
                f"{self.kind}_per_address",
                f"the proxy is at its {self.limit} limit of {self.perAddress} for "
                f"{host or '?'} ({self.keys[1]})",
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

    def __init__(self, settings: ProxySettings) -> None:
        #: Lowered when started to what the open-file limit leaves
        #: (L{grpcConnections}).
        self.total = settings.max_grpc_connections
        self.open = 0
        self.unauthenticated = AddressCaps(
            settings.max_unauthenticated_grpc_connections,
            settings.max_unauthenticated_grpc_connections_per_address,
            kind="unauthenticated_grpc_connections",
            limit="unauthenticated gRPC connection",
            keys=(
                "proxy.internal.maxUnauthenticatedGrpcConnections",
                "proxy.internal.maxUnauthenticatedGrpcConnectionsPerAddress",
            ),
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


def undecidedConnections(settings: ProxySettings) -> AddressCaps:
    """
    The agent port's caps on connections whose first bytes have not yet
    said which protocol they speak (L{promtwist.proxy.agentport}): what the
    native and gRPC admissions take together.
    """
    grpcOn = settings.agent_grpc_enabled
    return AddressCaps(
        settings.max_pending_handshakes
        + settings.max_waiting_handshakes
        + (settings.max_unauthenticated_grpc_connections if grpcOn else 0),
        max(
            settings.max_pending_handshakes_per_address,
            settings.max_unauthenticated_grpc_connections_per_address if grpcOn else 0,
        ),
        kind="undecided_connections",
        limit="undecided connection",
        keys=(
            "proxy.internal.maxPendingHandshakes + maxWaitingHandshakes"
            + (" + maxUnauthenticatedGrpcConnections" if grpcOn else ""),
            "proxy.internal.maxPendingHandshakesPerAddress"
            + (" or maxUnauthenticatedGrpcConnectionsPerAddress" if grpcOn else ""),
        ),
    )


def pendingHandshakes(settings: ProxySettings) -> AddressCaps:
    """
    The agent port's caps on connections that have not completed their
    handshake.
    """
    return AddressCaps(
        settings.max_pending_handshakes,
        settings.max_pending_handshakes_per_address,
        kind="pending_handshakes",
        limit="handshake",
        keys=(
            "proxy.internal.maxPendingHandshakes",
            "proxy.internal.maxPendingHandshakesPerAddress",
        ),
    )


def scrapePortConnections(settings: ProxySettings, total: int) -> AddressCaps:
    """
    The scrape port's caps on open connections: C{total} (see
    L{scrapeConnections}) and C{proxy.http.maxConnectionsPerAddress}.
    """
    return AddressCaps(
        total,
        settings.http_max_connections_per_address,
        kind="scrape_connections",
        limit="scrape-port connection",
        keys=("proxy.http.maxConnections", "proxy.http.maxConnectionsPerAddress"),
    )


# Open files the proxy needs besides its agent links, the connections
# waiting for a handshake place and the scrape port's connections: listening
# ports, logs, metrics and admin connections, target files.
FILES_RESERVED = 256

# The agent port's gRPC connections when the open-file limit leaves less
# room for them.
MIN_GRPC_CONNECTIONS = 64

# The scrape port's connections when the open-file limit leaves less room
# for them (it then does not hold every agent either, and says so).
MIN_SCRAPE_CONNECTIONS = 64


def filesNeeded(settings: ProxySettings) -> int:
    """
    The open files the proxy's ports may use at their caps, and the others:
    every agent link (a PushProx client's poll holds a scrape-port
    connection instead, counted in C{proxy.http.maxConnections}), every
    gRPC connection, every handshake and waiting connection, every
    scrape-port connection.
    """
    return (
        grpcFiles(settings)
        + settings.max_agents
        + settings.max_pending_handshakes
        + settings.max_waiting_handshakes
        + settings.http_max_connections
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


def _besideAgents(settings: ProxySettings, openFiles: int) -> int:
    # What the open-file limit leaves beside every agent link, every
    # handshake and FILES_RESERVED.
    return openFiles - settings.max_agents - settings.max_pending_handshakes - FILES_RESERVED


def grpcConnections(settings: ProxySettings, openFiles: int) -> int:
    """
    How many gRPC connections the agent port may hold at once: as many as
    C{proxy.internal.maxGrpcConnections} allows, and the open-file limit
    C{openFiles} leaves beside everything else L{filesNeeded} counts (but
    at least L{MIN_GRPC_CONNECTIONS}, or the setting if lower): sized last,
    so that a small limit lowers them rather than the scrape port or the
    native agents' waiting room.
    """
    room = openFiles - (filesNeeded(settings) - grpcFiles(settings))
    return min(settings.max_grpc_connections, max(room, MIN_GRPC_CONNECTIONS))


def scrapeConnections(settings: ProxySettings, openFiles: int) -> int:
    """
    How many connections the scrape port may hold at once: as many as
    C{proxy.http.maxConnections} allows, and the open-file limit
    C{openFiles} leaves beside every agent, every handshake and
    L{FILES_RESERVED} (but at least L{MIN_SCRAPE_CONNECTIONS}, or the
    setting if lower, so that a proxy with a small limit still serves).
    Each holds a file: were they to exhaust the limit, no port of the proxy
    could accept anything.
    """
    wanted = settings.http_max_connections
    room = _besideAgents(settings, openFiles)
    return min(wanted, max(room, MIN_SCRAPE_CONNECTIONS))


def waitingRoom(settings: ProxySettings, openFiles: int) -> int:
    """
    How many connections may wait for a handshake place: as many as
    C{proxy.internal.maxWaitingHandshakes} allows, and the open-file limit
    C{openFiles} leaves beside every agent, every handshake, the scrape
    port's connections (L{scrapeConnections}) and L{FILES_RESERVED}. Each
    waiting connection holds a file too.
    """
    room = _besideAgents(settings, openFiles) - scrapeConnections(settings, openFiles)
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
        if record is not None and record.blockedUntil > now:
            # A failure while refused (a throttled call is one) neither
            # ends the backoff, as a new window would, nor extends it.
            self._table.move_to_end(host)
            return
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
