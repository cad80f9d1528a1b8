"""
Tests for L{promtwist.proxy.auth}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from promtwist.config.settings import LEGACY_TOKEN_IDENTITY, Identity, ProxySettings
from promtwist.proxy.auth import ANONYMOUS, AuthenticationFailed, Authenticator

TEAMS = (
    Identity("team_a", "token-a", ("team_a_*", "shared/?x")),
    Identity("team_b", "token-b", ("b[1]",)),
    Identity("ops", "token-ops"),
)


class AuthenticateTests(SynchronousTestCase):
    def test_openByDefault(self) -> None:
        """
        With nothing configured any agent is let in, and the port is open.
        """
        auth = Authenticator(ProxySettings())
        self.assertTrue(auth.open)
        self.assertIs(auth.authenticate("", None), ANONYMOUS)
        self.assertIs(auth.authenticate("whatever", "cn"), ANONYMOUS)
        self.assertTrue(auth.mayServe(ANONYMOUS, "any/path"))

    def test_legacyToken(self) -> None:
        auth = Authenticator(ProxySettings(agent_token="s3cret"))
        self.assertFalse(auth.open)
        self.assertEqual(auth.authenticate("s3cret", None).name, LEGACY_TOKEN_IDENTITY)
        self.assertRaises(AuthenticationFailed, auth.authenticate, "s3cre", None)
        with self.assertRaises(AuthenticationFailed) as raised:
            auth.authenticate("", None)
        self.assertEqual(str(raised.exception), "an agent token is required")

    def test_identitiesByToken(self) -> None:
        auth = Authenticator(ProxySettings(identities=TEAMS))
        self.assertEqual(auth.authenticate("token-b", None), TEAMS[1])
        with self.assertRaises(AuthenticationFailed) as raised:
            auth.authenticate("token-c", None)
        self.assertEqual(str(raised.exception), "invalid agent token")

    def test_certificateNamesIdentity(self) -> None:
        """
        With client certificates, the certificate's common name proves an
        identity by itself; a token naming another identity is refused.
        """
        auth = Authenticator(
            ProxySettings(identities=TEAMS, tls_trust_cert_collection_file_path="ca.pem")
        )
        self.assertEqual(auth.authenticate("", "team_a"), TEAMS[0])
        self.assertEqual(auth.authenticate("token-a", "team_a"), TEAMS[0])
        self.assertEqual(auth.authenticate("token-a", "not-an-identity"), TEAMS[0])
        with self.assertRaises(AuthenticationFailed) as raised:
            auth.authenticate("token-b", "team_a")
        self.assertIn("name different identities", str(raised.exception))
        self.assertRaises(AuthenticationFailed, auth.authenticate, "", "stranger")

    def test_certificatesAlone(self) -> None:
        """
        Mutual TLS without identities closes the port, and any verified
        certificate gets in.
        """
        auth = Authenticator(ProxySettings(tls_trust_cert_collection_file_path="ca.pem"))
        self.assertFalse(auth.open)
        self.assertIs(auth.authenticate("", "anyone"), ANONYMOUS)


class MayServeTests(SynchronousTestCase):
    def test_globs(self) -> None:
        """
        C{*} spans any run (slashes too), C{?} one character, anything else
        is literal, and the whole path must match.
        """
        auth = Authenticator(ProxySettings(identities=TEAMS))
        a, b, ops = TEAMS
        for identity, path, expected in [
            (a, "team_a_metrics", True),
            (a, "team_a_/deep/path", True),
            (a, "team_b_metrics", False),
            (a, "x_team_a_metrics", False),
            (a, "shared/ax", True),
            (a, "shared/abx", False),
            (b, "b[1]", True),
            (b, "b1", False),
            (ops, "anything/at/all", True),
        ]:
            self.assertEqual(auth.mayServe(identity, path), expected, (identity.name, path))

    def test_eachKindRestrictsTheOther(self) -> None:
        """
        An identity limited to some targets may claim no path, one limited
        to some paths no target; one limited in neither claims both, and one
        limited in both each by its own globs.
        """
        nodes = Identity("nodes", "t1", targets=("node1.example:*",))
        apps = Identity("apps", "t2", paths=("app*",))
        both = Identity("both", "t3", paths=("app*",), targets=("node1.example:*",))
        anything = Identity("anything", "t4")
        auth = Authenticator(ProxySettings(identities=(nodes, apps, both, anything)))
        for identity, key, expected in [
            (nodes, "//node1.example:9100", True),
            (nodes, "//node2.example:9100", False),
            (nodes, "app1", False),
            (apps, "app1", True),
            (apps, "//node1.example:9100", False),
            (both, "app1", True),
            (both, "//node1.example:9100", True),
            (both, "db1", False),
            (anything, "db1", True),
            (anything, "//node2.example", True),
        ]:
            self.assertEqual(auth.mayServe(identity, key), expected, (identity.name, key))


class ConfigureTests(SynchronousTestCase):
    def test_inPlace(self) -> None:
        """
        A reload reconfigures the one authenticator: the methods the agent
        port, the registry and PushProx were handed at startup answer by
        the new identities.
        """
        auth = Authenticator(ProxySettings(identities=TEAMS))
        authenticate, mayServe, stillHolds = auth.authenticate, auth.mayServe, auth.stillHolds
        a, b, _ = TEAMS
        moved = Identity("team_a", "token-a2", ("team_a2_*",))
        auth.configure(ProxySettings(identities=(moved, b)))
        self.assertEqual(authenticate("token-a2", None), moved)
        self.assertRaises(AuthenticationFailed, authenticate, "token-a", None)
        self.assertEqual((stillHolds(a), stillHolds(moved), stillHolds(b)), (False, True, True))
        self.assertEqual((mayServe(moved, "team_a2_x"), mayServe(moved, "team_a_x")), (True, False))
        auth.configure(ProxySettings())
        self.assertTrue(auth.open)
        self.assertTrue(stillHolds(a))
