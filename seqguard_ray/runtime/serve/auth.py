"""The bearer-token check: servers keep the token's sha256, compare in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import Unauthenticated

TOKEN_ENV = "SEQGUARD_TOKEN"


def token_digest(token: str) -> str:
    """sha256 hex of a token: servers keep this, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_token(token_file: str | Path | None = None, env: dict | None = None) -> str | None:
    """The server token: from ``token_file`` if given, else ``$SEQGUARD_TOKEN``; None if neither."""
    if token_file:
        p = Path(token_file)
        if not p.is_file():
            raise ValueError(f"--token-file {p} does not exist")
        tok = p.read_text().strip()
        if not tok:
            raise ValueError(f"--token-file {p} is empty")
        return tok
    tok = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return tok or None


class Authenticator:
    """Checks ``authorization: Bearer <token>`` call metadata in constant time.

    ``token_sha256=None`` turns auth off (only with ``--insecure-no-auth``).
    """

    def __init__(self, token_sha256: str | None):
        if token_sha256 is not None and (len(token_sha256) != 64 or any(c not in "0123456789abcdef" for c in token_sha256)):
            raise ValueError("token_sha256 must be 64 lowercase hex characters (see seqguard_ray.runtime.serve.token_digest)")
        self._digest = bytes.fromhex(token_sha256) if token_sha256 else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, metadata: Iterable[tuple[str, Any]] | None) -> None:
        if self._digest is None:
            return
        presented = None
        for key, value in metadata or ():
            if key.lower() == "authorization":
                presented = value.decode() if isinstance(value, bytes) else str(value)
                break
        if presented is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` call metadata")
        scheme, _, token = presented.partition(" ")
        # compare fixed-length digests: the time taken does not depend on the token's content
        ok = hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self._digest)
        if scheme.lower() != "bearer" or not ok:
            raise Unauthenticated("invalid bearer token")
