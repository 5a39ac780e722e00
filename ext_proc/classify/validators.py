"""Validators run on candidate values after a pattern matched. Plain string code, linear, bounded."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
from collections import Counter


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# (prefixes, allowed lengths). Prefix ranges are expanded lazily by card_brand_ok.
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    # (low prefix, high prefix, lengths); prefixes compared on the same number of digits.
    (4, 4, frozenset({13, 16, 19})),                       # Visa
    (51, 55, frozenset({16})),                             # Mastercard
    (2221, 2720, frozenset({16})),                         # Mastercard 2-series
    (34, 34, frozenset({15})), (37, 37, frozenset({15})),  # Amex
    (6011, 6011, frozenset({16, 19})), (644, 649, frozenset({16, 19})),
    (65, 65, frozenset({16, 19})),                         # Discover
    (35, 35, frozenset({16, 17, 18, 19})),                 # JCB (3528-3589; generators use all 35)
    (300, 305, frozenset({14, 16, 19})), (36, 36, frozenset({14, 16, 19})),
    (38, 39, frozenset({16, 19})),                         # Diners
    (62, 62, frozenset({16, 17, 18, 19})),                 # UnionPay
    (50, 50, frozenset({16, 17, 18, 19})), (56, 58, frozenset({16, 17, 18, 19})),
    (6304, 6304, frozenset({16, 17, 18, 19})), (67, 67, frozenset({16, 17, 18, 19})),  # Maestro
)


def _brand_prefixes() -> frozenset[tuple[int, str]]:
    """(length, first four digits) of every card _CARD_RANGES accepts (every prefix is at most
    four digits): one set lookup per candidate instead of a loop over the ranges."""
    out: set[tuple[int, str]] = set()
    for low, high, lengths in _CARD_RANGES:
        width = len(str(low))
        for p in range(low, high + 1):
            for rest in range(10 ** (4 - width)):
                four = str(p) + (str(rest).zfill(4 - width) if width < 4 else "")
                out.update((n, four) for n in lengths)
    return frozenset(out)


_BRAND_PREFIXES = _brand_prefixes()


def card_brand_ok(digits: str) -> bool:
    """A known issuer prefix with a length that issuer uses."""
    return (len(digits), digits[:4]) in _BRAND_PREFIXES


def card_ok(digits: str) -> bool:
    return (13 <= len(digits) <= 19 and len(set(digits)) > 1 and card_brand_ok(digits)
            and luhn_ok(digits))


def npi_ok(digits: str) -> bool:
    """NPI: 10 digits starting 1 or 2; Luhn over the number prefixed with 80840 (ISO 7812 card
    issuer prefix for US health)."""
    return len(digits) == 10 and digits[0] in "12" and luhn_ok("80840" + digits)


# Numbers published in advertising or used as examples; never issued to a person.
SSN_SAMPLES = frozenset({"078051120", "219099999", "457555462", "123456789", "111111111",
                         "333333333", "987654320", "987654321", "987654322", "987654323",
                         "987654324", "987654325", "987654326", "987654327", "987654328",
                         "987654329"})


def ssn_ok(digits: str) -> bool:
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    if len(set(digits)) == 1 or digits in SSN_SAMPLES:
        return False
    return True


IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
IBAN_MAX_LEN = max(IBAN_LENGTHS.values())


_IBAN_DIGITS = {ord(c): str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def iban_mod97_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    if not (iban.isascii() and iban.isalnum() and iban == iban.upper()):
        return False
    return int((iban[4:] + iban[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def shannon_entropy(value: str) -> float:
    """Bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def ipv4_ok(value: str) -> bool:
    parts = value.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p.isdigit() or len(p) > 3 or int(p) > 255 or (len(p) > 1 and p[0] == "0"):
            return False
    return True


def ipv6_ok(value: str) -> bool:
    if len(value) > 45 or value.count(":") < 2:
        return False
    groups = [g for g in value.split(":") if g]
    # "a::b", "std::map" in code and "12:30:45" times are not addresses worth reporting.
    if len(groups) < 3 or not any(c.isdigit() for c in value):
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def jwt_header_ok(token: str) -> bool:
    """The first segment decodes to a JSON object with an ``alg`` member."""
    head = token.split(".", 1)[0]
    if len(head) > 2048:
        return False
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        obj = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and "alg" in obj
