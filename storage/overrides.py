"""Overrides of the server's limits, per tenant and per API key."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Overrides of the server's limits; ``None``: the setting applies."""

    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    max_stream_connections: int | None = None  # tenants only


def check_limits(limits: Limits) -> None:
    """``ValueError`` unless every override given is greater than 0."""
    for field in dataclasses.fields(limits):
        value = getattr(limits, field.name)
        if value is not None and not value > 0:
            raise ValueError(f"{field.name} must be greater than 0, not {value!r}")


NO_OVERRIDES = Limits()  # the settings apply
