# -*- test-case-name: promtwist.test.test_auth -*-
"""
Who an agent is: the identity its token (or client certificate) proves, and
the paths that identity may serve.

With no token, no identities and no client certificates configured, every
agent is let in as L{ANONYMOUS}, which may serve any path: prometheus-proxy's
default, kept for compatibility and warned about at startup.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from promtwist.config.settings import LEGACY_TOKEN_IDENTITY, Identity, ProxySettings
from promtwist.hostkeys import isHostKey, keyTarget

ANONYMOUS = Identity("anonymous")


class AuthenticationFailed(Exception):
    """
    The agent could not prove an identity; the message says why, without
    repeating what it sent.
    """


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _globPattern(glob: str) -> re.Pattern[str]:
    """
    C{*} matches any run of characters (C{/} included, since promtwist paths
    may have several segments), C{?} one character, everything else itself.
    """
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile("".join(parts) + r"\Z")


class Authenticator:
    """
    Checks agents' credentials against C{proxy.agentToken}, C{proxy.auth}
    and, with mutual TLS, the client certificate.

    The agent port and the registry hold the same authenticator for the
    life of the proxy, and a reload L{replaces its settings <configure>} in
    place: no part has to be handed a new one.

    @ivar open: whether any agent that reaches the port gets in.
    """

    def __init__(self, settings: ProxySettings) -> None:
        self.configure(settings)

    def configure(self, settings: ProxySettings) -> None:
        """
        Check agents against C{settings}' identities from now on.
        """
        identities = list(settings.identities)
        if settings.agent_token:
            identities.append(Identity(LEGACY_TOKEN_IDENTITY, settings.agent_token))
        self._byName = {identity.name: identity for identity in identities}
        # Digests are compared, so neither a token's content nor its length
        # shows in the time a comparison takes.
        self._byDigest = [(_digest(i.token), i) for i in identities if i.token]
        self._globs = {
            identity.name: [_globPattern(glob) for glob in identity.paths]
            for identity in identities
        }
        self._targetGlobs = {
            identity.name: [_globPattern(glob.lower()) for glob in identity.targets]
            for identity in identities
        }
        self._certificates = bool(settings.tls_trust_cert_collection_file_path)
        self.open = not identities and not self._certificates

    def authenticate(self, token: str, certificateName: str | None) -> Identity:
        """
        The identity an agent proves with C{token} and, with mutual TLS, the
        common name of its verified client certificate.

        @raise AuthenticationFailed: if it proves none, or its token and its
            certificate name different identities.
        """
        if not self._byName:
            return ANONYMOUS
        byToken: Identity | None = None
        if token:
            presented = _digest(token)
            for digest, candidate in self._byDigest:
                # No early exit: every comparison is made.
                if hmac.compare_digest(digest, presented):
                    byToken = candidate
            if byToken is None:
                raise AuthenticationFailed("invalid agent token")
        byCertificate = self._byName.get(certificateName) if certificateName else None
        if byToken is not None and byCertificate is not None and byToken is not byCertificate:
            raise AuthenticationFailed(
                f"the agent token and the client certificate ({certificateName!r}) "
                "name different identities"
            )
        identity = byToken or byCertificate
        if identity is None:
            raise AuthenticationFailed("an agent token is required")
        return identity

    def stillHolds(self, identity: Identity) -> bool:
        """
        Whether an agent authenticated as C{identity} (perhaps by an earlier
        configuration) would be let in as the same identity now.
        """
        if not self._byName:
            return True
        return self._byName.get(identity.name) == identity

    def mayServe(self, identity: Identity, path: str) -> bool:
        """
        Whether C{identity} may register C{path}. A path is matched against
        the identity's path globs, a host key (L{promtwist.hostkeys})
        against its target globs, as C{host:port} (C{host} for a claim on
        any port). An identity limited in neither may claim anything; one
        limited in one kind only may claim nothing of the other, so naming
        the targets an identity may claim does not let it take paths, nor
        naming its paths targets.
        """
        paths = self._globs.get(identity.name, [])
        targets = self._targetGlobs.get(identity.name, [])
        if isHostKey(path):
            globs, others, claimed = targets, paths, keyTarget(path)
        else:
            globs, others, claimed = paths, targets, path
        if not globs:
            return not others
        return any(glob.match(claimed) for glob in globs)
