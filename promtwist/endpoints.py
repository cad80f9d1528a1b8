"""
Where a promtwist port listens: the dual-stack wildcard by default, or any
Twisted server endpoint description an operator gives (C{tcp:}, C{tcp6:},
C{unix:}, C{ssl:}, C{systemd:}).

prometheus-proxy binds the wildcard of both address families, so C{[::1]},
C{127.0.0.1} and IPv6-only clusters all reach it; so does promtwist's
default here, and a host without IPv6 gets the IPv4 wildcard instead of an
error.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, execute
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLContextFactory,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

#: The endpoint types a C{*.listen} setting may name.
KINDS = ("tcp", "tcp6", "unix", "ssl", "systemd")
#: The longest unix socket path Linux binds (sun_path less its NUL).
UNIX_PATH_MAX = 107
#: A unix socket's permissions unless its description says: its user and
#: group may connect (Twisted's own default, 0666, lets every local user).
UNIX_MODE = 0o660


class _DualStackPort(tcp.Port):
    """
    A TCP port on C{::} that also accepts IPv4 clients (as IPv4-mapped
    addresses), whatever the host's C{net.ipv6.bindv6only} default.
    """

    def createInternetSocket(self) -> socket.socket:
        s: socket.socket = super().createInternetSocket()
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        return s


@implementer(IStreamServerEndpoint)
class DualStackEndpoint:
    """
    Listen on every address of both families with one socket. Twisted's
    C{tcp6:} endpoint leaves C{IPV6_V6ONLY} to the host's default, which
    some distributions set to IPv6 only.
    """

    def __init__(self, reactor: Any, port: int, backlog: int = 50) -> None:
        self._reactor = reactor
        self._port = port
        self._backlog = backlog

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        def bind() -> IListeningPort:
            port = _DualStackPort(self._port, protocolFactory, self._backlog, "::", self._reactor)
            port.startListening()
            return port

        return execute(bind)


def ipv6Available() -> bool:
    """
    Whether this host can open an IPv6 socket at all (not so with
    C{ipv6.disable=1} or a kernel without IPv6).
    """
    if not socket.has_ipv6:
        return False
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EINVAL):
            return False
        raise
    return True


@dataclass(frozen=True)
class Where:
    """
    An endpoint to listen on, and what is needed to check and describe it.

    @ivar endpoint: what binds.
    @ivar wanted: the address as messages name it before it is bound, such
        as C{[::]:8080} or C{unix:/run/promtwist/scrape.sock}.
    @ivar probe: the socket family and address L{probe} tries, or L{None}
        when nothing can be tried before binding (port 0, an inherited
        socket, a unix path: see L{probe}).
    @ivar dualStack: whether C{probe} must accept IPv4 too.
    @ivar tls: the TLS settings of an C{ssl:} description, served through
        promtwist's own TLS layer (L{promtwist.listen.withTLS}).
    @ivar unixPath: the socket file of a C{unix:} description.
    """

    endpoint: IStreamServerEndpoint
    wanted: str
    probe: tuple[int, tuple[Any, ...]] | None = None
    dualStack: bool = False
    tls: IOpenSSLContextFactory | None = None
    unixPath: str | None = None


def wildcard(reactor: Any, port: int, backlog: int = 50) -> Where:
    """
    Every address on C{port}: both families on one socket, or IPv4 alone
    on a host without IPv6.
    """
    probe = None if port == 0 else port
    if ipv6Available():
        return Where(
            DualStackEndpoint(reactor, port, backlog),
            f"[::]:{port}",
            None if probe is None else (socket.AF_INET6, ("::", port)),
            dualStack=True,
        )
    return Where(
        TCP4ServerEndpoint(reactor, port, backlog),
        f"0.0.0.0:{port}",
        None if probe is None else (socket.AF_INET, ("", port)),
    )


def onInterface(reactor: Any, port: int, interface: str, backlog: int = 50) -> Where:
    """
    One address on C{port}: an IPv4 or IPv6 literal, or C{::} (the IPv6
    wildcard, with IPv4 as the host's default decides).
    """
    six = ":" in interface
    endpoint = (TCP6ServerEndpoint if six else TCP4ServerEndpoint)(
        reactor, port, backlog, interface
    )
    family = socket.AF_INET6 if six else socket.AF_INET
    return Where(
        endpoint,
        f"[{interface}]:{port}" if six else f"{interface}:{port}",
        None if port == 0 else (family, (interface, port)),
    )


# What a process needs to have been handed sockets, as systemd 227 and later
# hand them over; Twisted reads them once, at import.
_INHERITED = (
    " (sockets are inherited from systemd with LISTEN_PID, LISTEN_FDS and"
    " LISTEN_FDNAMES; a .socket unit sets them)"
)


class BadDescription(ValueError):
    """
    A C{*.listen} value Twisted cannot make an endpoint of, or not one of
    L{KINDS}; the message says which and why, without the value.
    """


def kindOf(description: str) -> str:
    """
    The endpoint type a description names, lower-cased.

    @raise BadDescription: when it is not one of L{KINDS}.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in KINDS:
        raise BadDescription(f"the endpoint type must be one of {', '.join(KINDS)}")
    return kind


def _keywords(description: str) -> set[str]:
    """
    The names of the C{name=value} arguments of an endpoint description,
    split as Twisted splits it (at colons not escaped by a backslash): a
    path holding C{mode=} is no C{mode} argument.
    """
    names = set()
    for argument in re.split(r"(?<!\\):", description)[1:]:
        name, equals, _ = argument.partition("=")
        if equals:
            names.add(name)
    return names


@dataclass(frozen=True)
class _Asked:
    """
    What an endpoint asked its reactor to bind, in the arguments of
    C{IReactorTCP.listenTCP}, C{IReactorSSL.listenSSL} or
    C{IReactorUNIX.listenUNIX}.

    @ivar address: the port number, or the unix socket's path.
    @ivar tls: the context factory C{listenSSL} was given.
    """

    address: int | str
    backlog: int
    interface: str = ""
    tls: IOpenSSLContextFactory | None = None
    mode: int = 0o666
    wantPID: bool = False


class _AskingReactor:
    """
    A reactor that binds nothing and keeps what it is asked to bind.

    Twisted reads a description into an endpoint that holds what it will
    bind only in private attributes; its C{listen} passes them on through
    the public reactor interfaces. Given this reactor, that C{listen} tells
    them to L{described}, which then builds the endpoint to use on the real
    reactor.
    """

    asked: _Asked | None = None

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> None:
        self.asked = _Asked(port, backlog, interface)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: IOpenSSLContextFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> None:
        self.asked = _Asked(port, backlog, interface, tls=contextFactory)

    def listenUNIX(
        self,
        address: str,
        factory: IProtocolFactory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: bool = False,
    ) -> None:
        self.asked = _Asked(address, backlog, mode=mode, wantPID=wantPID)


def _parsed(description: str) -> tuple[IStreamServerEndpoint, _Asked | None]:
    """
    The endpoint Twisted's parser reads from C{description}, made on an
    L{_AskingReactor}, and what it asks to bind (L{None} for an inherited
    socket, which is adopted, not bound, and closed by its C{listen}).

    @raise BadDescription: naming what is wrong with it.
    """
    asking = _AskingReactor()
    try:
        endpoint = serverFromString(asking, description)
    except IndexError:
        raise BadDescription(f"no such inherited socket{_INHERITED}") from None
    except KeyError as e:
        raise BadDescription(f"no inherited socket is named {e}{_INHERITED}") from None
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise BadDescription(str(e) or type(e).__name__) from None
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        return endpoint, None
    # Fires at once (the endpoint calls the reactor within listen) with
    # nothing: a failure would be an argument the parser let through.
    failures: list[Failure] = []
    endpoint.listen(Factory()).addErrback(failures.append)
    if failures:
        raise BadDescription(failures[0].getErrorMessage())
    assert asking.asked is not None, endpoint
    return endpoint, asking.asked


def described(reactor: Any, description: str, backlog: int = 50) -> Where:
    """
    The endpoint a Twisted server endpoint description names.

    The listener's C{backlog} applies unless the description sets its own,
    and a unix socket's C{mode} is L{UNIX_MODE} unless it sets one.
    An C{ssl:} description becomes plain TCP plus its TLS settings, for
    promtwist's TLS layer to serve: Twisted's own passes a refused
    connection on to TLS and leaves it open.

    @raise BadDescription: naming what is wrong with it.
    """
    kind = kindOf(description)
    given = _keywords(description)
    if kind != "systemd" and "backlog" not in given:
        description = f"{description}:backlog={backlog}"
    if kind == "unix" and "mode" not in given:
        description = f"{description}:mode={UNIX_MODE:o}"
    parsed, asked = _parsed(description)
    if asked is None:
        assert isinstance(parsed, AdoptedStreamServerEndpoint)
        inherited = AdoptedStreamServerEndpoint(reactor, parsed.fileno, parsed.addressFamily)
        return Where(inherited, f"inherited socket fd {parsed.fileno}")
    if isinstance(asked.address, str):
        path = asked.address
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise BadDescription(
                f"the socket path is longer than the {UNIX_PATH_MAX} bytes a unix address holds"
            )
        unix = UNIXServerEndpoint(reactor, path, asked.backlog, asked.mode, asked.wantPID)
        return Where(unix, f"unix:{path}", unixPath=path)
    interface = asked.interface or ("::" if kind == "tcp6" else "0.0.0.0")
    plain = onInterface(reactor, asked.address, interface, asked.backlog)
    return Where(plain.endpoint, plain.wanted, plain.probe, tls=asked.tls)


def probe(where: Where) -> None:
    """
    Try to bind what C{where} will bind, and let go at once.

    A unix path is checked for a directory to create it in; an inherited
    socket was checked when its description was read.

    @raise OSError: when the bind would fail.
    """
    if where.unixPath is not None:
        directory = os.path.dirname(os.path.abspath(where.unixPath))
        if not os.path.isdir(directory):
            raise OSError(errno.ENOENT, f"the directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, f"the directory {directory} is not writable")
        return
    if where.probe is None:
        return
    family, address = where.probe
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As Twisted's listening sockets do, so TIME_WAIT is no obstacle.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if where.dualStack:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(address)
    finally:
        s.close()
