"""The command line of browser access: a tenant's trusted OIDC issuer and CORS origins
(``tenants update``), and ``tenants rotate-signing-key``. docs/auth.md."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from chat_storage.runtime.settings import parse_origin
from chat_storage.server.oidc_keys import allowed_url

# what `tenants update` may change here (with the retention and limit flags)
ACCESS_UPDATES = ("oidc_issuer", "oidc_audience", "oidc_user_claim", "cors_origins")


def issuer_url(raw: str) -> str:
    """An issuer's URL: ``https://…``, or ``http://`` for a loopback host (tests, local
    development); no query or fragment; a trailing ``/`` is kept (it is part of ``iss``)."""
    try:
        parts = urlsplit(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a URL") from None
    host = parts.hostname or ""
    if parts.query or parts.fragment or not host or parts.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{raw!r} is not an issuer URL (https://host/…)")
    if not allowed_url(raw.strip()):  # the rule the key fetches follow, too
        raise argparse.ArgumentTypeError(
            f"{raw!r}: an issuer is trusted over https only (http for a loopback host)")
    return raw.strip()


def _text(what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw.strip() or len(raw) > 256:
            raise argparse.ArgumentTypeError(f"{what} must be 1 to 256 characters, not blank")
        return raw.strip()
    return parse


def origins(raw: str) -> tuple[str, ...]:
    """A comma-separated list of origins (``https://app.example``), each checked."""
    items = [item for item in (part.strip() for part in raw.split(",")) if item]
    if not items:
        raise argparse.ArgumentTypeError("give at least one origin, or --no-cors-origins")
    try:
        return tuple(dict.fromkeys(parse_origin(item) for item in items))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_update_flags(parser: argparse.ArgumentParser) -> None:
    """The OIDC and CORS flags of ``tenants update``."""
    oidc = parser.add_mutually_exclusive_group()
    oidc.add_argument("--oidc-issuer", type=issuer_url, metavar="URL",
                      help="trust JWTs from this OpenID Connect issuer as user tokens "
                           "(its `iss`, exactly; keys from its JWKS); needs --oidc-audience")
    oidc.add_argument("--no-oidc", action="store_true",
                      help="trust no issuer any more (its tokens answer 401)")
    parser.add_argument("--oidc-audience", type=_text("an audience"), metavar="AUD",
                        help="the `aud` its tokens must carry for this service")
    parser.add_argument("--oidc-user-claim", type=_text("a claim name"), metavar="CLAIM",
                        help="the claim that names the user (default: sub)")
    cors = parser.add_mutually_exclusive_group()
    cors.add_argument("--cors-origins", type=origins, metavar="ORIGINS",
                      help="pages (comma-separated origins) that may call this tenant's "
                           "routes, on top of CHAT_CORS_ORIGINS; replaces its list")
    cors.add_argument("--no-cors-origins", action="store_true",
                      help="only CHAT_CORS_ORIGINS again")


def resolve_update_flags(parser: argparse.ArgumentParser, args: argparse.Namespace,
                         unchanged: Any) -> None:
    """Turn the flags into ``ACCESS_UPDATES`` values (``unchanged`` where not given)."""
    if args.oidc_issuer is not None and args.oidc_audience is None:
        parser.error("--oidc-issuer needs --oidc-audience (the `aud` its tokens carry)")
    if args.no_oidc and (args.oidc_audience or args.oidc_user_claim):
        parser.error("--no-oidc: not allowed with --oidc-audience or --oidc-user-claim")
    cleared = args.no_oidc
    args.oidc_issuer = None if cleared else (args.oidc_issuer or unchanged)
    args.oidc_audience = None if cleared else (args.oidc_audience or unchanged)
    args.oidc_user_claim = "sub" if cleared else (args.oidc_user_claim or unchanged)
    args.cors_origins = () if args.no_cors_origins else (args.cors_origins or unchanged)


def add_rotate_command(tenants_sub: Any, handler: Any) -> None:
    """``tenants rotate-signing-key NAME``."""
    rotate = tenants_sub.add_parser(
        "rotate-signing-key", help="retire the key that signs a tenant's user tokens: every "
        "token it signed stops working; the next token minted makes a new key")
    rotate.add_argument("name")
    rotate.set_defaults(handler=handler)
