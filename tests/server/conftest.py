"""Fixtures of the server tests that need an identity provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestServer

from tests.support.idp import Idp

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def idp(aiohttp_server: ServerFactory) -> Idp:
    """An OpenID Connect issuer listening on 127.0.0.1."""
    provider = Idp()
    server = await aiohttp_server(provider.app())
    assert server.port is not None
    provider.listening_on(server.port)
    return provider
