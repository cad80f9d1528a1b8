"""
Tests for L{promtwist.proxy.access}: basic auth and bearer tokens on the
scrape port, checked by the scrape port's server before it routes a request.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import ProxySettings
from promtwist.proxy.access import RequireCredentials, guarded
from promtwist.proxy.exchange import Exchange
from promtwist.test.scrapeport import Response, connect, factory, parseResponse


class Recorder:
    """
    A handler that records the C{Authorization} header it was given and
    the path it was asked for.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[bytes | None, bytes]] = []
        self.exchanges: list[Exchange] = []

    def __call__(self, exchange: Exchange) -> None:
        self.seen.append((exchange.headers.get(b"authorization"), exchange.path))
        self.exchanges.append(exchange)
        exchange.finishWith(b"scraped\n")


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def get(
    guard: RequireCredentials,
    target: Recorder,
    path: bytes = b"/app1_metrics",
    *authorization: str,
    method: bytes = b"GET",
) -> Response:
    """
    Ask the scrape port for C{path} with the given C{Authorization}
    headers, and read its answer.
    """
    connection, transport = connect(factory(target, guard=guard))
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: proxy"]
    lines += [b"Authorization: " + value.encode("utf-8") for value in authorization]
    connection.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
    return parseResponse(transport.value())


class GuardedTests(SynchronousTestCase):
    """
    L{guarded} makes a check only when credentials are configured.
    """

    def test_nothingConfigured(self) -> None:
        self.assertIsNone(guarded(ProxySettings()))

    def test_basic(self) -> None:
        settings = ProxySettings(http_basic_auth_username="u", http_basic_auth_password="p")
        self.assertIsInstance(guarded(settings), RequireCredentials)

    def test_bearer(self) -> None:
        settings = ProxySettings(http_bearer_token="t")
        self.assertIsInstance(guarded(settings), RequireCredentials)

    def test_incomplete(self) -> None:
        self.assertRaises(ValueError, RequireCredentials)
        self.assertRaises(ValueError, RequireCredentials, username="u")
        self.assertRaises(ValueError, RequireCredentials, password="p")


class CredentialTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.target = Recorder()
        self.both = RequireCredentials(
            username="prometheus", password="pässwörd", bearerToken="s3cret-token"
        )

    def assertUnauthorized(
        self, response: Response, reason: str, challenges: list[bytes] | None = None
    ) -> None:
        self.assertEqual(response.status, 401)
        self.assertEqual(
            response.repeated(b"www-authenticate"),
            challenges
            or [b'Basic realm="promtwist", charset="UTF-8"', b'Bearer realm="promtwist"'],
        )
        self.assertEqual(response.headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertEqual(response.body, reason.encode() + b"\n")
        self.assertEqual(self.target.seen, [])

    def assertAdmitted(self, response: Response) -> None:
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"scraped\n")
        self.assertEqual(len(self.target.seen), 1)

    def test_basicAccepted(self) -> None:
        self.assertAdmitted(
            get(self.both, self.target, b"/app1_metrics", basic("prometheus", "pässwörd"))
        )

    def test_bearerAccepted(self) -> None:
        self.assertAdmitted(get(self.both, self.target, b"/app1_metrics", "Bearer s3cret-token"))

    def test_schemeCaseInsensitive(self) -> None:
        self.assertAdmitted(get(self.both, self.target, b"/app1_metrics", "bEARER  s3cret-token "))

    def test_authorizationStripped(self) -> None:
        """
        The proxy's own credentials never reach the scrape resource, which
        would forward them to targets; other headers do.
        """
        connection, _ = connect(factory(self.target, guard=self.both))
        connection.dataReceived(
            b"GET /app1_metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n"
            b"Accept: text/plain\r\n\r\n"
        )
        self.assertEqual(self.target.seen[0][0], None)
        self.assertEqual(self.target.exchanges[0].headers.get(b"accept"), b"text/plain")

    def test_missing(self) -> None:
        self.assertUnauthorized(
            get(self.both, self.target), "credentials required: basic auth or a bearer token"
        )

    def test_wrongPassword(self) -> None:
        self.assertUnauthorized(
            get(self.both, self.target, b"/app1_metrics", basic("prometheus", "password")),
            "invalid credentials",
        )

    def test_wrongUsername(self) -> None:
        self.assertUnauthorized(
            get(self.both, self.target, b"/app1_metrics", basic("grafana", "pässwörd")),
            "invalid credentials",
        )

    def test_wrongToken(self) -> None:
        """
        Near misses of every length are refused alike.
        """
        for token in ["s3cret-tokeN", "s3cret-toke", "s3cret-token2", "", "x" * 1000]:
            self.assertUnauthorized(
                get(self.both, self.target, b"/app1_metrics", "Bearer " + token),
                "invalid credentials",
            )

    def test_secretsNotKept(self) -> None:
        """
        Only digests of the credentials are kept, so no comparison depends
        on how long they are, and no memory dump shows them.
        """
        kept = repr(vars(self.both)).encode("utf-8")
        for secret in [b"prometheus", "pässwörd".encode(), b"s3cret-token"]:
            self.assertNotIn(secret, kept)

    def test_malformedBasic(self) -> None:
        for value in ["Basic !!!", "Basic " + base64.b64encode(b"no colon").decode(), "Basic"]:
            self.assertUnauthorized(
                get(self.both, self.target, b"/app1_metrics", value), "invalid credentials"
            )

    def test_colonInPassword(self) -> None:
        guard = RequireCredentials(username="u", password="a:b")
        self.assertAdmitted(get(guard, self.target, b"/app1_metrics", basic("u", "a:b")))

    def test_unconfiguredScheme(self) -> None:
        """
        A bearer token is no good where only basic auth is configured, and
        the challenge offers basic auth only.
        """
        guard = RequireCredentials(username="u", password="p")
        self.assertUnauthorized(
            get(guard, self.target, b"/app1_metrics", "Bearer p"),
            "unsupported authorization scheme: this port accepts basic auth",
            [b'Basic realm="promtwist", charset="UTF-8"'],
        )

    def test_bearerOnlyChallenge(self) -> None:
        guard = RequireCredentials(bearerToken="t")
        self.assertUnauthorized(
            get(guard, self.target, b"/app1_metrics", basic("u", "t")),
            "unsupported authorization scheme: this port accepts a bearer token",
            [b'Bearer realm="promtwist"'],
        )

    def test_severalHeaders(self) -> None:
        """
        Two C{Authorization} headers are ambiguous, even if one is right.
        """
        self.assertUnauthorized(
            get(self.both, self.target, b"/app1_metrics", "Bearer s3cret-token", "Bearer wrong"),
            "more than one Authorization header",
        )

    def test_anyMethod(self) -> None:
        """
        Without credentials, any method gets the 401 first: the port says
        nothing else to a stranger.
        """
        self.assertUnauthorized(
            get(self.both, self.target, b"/app1_metrics", method=b"POST"),
            "credentials required: basic auth or a bearer token",
        )

    def test_wholePath(self) -> None:
        """
        The handler sees the path as it would without the check.
        """
        get(self.both, self.target, b"/a/b/metrics?x=1", "Bearer s3cret-token")
        self.assertEqual(self.target.seen, [(None, b"/a/b/metrics")])


