"""PII redaction: personal data in a text replaced by typed placeholders (``<EMAIL>``).

What is found, and by what (docs/privacy.md, "PII redaction"):

- ``<PHONE>``: ``phonenumbers`` (Google's libphonenumber metadata), numbers it judges
  *valid* for their region: ``+country`` numbers anywhere, national ones of
  ``phone_region``.
- ``<CARD>``: runs of 13 to 19 digits (spaces or dashes allowed between them) whose
  Luhn checksum holds (``python-stdnum``'s ``luhn``).
- ``<IBAN>``: two letters, two digits and 11 to 30 letters or digits (spaced in fours
  or not) that ``python-stdnum``'s ``iban`` accepts: the country's length and format,
  and the ISO 7064 mod-97 check.
- ``<IP>``: IPv4 and IPv6 addresses, as the standard library's ``ipaddress`` parses them.
- ``<EMAIL>``: ``local@domain.tld``; no library finds addresses in free text, so this
  one is a pattern (kept deliberately simple: it errs towards redacting).
- the tenant's own patterns (``{"EMPLOYEE_ID": "EMP-[0-9]{6}"}``): a match becomes
  ``<EMPLOYEE_ID>``.

Candidates are found by cheap patterns and kept only if the library accepts them, so
order numbers and timestamps are left alone. Where two findings overlap, the one that
starts first wins, then the longer. Presidio was considered and not chosen: its
analyzer needs a spaCy model (a download this service cannot make at run time) even to
run pattern recognizers, and it would bring a NLP stack to do what these do.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterator, Mapping
from typing import Any

import phonenumbers
from stdnum import iban, luhn

# a tenant's placeholder names: what follows ``<`` in its placeholders
PATTERN_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
BUILTIN = ("EMAIL", "PHONE", "CARD", "IBAN", "IP")
MAX_PATTERNS = 20
MAX_PATTERN_CHARS = 500
# how deep :meth:`Redactor.redact_json` goes into objects and arrays; a container
# deeper than this is replaced whole by TOO_DEEP, never stored unchecked
MAX_DEPTH = 32
TOO_DEEP = "<TOO_DEEP>"

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}(?![\w-])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|\.\d)")
_IPV6 = re.compile(r"(?<![0-9A-Za-z:.])(?:(?:[0-9A-Fa-f]{0,4}:){2,6}(?:\d{1,3}\.){3}\d{1,3}"
                   r"|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![0-9A-Za-z:]|\.\d)")

# every built-in kind holds a digit, an "@" or (IPv6 written in letters: fe80::a) a ":";
# a text without any is left alone at the cost of one scan
_ANY_BUILTIN = re.compile(r"[0-9@:]")
# a run of 6 or more digits with short separators: without one, no phone or card number
# can be there, and the costly phone matcher is not run
_NUMBERISH = re.compile(r"\d(?:[ ().+/-]{0,2}\d){5}")
# where a phone number could be: the matcher is run on these windows (with a few
# characters around them, which it checks) rather than on the whole text
_PHONE_WINDOW = re.compile(r"\+?\(?\d(?:[ ().+/-]{0,3}\d){4,24}")
_WINDOW_MARGIN = 3

Span = tuple[int, int, str]  # start, end, placeholder name


class PatternError(ValueError):
    """A tenant pattern that is not usable: a bad name or a regex that does not compile."""


def check_patterns(patterns: Mapping[str, str]) -> dict[str, re.Pattern[str]]:
    """The compiled patterns; :class:`PatternError` for a bad name, regex or count.

    A pattern that matches the empty string is refused (it would match everywhere).
    """
    if len(patterns) > MAX_PATTERNS:
        raise PatternError(f"at most {MAX_PATTERNS} patterns")
    out: dict[str, re.Pattern[str]] = {}
    for name, source in patterns.items():
        if not PATTERN_NAME.fullmatch(name) or name in BUILTIN:
            raise PatternError(f"{name!r}: a name is A-Z, 0-9 and _, starts with a letter, "
                               f"at most 32 characters, and is not one of {', '.join(BUILTIN)}")
        if not source or len(source) > MAX_PATTERN_CHARS:
            raise PatternError(f"{name}: a pattern is 1 to {MAX_PATTERN_CHARS} characters")
        try:
            compiled = re.compile(source)
        except re.error as exc:
            raise PatternError(f"{name}: not a regular expression ({exc})") from None
        if compiled.fullmatch(""):
            raise PatternError(f"{name}: the pattern matches the empty text")
        out[name] = compiled
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Redactor:
    """Finds personal data in a text and replaces it by ``<TYPE>`` placeholders."""

    phone_region: str = "US"
    patterns: Mapping[str, re.Pattern[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, phone_region: str, patterns: Mapping[str, str]) -> Redactor:
        """A redactor with the tenant's ``patterns`` (checked: :class:`PatternError`)."""
        return cls(phone_region, check_patterns(patterns))

    def redact(self, text: str) -> str:
        """``text`` with every finding replaced by its placeholder."""
        if not text or (not self.patterns and _ANY_BUILTIN.search(text) is None):
            return text
        spans = sorted(self.find(text), key=lambda s: (s[0], s[0] - s[1]))
        out: list[str] = []
        at = 0
        for start, end, name in spans:
            if start < at:
                continue  # overlaps one already replaced (which started first or is longer)
            out.append(text[at:start])
            out.append(f"<{name}>")
            at = end
        if not out:
            return text
        out.append(text[at:])
        return "".join(out)

    def redact_json(self, value: Any, depth: int = 0) -> Any:
        """``value`` (decoded JSON) with every string in it redacted, however nested, up
        to :data:`MAX_DEPTH` levels (a deeper object or array becomes :data:`TOO_DEEP`).
        Object keys are kept: they are the client's field names."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict | list) and depth >= MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {k: self.redact_json(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_json(v, depth + 1) for v in value]
        return value

    def find(self, text: str) -> Iterator[Span]:
        """Every finding in ``text``, in no particular order; they may overlap."""
        # each kind's cheap precondition first: most texts hold none of them
        if "@" in text:
            for m in _EMAIL.finditer(text):
                yield m.start(), m.end(), "EMAIL"
        for m in _IBAN.finditer(text):
            if iban.is_valid(m.group()):
                yield m.start(), m.end(), "IBAN"
        numberish = _NUMBERISH.search(text) is not None
        if numberish:
            for m in _CARD.finditer(text):
                if luhn.is_valid(m.group().replace(" ", "").replace("-", "")):
                    yield m.start(), m.end(), "CARD"
        if "." in text:
            for m in _IPV4.finditer(text):
                if _is_ip(m.group()):
                    yield m.start(), m.end(), "IP"
        if text.count(":") >= 2:
            for m in _IPV6.finditer(text):
                if m.group().count(":") >= 2 and _is_ip(m.group()):
                    yield m.start(), m.end(), "IP"
        for name, pattern in self.patterns.items():
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    yield m.start(), m.end(), name
        if numberish:
            yield from self._phones(text)

    def _phones(self, text: str) -> Iterator[Span]:
        """The valid phone numbers of ``text``, the matcher run window by window."""
        windows: list[list[int]] = []
        for m in _PHONE_WINDOW.finditer(text):
            start = max(0, m.start() - _WINDOW_MARGIN)
            end = min(len(text), m.end() + _WINDOW_MARGIN)
            if windows and start <= windows[-1][1]:
                windows[-1][1] = end
            else:
                windows.append([start, end])
        for start, end in windows:
            for found in phonenumbers.PhoneNumberMatcher(
                    text[start:end], self.phone_region, leniency=phonenumbers.Leniency.VALID):
                yield start + found.start, start + found.end, "PHONE"


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True
