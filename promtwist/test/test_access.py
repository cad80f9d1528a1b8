"""
Tests for L{promtwist.proxy.access}: basic auth and bearer tokens on the
scrape port.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from promtwist.config import ProxySettings
from promtwist.proxy.access import RequireCredentials, guarded
from promtwist.webguard import HardenedSite


class Recorder(Resource):
    """
    A leaf that records the C{Authorization} header it was given and the
    path it was reached by.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Sequence[bytes] | None, list[bytes], list[bytes]]] = []

    def render(self, request: DummyRequest) -> bytes:
        self.seen.append(
            (
                request.requestHeaders.getRawHeaders(b"Authorization"),
                list(request.prepath),
                list(request.postpath),
            )
        )
        return b"scraped\n"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def status(request: DummyRequest) -> int:
    # DummyRequest leaves the code unset unless a resource sets it.
    return request.responseCode or 200


def get(resource: IResource, path: bytes = b"app1_metrics", *authorization: str) -> DummyRequest:
    """
    Traverse and render C{/path} as a site would, with the given
    C{Authorization} headers.
    """
    request = DummyRequest(path.split(b"/"))
    if authorization:
        request.requestHeaders.setRawHeaders(b"Authorization", list(authorization))
    result = getChildForRequest(resource, request).render(request)
    assert isinstance(result, bytes)
    request.write(result)
    request.finish()
    return request


class GuardedTests(SynchronousTestCase):
    """
    L{guarded} wraps the scrape resource only when credentials are
    configured.
    """

    def test_nothingConfigured(self) -> None:
        resource = Recorder()
        self.assertIs(guarded(resource, ProxySettings()), resource)

    def test_basic(self) -> None:
        settings = ProxySettings(http_basic_auth_username="u", http_basic_auth_password="p")
        self.assertIsInstance(guarded(Recorder(), settings), RequireCredentials)

    def test_bearer(self) -> None:
        settings = ProxySettings(http_bearer_token="t")
        self.assertIsInstance(guarded(Recorder(), settings), RequireCredentials)

    def test_incomplete(self) -> None:
        self.assertRaises(ValueError, RequireCredentials, Recorder())
        self.assertRaises(ValueError, RequireCredentials, Recorder(), username="u")
        self.assertRaises(ValueError, RequireCredentials, Recorder(), password="p")


class CredentialTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.target = Recorder()
        self.both = RequireCredentials(
            self.target, username="prometheus", password="pässwörd", bearerToken="s3cret-token"
        )

    def assertUnauthorized(
        self, request: DummyRequest, reason: str, challenges: list[bytes] | None = None
    ) -> None:
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"WWW-Authenticate"),
            challenges
            or [b'Basic realm="promtwist", charset="UTF-8"', b'Bearer realm="promtwist"'],
        )
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"Content-Type"),
            [b"text/plain; charset=utf-8"],
        )
        self.assertEqual(b"".join(request.written), reason.encode() + b"\n")
        self.assertEqual(self.target.seen, [])

    def assertAdmitted(self, request: DummyRequest) -> None:
        self.assertEqual(status(request), 200)
        self.assertEqual(b"".join(request.written), b"scraped\n")
        self.assertEqual(len(self.target.seen), 1)

    def test_basicAccepted(self) -> None:
        self.assertAdmitted(get(self.both, b"app1_metrics", basic("prometheus", "pässwörd")))

    def test_bearerAccepted(self) -> None:
        self.assertAdmitted(get(self.both, b"app1_metrics", "Bearer s3cret-token"))

    def test_schemeCaseInsensitive(self) -> None:
        self.assertAdmitted(get(self.both, b"app1_metrics", "bEARER  s3cret-token "))

    def test_authorizationStripped(self) -> None:
        """
        The proxy's own credentials never reach the scrape resource, which
        would forward them to targets; other headers do.
        """
        request = DummyRequest([b"app1_metrics"])
        request.requestHeaders.setRawHeaders(b"Authorization", [b"Bearer s3cret-token"])
        request.requestHeaders.setRawHeaders(b"Accept", [b"text/plain"])
        getChildForRequest(self.both, request).render(request)
        self.assertEqual(self.target.seen[0][0], None)
        self.assertEqual(request.requestHeaders.getRawHeaders(b"Accept"), [b"text/plain"])

    def test_missing(self) -> None:
        self.assertUnauthorized(
            get(self.both), "credentials required: basic auth or a bearer token"
        )

    def test_wrongPassword(self) -> None:
        self.assertUnauthorized(
            get(self.both, b"app1_metrics", basic("prometheus", "password")),
            "invalid credentials",
        )

    def test_wrongUsername(self) -> None:
        self.assertUnauthorized(
            get(self.both, b"app1_metrics", basic("grafana", "pässwörd")), "invalid credentials"
        )

    def test_wrongToken(self) -> None:
        """
        Near misses of every length are refused alike.
        """
        for token in ["s3cret-tokeN", "s3cret-toke", "s3cret-token2", "", "x" * 1000]:
            self.assertUnauthorized(
                get(self.both, b"app1_metrics", "Bearer " + token), "invalid credentials"
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
            self.assertUnauthorized(get(self.both, b"app1_metrics", value), "invalid credentials")

    def test_colonInPassword(self) -> None:
        guard = RequireCredentials(self.target, username="u", password="a:b")
        self.assertAdmitted(get(guard, b"app1_metrics", basic("u", "a:b")))

    def test_unconfiguredScheme(self) -> None:
        """
        A bearer token is no good where only basic auth is configured, and
        the challenge offers basic auth only.
        """
        guard = RequireCredentials(self.target, username="u", password="p")
        self.assertUnauthorized(
            get(guard, b"app1_metrics", "Bearer p"),
            "unsupported authorization scheme: this port accepts basic auth",
            [b'Basic realm="promtwist", charset="UTF-8"'],
        )

    def test_bearerOnlyChallenge(self) -> None:
        guard = RequireCredentials(self.target, bearerToken="t")
        self.assertUnauthorized(
            get(guard, b"app1_metrics", basic("u", "t")),
            "unsupported authorization scheme: this port accepts a bearer token",
            [b'Bearer realm="promtwist"'],
        )

    def test_severalHeaders(self) -> None:
        """
        Two C{Authorization} headers are ambiguous, even if one is right.
        """
        self.assertUnauthorized(
            get(self.both, b"app1_metrics", "Bearer s3cret-token", "Bearer wrong"),
            "more than one Authorization header",
        )


class TraversalTests(SynchronousTestCase):
    """
    The wrapped resource sees the request as it would without the guard.
    """

    def test_leaf(self) -> None:
        target = Recorder()
        guard = RequireCredentials(target, bearerToken="t")
        get(guard, b"a/b/metrics", "Bearer t")
        self.assertEqual(target.seen, [(None, [], [b"a", b"b", b"metrics"])])

    def test_tree(self) -> None:
        leaf = Recorder()
        root = Resource()
        root.putChild(b"admin", leaf)
        guard = RequireCredentials(root, bearerToken="t")
        get(guard, b"admin/ping", "Bearer t")
        self.assertEqual(leaf.seen, [(None, [b"admin"], [b"ping"])])

    def test_renderedDirectly(self) -> None:
        """
        Mounted where nothing of the path is left, the guard renders the
        wrapped resource itself, after the same check.
        """
        target = Recorder()
        guard = RequireCredentials(target, bearerToken="t")
        parent = Resource()
        parent.putChild(b"metrics", guard)
        self.assertEqual(status(get(parent, b"metrics", "Bearer wrong")), 401)
        self.assertEqual(status(get(parent, b"metrics", "Bearer t")), 200)
        self.assertEqual(target.seen, [(None, [b"metrics"], [])])


class SiteTests(SynchronousTestCase):
    """
    Wired as the scrape port wires it: L{guarded} under a L{HardenedSite}.
    """

    def test_overHTTP(self) -> None:
        target = Recorder()
        settings = ProxySettings(http_bearer_token="t")
        site = HardenedSite(
            guarded(target, settings),
            maxHeaderBytes=settings.http_max_header_bytes,
            headerTimeout=settings.http_header_timeout_secs,
            idleTimeout=settings.http_idle_timeout_secs,
            reactor=Clock(),
        )
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        channel = site.buildProtocol(peer)
        assert channel is not None
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /app1_metrics HTTP/1.1\r\nHost: proxy\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "), transport.value())
        # The reason is in the status line, where Prometheus shows it.
        self.assertIn(b"bearer token", transport.value().split(b"\r\n")[0].lower())
        self.assertIn(b'WWW-Authenticate: Bearer realm="promtwist"\r\n', transport.value())
        transport.clear()
        channel.dataReceived(
            b"GET /app1_metrics HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer t\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(target.seen, [(None, [], [b"app1_metrics"])])
        channel.connectionLost()
