# -*- test-case-name: promtwist.test.test_access -*-
"""
Credentials on the scrape port: basic auth and a bearer token, the two
ways Prometheus' C{scrape_configs} and C{http_sd_configs} can authenticate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from twisted.logger import Logger

from promtwist.config.settings import ProxySettings
from promtwist.logs import observer
from promtwist.proxy.answers import textAnswer
from promtwist.proxy.exchange import Exchange
from promtwist.proxy.proxyurl import isProxyRequest

REALM = "promtwist"

_log = Logger(observer=observer)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _matches(presented: bytes, expectedDigest: bytes) -> bool:
    """
    Whether C{presented} is the secret behind C{expectedDigest}, in time
    that says nothing about how much of it is right: digests have one
    length whatever the secret's, and L{hmac.compare_digest} reads them all.
    """
    return hmac.compare_digest(_digest(presented), expectedDigest)


class RequireCredentials:
    """
    The scrape port's credentials check, which the server applies to every
    request before routing it: a request goes on only with
    C{Authorization: Basic} with the configured username and password, or
    C{Authorization: Bearer} with the configured token, whichever of the two
    are configured. Anything else gets 401 with a C{WWW-Authenticate}
    challenge for each accepted scheme and a one-line reason.

    A request sent to the port as a proxy (C{proxy_url}: an absolute URI,
    or C{CONNECT})
    is checked the same way, but by its C{Proxy-Authorization} header, with
    407 and C{Proxy-Authenticate} challenges, as RFC 9110 has proxies do:
    there C{Authorization} is Prometheus' credential for the target, and
    goes on (if C{proxy.http.forwardAuthorization}) untouched;
    C{Proxy-Authorization} never does.

    The C{Authorization} header is removed from an admitted request before
    it goes on. The scrape handler forwards Prometheus' C{Authorization}
    header to targets; here that header carries the proxy's own
    credentials, which must never reach a target or the agent in front of
    it. So with credentials required on the scrape port, targets get no
    C{Authorization} header from Prometheus: give them their credentials in
    the agent's C{pathConfigs} URLs instead.
    """

    def __init__(
        self,
        *,
        username: str = "",
        password: str = "",
        bearerToken: str = "",
    ) -> None:
        """
        @param username: the basic-auth username; with C{password}, or not
            at all.
        @param password: the basic-auth password.
        @param bearerToken: the bearer token.
        @raise ValueError: if only half of the basic-auth pair is given, or
            no credentials at all.
        """
        if bool(username) != bool(password):
            raise ValueError("basic auth needs both a username and a password")
        if not (username or bearerToken):
            raise ValueError("no credentials to require")
        # Only digests are kept, for comparisons that do not leak lengths.
        self._basic = (
            (_digest(username.encode("utf-8")), _digest(password.encode("utf-8")))
            if username
            else None
        )
        self._bearer = _digest(bearerToken.encode("utf-8")) if bearerToken else None
        self._challenges = []
        schemes = []
        if self._basic is not None:
            self._challenges.append(f'Basic realm="{REALM}", charset="UTF-8"'.encode("ascii"))
            schemes.append("basic auth")
        if self._bearer is not None:
            self._challenges.append(f'Bearer realm="{REALM}"'.encode("ascii"))
            schemes.append("a bearer token")
        self._accepted = " or ".join(schemes)

    def __call__(self, exchange: Exchange) -> bool:
        """
        Let C{exchange} through, without the header its credentials came
        in, or answer it with 401 (407 for a proxy request), whatever its
        method.
        """
        proxied = isProxyRequest(exchange.method, exchange.path)
        header, status, challenge, named = (
            (b"proxy-authorization", 407, b"Proxy-Authenticate", "Proxy-Authorization")
            if proxied
            else (b"authorization", 401, b"WWW-Authenticate", "Authorization")
        )
        problem = self._problem(exchange, header, named)
        if problem is None:
            del exchange.headers[header]
            return True
        _log.debug(
            "{client}: {status} {problem}",
            client=str(exchange.client),
            status=status,
            problem=problem,
        )
        for value in self._challenges:
            exchange.addHeader(challenge, value)
        textAnswer(exchange, status, problem)
        return False

    def _problem(self, exchange: Exchange, header: bytes, named: str) -> str | None:
        """
        What is wrong with the credentials in C{header} (spelled C{named}),
        or L{None} if they are good.
        """
        value = exchange.headers.get(header)
        if value is None:
            return f"credentials required: {self._accepted}"
        if header in exchange.repeated:
            return f"more than one {named} header"
        scheme, _, credentials = value.strip().partition(b" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == b"basic" and self._basic is not None:
            good = self._basicMatches(credentials, *self._basic)
        elif scheme == b"bearer" and self._bearer is not None:
            good = _matches(credentials, self._bearer)
        else:
            return f"unsupported authorization scheme: this port accepts {self._accepted}"
        return None if good else "invalid credentials"

    @staticmethod
    def _basicMatches(credentials: bytes, username: bytes, password: bytes) -> bool:
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except binascii.Error:
            return False
        user, colon, secret = decoded.partition(b":")
        # Both compared whatever the first gives, so that timing does not
        # tell a wrong username from a wrong password.
        userGood = _matches(user, username)
        secretGood = _matches(secret, password)
        return bool(colon) and userGood and secretGood


def guarded(settings: ProxySettings) -> RequireCredentials | None:
    """
    The scrape port's credentials check (C{proxy.http.basicAuth.*},
    C{proxy.http.bearerToken}), or L{None} when none are configured, so
    that an open port pays nothing for it.
    """
    if not (settings.http_basic_auth_username or settings.http_bearer_token):
        return None
    return RequireCredentials(
        username=settings.http_basic_auth_username,
        password=settings.http_basic_auth_password,
        bearerToken=settings.http_bearer_token,
    )
