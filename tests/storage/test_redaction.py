"""PII redaction: each kind found and replaced, look-alikes left alone, tenant patterns."""

from __future__ import annotations

import pytest

from chat_storage.storage.redaction import (
    MAX_DEPTH,
    TOO_DEEP,
    PatternError,
    Redactor,
    check_patterns,
)

R = Redactor.build("US", {})


@pytest.mark.parametrize("text, expected", [
    ("mail john.doe+chat@mail.example.co.uk now", "mail <EMAIL> now"),
    ("call (415) 555-0132 today", "call <PHONE> today"),
    ("or +44 20 7946 0958.", "or <PHONE>."),
    ("Berlin: +49 30 901820", "Berlin: <PHONE>"),
    ("card 4111 1111 1111 1111 ok", "card <CARD> ok"),
    ("card 5500-0000-0000-0004", "card <CARD>"),
    ("amex 378282246310005", "amex <CARD>"),
    ("pay to DE89 3704 0044 0532 0130 00 please", "pay to <IBAN> please"),
    ("GB82WEST12345698765432", "<IBAN>"),
    ("from 192.168.1.20, then", "from <IP>, then"),
    ("v6 2001:db8::8a2e:370:7334 here", "v6 <IP> here"),
    ("loopback ::1 and ::ffff:10.0.0.1.", "loopback <IP> and <IP>."),
])
def test_each_kind_is_replaced_by_its_placeholder(text: str, expected: str) -> None:
    assert R.redact(text) == expected


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 (bad Luhn sum)",
    "iban DE89 3704 0044 0532 0130 01 (bad check digits)",
    "version 10.0.0.256 is no address",
    "at 12:30:45 on 2026-12-03",
    "order 20261203 of 5 items",
    "not an email: user@localhost or @handle",
    "ratio 3:2:1",
])
def test_look_alikes_are_left_alone(text: str) -> None:
    assert R.redact(text) == text


def test_a_text_with_nothing_to_find_is_the_same_object() -> None:
    text = "nothing personal here " * 50
    assert R.redact(text) is text


def test_tenant_patterns_become_their_own_placeholders() -> None:
    r = Redactor.build("US", {"EMPLOYEE_ID": r"EMP-\d{6}", "TICKET": r"TCK#\d+"})
    assert r.redact("EMP-123456 filed TCK#77 for jo@ex.org") == (
        "<EMPLOYEE_ID> filed <TICKET> for <EMAIL>")


def test_overlapping_findings_keep_the_first_and_longest() -> None:
    # the IBAN's digits could be read as a card or phone too: the IBAN, starting first, wins
    r = Redactor.build("US", {"DIGITS": r"\d{4}"})
    assert r.redact("DE89 3704 0044 0532 0130 00") == "<IBAN>"


def test_national_numbers_follow_the_phone_region() -> None:
    german = "ruf 030 901820 an"
    assert Redactor.build("US", {}).redact(german) == german
    assert Redactor.build("DE", {}).redact(german) == "ruf <PHONE> an"


@pytest.mark.parametrize("patterns, words", [
    ({"lower": "x"}, "A-Z"),
    ({"EMAIL": "x"}, "not one of"),
    ({"BAD": "("}, "not a regular expression"),
    ({"EMPTY": "a*"}, "matches the empty text"),
    ({"LONG": "a" * 501}, "1 to 500"),
    ({f"P{i}": "x" for i in range(21)}, "at most 20"),
])
def test_bad_patterns_are_refused(patterns: dict[str, str], words: str) -> None:
    with pytest.raises(PatternError, match=words):
        check_patterns(patterns)


def test_json_values_are_redacted_however_nested_up_to_the_bound() -> None:
    redactor = Redactor()
    value = {"mail": "jane.roe@example.org", "n": 4111, "ok": None,
             "list": ["203.0.113.7", 2.5, {"iban": "DE89 3704 0044 0532 0130 00"}],
             "jane.roe@example.org": "key kept"}
    assert redactor.redact_json(value) == {
        "mail": "<EMAIL>", "n": 4111, "ok": None,
        "list": ["<IP>", 2.5, {"iban": "<IBAN>"}], "jane.roe@example.org": "key kept"}
    deep: object = "jane.roe@example.org"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    out = redactor.redact_json(deep)
    for _ in range(MAX_DEPTH):
        out = out[0]
    assert out == TOO_DEEP
