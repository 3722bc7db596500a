"""pydantic's validation errors in plain words about the field, never its own text.

One table, :data:`PLAIN`, says each error type as a short sentence about the field
("must be at most 128 characters"), filled from the error's context. A type not in
the table gets :data:`FALLBACK`. The one exception is a ``value_error`` or
``assertion_error``: those come from this service's own validators, whose messages
are already plain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

FALLBACK = "is not a valid value"

PLAIN: dict[str, str] = {
    # presence
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "none_required": "must be null",
    # sizes
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "bytes_too_short": "must be at least {min_length} bytes",
    "bytes_too_long": "must be at most {max_length} bytes",
    # numbers
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "finite_number": "must be a finite number",
    # types
    "string_type": "must be a string",
    "string_unicode": "must be valid Unicode text",
    "string_pattern_mismatch": "does not have the expected format",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_parsing_size": "must be an integer of a reasonable size",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be an array",
    "tuple_type": "must be an array",
    "set_type": "must be an array",
    "uuid_type": "must be a UUID",
    "uuid_parsing": "must be a UUID",
    "uuid_version": "must be a UUID",
    "datetime_type": "must be a date-time (RFC 3339)",
    "datetime_parsing": "must be a date-time (RFC 3339)",
    "datetime_from_date_parsing": "must be a date-time (RFC 3339)",
    "datetime_object_invalid": "must be a date-time (RFC 3339)",
    "timezone_aware": "must include a time zone",
    "date_type": "must be a date",
    "date_parsing": "must be a date",
    "date_from_datetime_parsing": "must be a date",
    "json_invalid": "must be valid JSON",
    "json_type": "must be JSON",
    # choices
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
    "union_tag_invalid": "must be one of {expected_tags}",
    "union_tag_not_found": "must have a {discriminator} field",
}

_OF_TEXT = {"too_short": "string_too_short", "too_long": "string_too_long"}
# a minimum of one, said the way a person would
_AT_LEAST_ONE = {"string_too_short": "must not be empty", "too_short": "must not be empty"}
_OWN_MESSAGES = frozenset({"value_error", "assertion_error"})


def plain_message(err: Mapping[str, Any]) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in plain words."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    if kind in _OWN_MESSAGES:
        own = ctx.get("error")
        text = str(own) if own is not None else str(err.get("msg", ""))
        return text.removeprefix("Value error, ").removeprefix("Assertion failed, ") or FALLBACK
    if kind in _OF_TEXT and isinstance(err.get("input"), str):
        # a length limit on text checked after a validator: pydantic counts "items"
        kind = _OF_TEXT[kind]
    if kind in _AT_LEAST_ONE and ctx.get("min_length") == 1:
        return _AT_LEAST_ONE[kind]
    template = PLAIN.get(kind)
    if template is None:
        return FALLBACK
    try:
        return template.format_map(ctx)
    except (KeyError, IndexError, ValueError):  # a context this pydantic lacks
        return FALLBACK


def field_errors(exc: pydantic.ValidationError, whole: str) -> list[dict[str, str]]:
    """``[{field, message}]``, one per error of ``exc``; ``whole`` names the input itself
    (an error of no single field)."""
    return [{"field": field_name(err["loc"]) or whole, "message": plain_message(err)}
            for err in exc.errors(include_url=False)]


def field_name(loc: tuple[int | str, ...]) -> str:
    """A location as a dotted field name (``messages.0.content``)."""
    return ".".join(str(part) for part in loc)