class ProxyRequestTests(SynchronousTestCase):
    """
    A C{proxy_url} request (an absolute URI) proves itself with
    C{Proxy-Authorization}; its C{Authorization} is the target's.
    """

    def setUp(self) -> None:
        self.target = Recorder()
        self.guard = RequireCredentials(username="prometheus", password="pw")

    def ask(self, *headers: bytes) -> Response:
        connection, transport = connect(factory(self.target, guard=self.guard))
        lines = [b"GET http://node1:9100/metrics HTTP/1.1", b"Host: node1:9100", *headers]
        connection.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        return parseResponse(transport.value())

    def test_admitted(self) -> None:
        """
        Good proxy credentials admit the request without themselves; the
        target's C{Authorization} goes on untouched.
        """
        response = self.ask(
            b"Proxy-Authorization: " + basic("prometheus", "pw").encode(),
            b"Authorization: Bearer for-the-target",
        )
        self.assertEqual(response.status, 200)
        (exchange,) = self.target.exchanges
        self.assertEqual(exchange.headers.get(b"authorization"), b"Bearer for-the-target")
        self.assertNotIn(b"proxy-authorization", exchange.headers)

    def test_required(self) -> None:
        """
        Without proxy credentials (the target's do not count) it is a 407
        with a C{Proxy-Authenticate} challenge.
        """
        for headers in [(), (b"Authorization: " + basic("prometheus", "pw").encode(),)]:
            response = self.ask(*headers)
            self.assertEqual(response.status, 407)
            self.assertEqual(
                response.repeated(b"proxy-authenticate"),
                [b'Basic realm="promtwist", charset="UTF-8"'],
            )
            self.assertEqual(response.body, b"credentials required: basic auth\n")
        self.assertEqual(self.target.seen, [])

    def test_wrong(self) -> None:
        response = self.ask(b"Proxy-Authorization: " + basic("prometheus", "no").encode())
        self.assertEqual((response.status, response.body), (407, b"invalid credentials\n"))

    def test_repeated(self) -> None:
        value = b"Proxy-Authorization: " + basic("prometheus", "pw").encode()
        response = self.ask(value, value)
        self.assertEqual(response.status, 407)
        self.assertEqual(response.body, b"more than one Proxy-Authorization header\n")

    def test_connect(self) -> None:
        """
        C{CONNECT} is a proxy request too: 407 without proxy credentials,
        the method's own refusal with them.
        """
        for headers, status in [
            ((), 407),
            ((b"Proxy-Authorization: " + basic("prometheus", "pw").encode(),), 405),
        ]:
            connection, transport = connect(factory(self.target, guard=self.guard))
            lines = [b"CONNECT node1:9443 HTTP/1.1", b"Host: node1:9443", *headers]
            connection.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
            self.assertEqual(parseResponse(transport.value()).status, status)
