"""The building blocks of the request and response models (:mod:`.schemas`).

Text without NUL (Postgres refuses it), the roles and statuses of a message, and the
base of every request body, which forbids unknown fields (no mass assignment).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Role = Literal["user", "assistant", "system", "tool"]
Status = Literal["complete", "streaming", "aborted", "interrupted", "deleted"]
JsonObject = dict[str, Any]


class Strict(BaseModel):
    """Base of request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")
