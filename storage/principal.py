"""Who is calling: a tenant's API key, or one user of a tenant (a user token, an OIDC
token, or a ticket either of them asked for). docs/api.md, 1.1, "Credentials"."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Literal, get_args

from chat_storage.storage.overrides import NO_OVERRIDES, Limits

Scope = Literal["read", "write", "admin"]
# weakest first: a scope reaches everything the scopes before it reach
SCOPES: tuple[Scope, ...] = get_args(Scope)
DEFAULT_SCOPE: Scope = "admin"  # keys made before scopes existed reached everything

# what a user token may do: read history, write messages, watch live streams
TokenScope = Literal["read", "write", "stream"]
TOKEN_SCOPES: tuple[TokenScope, ...] = get_args(TokenScope)

Credential = Literal["key", "token", "oidc"]


def scope_allows(held: Scope, needed: Scope) -> bool:
    """Whether a key of scope ``held`` may do what needs ``needed``."""
    return SCOPES.index(held) >= SCOPES.index(needed)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The caller: its tenant, the credential's id (an API key's id, a user's rate-limit
    bucket), the key's scope, and the limits that apply to it (key over tenant, field by
    field; ``None``: the setting).

    A user's principal (``user_id`` set) reaches only that user's sessions, within
    ``user_scopes``, and only ``session_ids`` of them when that is not ``None``.
    """

    tenant_id: uuid.UUID
    tenant_name: str
    key_id: str
    scope: Scope = DEFAULT_SCOPE
    limits: Limits = NO_OVERRIDES
    user_id: str | None = None
    user_scopes: frozenset[TokenScope] = frozenset()
    session_ids: frozenset[uuid.UUID] | None = None
    credential: Credential = "key"
    # a user's: what vouches for it (``token:<kid>`` of a user token, ``oidc``)
    credential_id: str = ""
    # a bearer token's ``exp`` (Unix time; ``None``: a key, or a ticket's principal),
    # and an OIDC token's issuer and ``kid``: what ends its open streams
    # (server/credential_watch.py)
    expires_at: float | None = None
    oidc_key: tuple[str, str | None] | None = None

    @property
    def is_user(self) -> bool:
        """Whether this principal stands for one user rather than the whole tenant."""
        return self.user_id is not None


def user_principal(
    tenant_id: uuid.UUID, tenant_name: str, user_id: str, scopes: frozenset[TokenScope],
    *, session_ids: frozenset[uuid.UUID] | None = None, limits: Limits = NO_OVERRIDES,
    credential: Credential = "token", credential_id: str = "",
    expires_at: float | None = None, oidc_key: tuple[str, str | None] | None = None,
) -> Principal:
    """A user's principal; its ``key_id`` is the user's rate-limit bucket in the tenant."""
    return Principal(
        tenant_id, tenant_name, f"user:{tenant_id}:{user_id}", "read", limits,
        user_id=user_id, user_scopes=scopes, session_ids=session_ids, credential=credential,
        credential_id=credential_id or credential, expires_at=expires_at, oidc_key=oidc_key)
