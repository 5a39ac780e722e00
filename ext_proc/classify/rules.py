"""Detection rules: an RE2 pattern per label, a looser prefilter for the ``re2.Set``, and a check
that validates a candidate and gives it a confidence.

Patterns run on the normalized text as UTF-8 bytes, so every offset here is a byte offset into
``data``. A pattern's group 1, when it has one, is the value; otherwise the whole match is.
Checks return ``(start, end, confidence, validator)`` tuples (possibly narrowed or widened spans,
or none to reject). All of them are plain, bounded string code.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass

from re2 import escape as re2_escape

from ext_proc.classify import validators as v

Hit = tuple[int, int, int, str | None]
Check = Callable[[bytes, int, int], list[Hit]]
# A check that reads context words takes the bounds of the text they may come from too:
# (data, start, end, lo, hi), context looked for in data[lo:hi] only (see Rule.reads_context).
ContextCheck = Callable[[bytes, int, int, int, int], list[Hit]]

CONTEXT_BEFORE = 64
CONTEXT_AFTER = 32
PRIVATE_KEY_MAX = 4096
JWT_MAX = 4096
GENERIC_VALUE_MAX = 200


@dataclass(frozen=True, slots=True)
class Rule:
    label: str
    pattern: str
    prefilter: str        # anything `pattern` matches contains a match of this (tested)
    max_chars: int        # upper bound on a finding's length in normalized characters
    check: Check
    # The check takes (data, start, end, lo, hi) and reads context words in data[lo:hi] only: a
    # scan given context fences (Classifier.scan) passes the region of the candidate's own field.
    reads_context: bool = False


def _window(data: bytes, start: int, end: int, *, lower: bool = True, lo: int = 0, hi: int = -1) -> str:
    """Lower-cased text around a candidate, for context words, within data[lo:hi] (hi -1: to
    the end)."""
    before = data[max(lo, start - CONTEXT_BEFORE):start].decode("utf-8", "ignore")
    stop = end + CONTEXT_AFTER if hi < 0 else min(hi, end + CONTEXT_AFTER)
    after = data[end:stop].decode("utf-8", "ignore")
    window = before + " \x00 " + after
    return window.lower() if lower else window


# Short context words are common inside other words, more so once accents are folded (España,
# Agustín, Riaditeľ, Téllez read Espana, Agustin, Riaditel, Tellez): they count only at a word's
# start (a camelCase hump is one: patientDob, homeTel), these four only as a whole word.
_WHOLE_WORD_CONTEXT = frozenset(["tel", "tin", "born", "dob"])


def _word_edge(raw: str, low: str, i: int) -> bool:
    """Whether a word starts or ends between low[i - 1] and low[i]."""
    if i <= 0 or i >= len(low) or not low[i - 1].isalpha() or not low[i].isalpha():
        return True
    return raw[i].isupper() and raw[i - 1].islower()        # a camelCase hump


def _has_context(data: bytes, start: int, end: int, words: tuple[str, ...], lo: int = 0, hi: int = -1) -> bool:
    raw = _window(data, start, end, lower=False, lo=lo, hi=hi)
    low = raw.lower()
    if len(low) != len(raw):           # a letter whose lower case is longer: no humps to read
        raw = low
    for w in words:
        i = low.find(w)
        if i == -1:
            continue
        if len(w) > 4:
            return True
        while i != -1:                 # a bounded window: at most a few dozen occurrences
            if _word_edge(raw, low, i) and (w not in _WHOLE_WORD_CONTEXT or _word_edge(raw, low, i + len(w))):
                return True
            i = low.find(w, i + 1)
    return False


def _boundary_ok(data: bytes, start: int, end: int) -> bool:
    """No letter or digit glued to either side (the ASCII \\b of RE2 misses some cases)."""
    if start > 0 and chr(data[start - 1]).isalnum():
        return False
    return not (end < len(data) and chr(data[end]).isalnum())


_NON_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)


def _digits(s: bytes) -> str:
    return s.translate(None, _NON_DIGITS).decode("ascii")


# Between the groups of a card, SSN or IBAN: any short run of characters that are not ASCII
# letters or digits (dots, slashes, commas, tabs, newlines, double spaces, " - "...). Normalization
# has already turned digits of other scripts into ASCII and dropped invisible characters.
GROUP_SEP = r"[^0-9A-Za-z]{1,3}"


# ---------------------------------------------------------------------------- PII

EMAIL = (r"\b[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,6}"
         r"[A-Za-z]{2,24}\b")


def check_email(data: bytes, s: int, e: int) -> list[Hit]:
    local, _, domain = data[s:e].partition(b"@")
    if local.startswith(b".") or local.endswith(b".") or b".." in local or e - s > 254:
        return []
    return [(s, e, 90, None)]


PHONE_CONTEXT = ("phone", "tel", "call", "mobile", "cell", "fax", "contact", "whatsapp",
                 "sms", "text me", "reach", "telefon", "telephone", "telefono", "電話")
_EXT = r"(?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,5})?"
_NANP_BODY = r"(?:\([2-9]\d{2}\)[ ]?|[2-9]\d{2}[ .-]?)[2-9]\d{2}[ .-]?\d{4}"
PHONE = (r"(?:(?:\B\+|\b00)1[ .-]?" + _NANP_BODY + "|" + r"\b1[ .-]" + _NANP_BODY + "|"
         + r"\B\([2-9]\d{2}\)[ ]?[2-9]\d{2}[ .-]?\d{4}" + "|" + r"\b[2-9]\d{2}[ .-]?[2-9]\d{2}[ .-]?\d{4}"
         + "|" + r"\B\+[1-9]\d{0,2}(?:[ .-]?\(0\))?(?:[ .-]?\(?\d{1,5}\)?){1,6}" + ")" + _EXT + r"\b")


def check_phone(data: bytes, s: int, e: int, lo: int = 0, hi: int = -1) -> list[Hit]:
    raw = data[s:e]
    low = raw.lower()
    for marker in (b"ext", b"x"):
        i = low.find(marker)
        if i > 0:
            raw = raw[:i]
            break
    digits = _digits(raw)
    international = raw.startswith(b"+") and not raw.startswith(b"+1")
    if international:
        if not 8 <= len(digits) <= 15:
            return []
    elif len(digits) not in (10, 11, 13) or len(set(digits)) < 3:
        return []
    separated = any(c in raw for c in (b"-", b".", b" ", b"(", b"+"))
    ctx = _has_context(data, s, e, PHONE_CONTEXT, lo, hi)
    if separated:
        conf = 85 if ctx else 70
    else:
        conf = 70 if ctx else 40
    return [(s, e, conf, "context" if ctx else None)]


SSN_CONTEXT = ("ssn", "social security", "ss#", "soc sec", "sozialversicherung", "tax id", "tin")
# Digits glued to an identifier (id_536-22-8726, x_4111...) still count: only a digit may not
# stand right before or after the value (group 1).
_NOT_DIGIT_BEFORE = r"(?:^|[^0-9])"
_NOT_DIGIT_AFTER = r"(?:\b|[A-Za-z_])"
SSN = _NOT_DIGIT_BEFORE + r"(\d{3}(?:" + GROUP_SEP + r"\d{2}" + GROUP_SEP + r"|\d{2})\d{4})" + _NOT_DIGIT_AFTER


def check_ssn(data: bytes, s: int, e: int, lo: int = 0, hi: int = -1) -> list[Hit]:
    raw = data[s:e]
    digits = _digits(raw)
    if not v.ssn_ok(digits):
        return []
    ctx = _has_context(data, s, e, SSN_CONTEXT, lo, hi)
    if len(digits) != len(raw) and raw.translate(None, b"0123456789-.") == b"":
        conf = 95 if ctx else 85         # 123-45-6789, 123.45.6789
    elif len(digits) != len(raw):
        conf = 90 if ctx else 60         # spaces, slashes, mixed separators
    elif ctx:
        conf = 80
    else:
        return []          # nine bare digits are only an SSN when someone says so
    return [(s, e, conf, "ssn_rules")]


IPV4 = r"\b(?:\d{1,3}\.){3}\d{1,3}\b"
VERSION_CONTEXT = ("version", " v", "release", "build", "firmware", "oid")


def check_ipv4(data: bytes, s: int, e: int) -> list[Hit]:
    # 1.3.6.1.4.1 (OIDs) and 10.0.0.1.5 are not addresses.
    if s >= 2 and data[s - 1] == 0x2E and 48 <= data[s - 2] <= 57:
        return []
    if e + 1 < len(data) and data[e] == 0x2E and 48 <= data[e + 1] <= 57:
        return []
    if not v.ipv4_ok(data[s:e].decode("ascii")):
        return []
    before = data[max(0, s - 12):s].lower()
    if before.endswith((b"v", b"version ", b"version: ", b"build ")):
        return [(s, e, 30, "structure")]
    return [(s, e, 80, "structure")]


IPV6 = r"(?:^|[^0-9A-Za-z:.])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3})"


def check_ipv6(data: bytes, s: int, e: int) -> list[Hit]:
    if not _boundary_ok(data, s, e) or (e < len(data) and data[e] == 0x3A):
        return []
    if e + 1 < len(data) and data[e] == 0x2E and chr(data[e + 1]).isalnum():
        return []
    return [(s, e, 80, "structure")] if v.ipv6_ok(data[s:e].decode("ascii")) else []


IBAN = r"\b[A-Z]{2}\d{2}(?:[^0-9A-Za-z]{0,3}[A-Z0-9]){11,36}\b"


def check_iban(data: bytes, s: int, e: int) -> list[Hit]:
    want = v.IBAN_LENGTHS.get(data[s:s + 2].decode("ascii"))
    if want is None:
        return []
    # Cut the candidate where the country's length is reached (the pattern may run on into a
    # following upper-case word), counting letters and digits but not the group separators.
    have = 0
    end = s
    chars: list[int] = []
    while end < e and have < want:
        c = data[end]
        if c < 0x80 and chr(c).isalnum():
            chars.append(c)
            have += 1
        end += 1
    if have != want or (end < len(data) and chr(data[end]).isalnum()):
        return []
    iban = bytes(chars).decode("ascii")
    return [(s, end, 95, "mod97")] if v.iban_mod97_ok(iban) else []


# Context words and month names are written as the rules read them: normalized, without accents
# (février, März, août and décembre are read fevrier, Marz, aout, decembre).
_MONTHS = ("jan(?:uary|uar|vier)?|feb(?:ruary|ruar)?|fevrier|mar(?:ch|z|s)?|apr(?:il)?|"
           "avril|may|mai|june?|juni|juin|july?|juli|juillet|aug(?:ust)?|aout|"
           "sep(?:t(?:ember)?)?|septembre|o[ck]t(?:ober|obre)?|nov(?:ember|embre)?|"
           "dec(?:ember|embre)?|dez(?:ember)?|enero|febrero|marzo|abril|mayo|junio|julio|"
           "agosto|septiembre|octubre|noviembre|diciembre")
DATE = (r"(?i)(?:\b(?:19|20)\d{2}[-/.]\d{1,2}[-/.]\d{1,2}\b"
        r"|\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b"
        r"|\b\d{1,2}(?:st|nd|rd|th)?\.?[ ]{1,3}(?:of[ ]{1,3})?(?:" + _MONTHS + r")\.?,?[ ]{1,3}(?:19|20)\d{2}\b"
        r"|\b(?:" + _MONTHS + r")\.?[ ]{1,3}\d{1,2}(?:st|nd|rd|th)?,?[ ]{1,3}(?:19|20)\d{2}\b"
        r"|(?:19|20)\d{2}年\d{1,2}月\d{1,2}日)")
DOB_CONTEXT = ("birth", "born", "dob", "d.o.b", "b-day", "bday", "geboren", "geburt", "naissance",
               "nee le", "ne(e)", "nacimiento", "nacido", "nacida", "nascita", "nato il",
               "nata il", "生年月日", "誕生日", "出生", "生日")
# "né le" reads "ne le", which French writes all the time ("il ne le savait pas"): it counts only
# right before the date ("né le 12 mars 1985", "né le lundi 3/4/1990").
_NE_LE = "ne le"
_WEEKDAYS_FR = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
# A date of birth needs one of the context words, so the words themselves are the prefilter.
DOB_PREFILTER = "(?i:" + "|".join(re2_escape(w) for w in (*DOB_CONTEXT, _NE_LE)) + ")"


def _ne_le_before(data: bytes, start: int, lo: int = 0) -> bool:
    """ "ne le" (né le), then at most a weekday, right before the date at `start` (from `lo` on)."""
    before = data[max(lo, start - 24):start].decode("utf-8", "ignore").lower().rstrip()
    for day in _WEEKDAYS_FR:
        if before.endswith(day):
            before = before[:-len(day)].rstrip()
            break
    if not before.endswith(_NE_LE):
        return False
    return len(before) == len(_NE_LE) or not before[-len(_NE_LE) - 1].isalnum()


def _date_parts_ok(raw: str) -> bool:
    nums = [int(x) for x in "".join(c if c.isdigit() else " " for c in raw).split()]
    if len(nums) == 3 and not any(c.isalpha() for c in raw if c.isascii()):
        a, b, c = nums
        if a >= 1900:                                   # Y-M-D
            return 1 <= b <= 12 and 1 <= c <= 31 and a <= 2100
        if c < 100 or 1900 <= c <= 2100:                # D/M/Y or M/D/Y
            return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)
        return False
    if len(nums) == 2:                                  # month named: day and year
        day, year = (nums[0], nums[1]) if nums[1] >= 1900 else (nums[1], nums[0])
        return 1 <= day <= 31 and 1900 <= year <= 2100
    return len(nums) == 3                               # 1985年3月12日


def check_dob(data: bytes, s: int, e: int, lo: int = 0, hi: int = -1) -> list[Hit]:
    raw = data[s:e].decode("utf-8")
    if not _date_parts_ok(raw) or not (_has_context(data, s, e, DOB_CONTEXT, lo, hi) or _ne_le_before(data, s, lo)):
        return []
    return [(s, e, 80, "context")]


PCI_CONTEXT = ("card", "visa", "mastercard", "amex", "credit", "debit", "cc#", "cc ", "pan",
               "payment", "karte", "carte", "tarjeta")
# Between single digits: a space or dash, a line break (CRLF too), or one of tab, line break,
# comma, slash, dot with an optional space after it (a card written one digit per line,
# "4,1,1,1,...", "4, 1, 1, ...").
_DIGIT_SEP = r"(?:[ -]|\r\n|[\t\r\n,/.][ ]?)"
CARD = (_NOT_DIGIT_BEFORE + r"(\d(?:" + _DIGIT_SEP + r"?\d){12,18}"                    # a separator anywhere
        r"|\d{4}(?:" + GROUP_SEP + r"\d{4}){2,6}(?:" + GROUP_SEP + r"\d{1,7})?"  # 4-4-4-n, any separators
        r"|\d{4}" + GROUP_SEP + r"\d{6}" + GROUP_SEP + r"\d{4,5})" + _NOT_DIGIT_AFTER)       # 4-6-5 (Amex), 4-6-4 (Diners)


def check_card(data: bytes, s: int, e: int, lo: int = 0, hi: int = -1) -> list[Hit]:
    rs, re_ = _group_run(data, s, e)
    if (rs, re_) != (s, e):
        # The match is part of a longer run of digit groups (a phone's last group in front, a
        # reference after): every card in the run counts, so no group of it goes out.
        span = (rs, re_) if v.card_ok(_digits(data[rs:re_])) else _card_subspan(data, rs, re_)
        if span is not None:
            ctx = _has_context(data, span[0], span[1], PCI_CONTEXT, lo, hi)
            return [(span[0], span[1], 95 if ctx else 85, "luhn")]
    raw = data[s:e]
    digits = _digits(raw)
    if v.card_ok(digits):
        span = (s, e)
    else:
        span = _card_subspan(data, s, e)
        if span is None:
            # The match stopped inside a longer run of groups (at 19 digits, or where a digit
            # count let it end): a date or a phone glued in front ("2023-05-31 4111 1111 1111
            # 1111", "555-123-4567 4111 ...") took the first digits, and the next match would
            # start inside the card. The card is a run of whole groups further on: try them
            # (bounded: CARD_RUN_DIGITS digits, 10 groups).
            end = _groups_after(data, e, CARD_RUN_DIGITS - len(digits))
            # (windows that do not cross e were tried above or are the next match's)
            span = _card_subspan(data, s, end, max_groups=10, across=e) if end > e else None
            if span is None:
                return []
    ctx = _has_context(data, span[0], span[1], PCI_CONTEXT, lo, hi)
    return [(span[0], span[1], 95 if ctx else 85, "luhn")]


# How many digits of a run of groups a card's check reads: the 19 of a match and a whole card
# after them.
CARD_RUN_DIGITS = 38


def _groups_after(data: bytes, e: int, budget: int) -> int:
    """Where the run of digit groups going on after `e` ends (groups joined by 1-3 separator
    characters, whole groups only, at most `budget` more digits); the rest of a group the match
    cut first."""
    while e < len(data) and 48 <= data[e] <= 57 and budget > 0:
        e, budget = e + 1, budget - 1
    if e < len(data) and 48 <= data[e] <= 57:
        return e
    end = k = e
    while budget > 0:
        j, n = k, 0
        while j < len(data) and n < 3 and _is_group_sep(data[j]):
            j, n = j + 1, n + 1
        m = j
        while m < len(data) and 48 <= data[m] <= 57 and m - j <= budget:
            m += 1
        if n == 0 or m == j or m - j > budget:
            break
        budget -= m - j
        end = k = m
    return end


def _is_group_sep(b: int) -> bool:
    return b < 0x80 and not (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122)


def _group_run(data: bytes, s: int, e: int) -> tuple[int, int]:
    """[s, e) widened by the neighbouring group of 1-7 digits on each side, joined by 1-3
    separator characters: the regex match is greedy, so one group each way is what can still
    belong to a card it cut. Bounded: at most 11 bytes looked at each way."""
    k, n = s - 1, 0
    while k >= 0 and n < 3 and _is_group_sep(data[k]):
        k, n = k - 1, n + 1
    m = k
    while m >= 0 and 48 <= data[m] <= 57 and k - m < 8:
        m -= 1
    if n and m < k and k - m <= 7 and not (m >= 0 and 48 <= data[m] <= 57):
        s = m + 1
    k, n = e, 0
    while k < len(data) and n < 3 and _is_group_sep(data[k]):
        k, n = k + 1, n + 1
    m = k
    while m < len(data) and 48 <= data[m] <= 57 and m - k < 8:
        m += 1
    if n and m > k and m - k <= 7 and not (m < len(data) and 48 <= data[m] <= 57):
        e = m
    return s, e


def _card_subspan(data: bytes, s: int, e: int, max_groups: int = 8, across: int = -1) -> tuple[int, int] | None:
    """A separated run can hold a card among other digit groups ("4111 1111 1111 1111 123",
    "ref 12 4111 1111 1111 1111", a phone's last group in front): every run of whole groups that
    is a valid card counts, and the finding covers all of them, since which one is the card
    cannot be told and no digit of either may go out. Bounded: at most 8 groups, 36 windows."""
    groups: list[tuple[int, int]] = []
    i = s
    while i < e:
        j = i
        while j < e and 48 <= data[j] <= 57:
            j += 1
        groups.append((i, j))
        i = j
        while i < e and not 48 <= data[i] <= 57:
            i += 1
    n = len(groups)
    if not 2 <= n <= max_groups:
        return None
    widths = [j - i for i, j in groups]
    found: tuple[int, int] | None = None
    for a in range(n):
        total = 0
        for b in range(a, n):
            total += widths[b]
            if total > 19:
                break
            if total < 13 or (a, b) == (0, n - 1):
                continue                     # too short; or the whole run, tried by the caller
            gs, ge = groups[a][0], groups[b][1]
            if across != -1 and not gs < across < ge:
                continue                     # only windows across ACROSS, when given
            if v.card_ok(_digits(data[gs:ge])):
                found = (gs, ge) if found is None else (min(found[0], gs), max(found[1], ge))
    return found


# ---------------------------------------------------------------------------- PHI

NPI_CONTEXT = ("npi", "provider", "prescriber", "physician", "practitioner", "doctor", "dr.",
               "clinician", "national provider")
NPI = r"\b[12]\d{9}\b"


def check_npi(data: bytes, s: int, e: int, lo: int = 0, hi: int = -1) -> list[Hit]:
    if not v.npi_ok(data[s:e].decode("ascii")):
        return []
    ctx = _has_context(data, s, e, NPI_CONTEXT, lo, hi)
    return [(s, e, 90 if ctx else 40, "luhn")]


MRN = (r"(?i)\b(?:mrn|medical[ ]record(?:[ ](?:number|no\.?|num\.?|#))?|patient[ ](?:id|number|no\.?|#)"
       r"|chart[ ](?:number|no\.?|#)|hospital[ ]number)[ ]{0,3}(?:[:#=]|is|was)?[ ]{0,3}#?[ ]{0,2}"
       r"([A-Z0-9][A-Z0-9-]{3,18}[A-Z0-9])\b")


def check_mrn(data: bytes, s: int, e: int) -> list[Hit]:
    if sum(48 <= c <= 57 for c in data[s:e]) < 4:
        return []
    return [(s, e, 75, "context")]


# ---------------------------------------------------------------------------- secrets

def _entropy_gate(floor: float, conf: int, skip: int = 0,
                  reject: Callable[[str], bool] | None = None) -> Check:
    def check(data: bytes, s: int, e: int) -> list[Hit]:
        value = data[s:e].decode("utf-8")
        if reject is not None and reject(value):
            return []
        if v.shannon_entropy(value[skip:]) < floor:
            return []
        return [(s, e, conf, "entropy")]
    return check


# Key patterns have no word boundary in front: a key glued to an identifier (aws_key_AKIA...,
# token=ghp_...) is still a key; their prefixes are specific enough on their own.
# Nor behind: a key's length is fixed or its class greedy, so what follows (aws_key_AKIA..._prod)
# does not decide whether it is one.
AWS = r"((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})"
GITHUB = (r"((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})")
SLACK = (r"(xox[abposr]-(?:\d{6,15}-){1,3}[A-Za-z0-9]{16,64}"
         r"|\bxapp-\d-[A-Z0-9]{8,15}-\d{8,15}-[a-z0-9]{32,80}\b"
         r"|https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/]{20,120})")
STRIPE = r"((?:sk|rk)_live_[A-Za-z0-9]{20,99})"
# "sk-" alone is too short to stand after a letter (task-..., disk-...): anything else may precede.
OPENAI = (r"(?:^|[^A-Za-z])(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,250}"
          r"|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|sk-[A-Za-z0-9]{40,64})")
ANTHROPIC = r"(sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_-]{20,200})"
JWT = r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]+)?"
PRIVATE_KEY = r"-----BEGIN[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----"


def check_jwt(data: bytes, s: int, e: int) -> list[Hit]:
    e = min(e, s + JWT_MAX)
    return [(s, e, 95, "structure")] if v.jwt_header_ok(data[s:e].decode("ascii")) else []


# A key block as the rule reads it (in normalized text), and as classify/extent.py follows it past
# the rule's bound: one definition for both. The END line's closing dashes come within
# PEM_CLOSE_WITHIN characters after "-----END"; the body holds base64, its headers, line breaks.
PEM_BEGIN = "-----BEGIN"
PEM_END = "-----END"
PEM_CLOSE = "-----"
PEM_CLOSE_WITHIN = 60
PEM_BODY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=:,- \t\r\n"
_PEM_END_B, _PEM_CLOSE_B = PEM_END.encode("ascii"), PEM_CLOSE.encode("ascii")
_PEM_BODY_B = PEM_BODY_CHARS.encode("ascii")


def check_private_key(data: bytes, s: int, e: int) -> list[Hit]:
    """The header is the evidence; the finding covers the whole block (to the END line) so that a
    redaction removes the key material, up to PRIVATE_KEY_MAX characters."""
    limit = min(len(data), s + PRIVATE_KEY_MAX)
    end_at = data.find(_PEM_END_B, e, limit)
    if end_at != -1:
        after = end_at + len(_PEM_END_B)
        close = data.find(_PEM_CLOSE_B, after, min(limit, after + PEM_CLOSE_WITHIN))
        if close != -1:
            return [(s, close + len(_PEM_CLOSE_B), 99, "structure")]
    body = data[e:limit]
    i = e + len(body) - len(body.lstrip(_PEM_BODY_B))
    while i > e and data[i - 1] in b" \t\r\n":
        i -= 1
    return [(s, i, 99, None)]


GENERIC = (r"(?i)\b[a-z0-9_.-]{0,30}(?:secret|passwd|password|passphrase|pwd|token|api[_.-]?key|"
           r"apikey|access[_.-]?key|auth[_.-]?key|private[_.-]?key|credentials?)[a-z0-9_.-]{0,30}"
           r"[\"']?[ \t]{0,3}(?:=|:=|:|=>)[ \t]{0,3}[\"'`]?([^\s\"'`,;<>(){}\[\]]{8,200})")
_PLACEHOLDERS = ("example", "changeme", "change_me", "password", "placeholder", "redacted", "your_",
                 "your-", "xxxx", "****", "...", "<", "${", "{{", "%(", "process.env", "os.environ",
                 "getenv", "secrets.", "settings.", "config.", "env.", "null", "none", "undefined",
                 "dummy", "sample", "test1234", "abc123", "1234567", "todo", "fixme")


def check_generic(data: bytes, s: int, e: int) -> list[Hit]:
    value = data[s:e].decode("utf-8", "replace")
    low = value.lower()
    if any(p in low for p in _PLACEHOLDERS):
        return []
    classes = (any(c.islower() for c in value) + any(c.isupper() for c in value)
               + any(c.isdigit() for c in value) + any(not c.isalnum() for c in value))
    if classes < 2:
        return []
    if not any(c.isdigit() for c in value) and all(c.isalpha() or c in "._-" for c in value):
        return []            # identifiers and dotted paths: self.api_key, MyTokenType
    if v.shannon_entropy(value) < min(3.0, 0.8 * (len(value).bit_length() - 1) + 0.3):
        return []
    return [(s, e, 65, "entropy")]


# Credentials that stand without a keyword and "=": an HTTP credential after its scheme
# ("Authorization: Bearer <token>", "Basic <base64 of user:password>") and the password of a URL's
# userinfo ("postgres://svc:<password>@db:5432/app", "https://deploy:<token>@git.example.com").
AUTH_SCHEME = r"(?i)\b(?:bearer|basic)[ \t]{1,3}([A-Za-z0-9._~+/-]{16,400}={0,2})"
URL_PASSWORD = r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s:/?#@\[\]]{1,64}:([^\s/?#@\[\]\"'`<>]{1,200})@[A-Za-z0-9\[]"
AUTH_VALUE_MAX = 402


def check_auth_scheme(data: bytes, s: int, e: int) -> list[Hit]:
    """A bearer token has letters and digits (prose after "bearer"/"basic" rarely does); a Basic
    credential is the base64 of "user:password"."""
    value = data[s:e].decode("utf-8", "replace")
    low = value.lower()
    if any(p in low for p in _PLACEHOLDERS):
        return []
    if not (any(c.isalpha() for c in value) and any(c.isdigit() for c in value)):
        try:
            decoded = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            return []
        if b":" not in decoded:
            return []
    if v.shannon_entropy(value) < 3.0:
        return []
    return [(s, e, 80, "entropy")]


def check_url_password(data: bytes, s: int, e: int) -> list[Hit]:
    value = data[s:e].decode("utf-8", "replace")
    low = value.lower()
    if low in ("password", "pass", "pwd", "secret", "x", "*", "***") or any(
            p in low for p in ("<", "${", "{{", "%(", "****", "xxxx", "your_", "your-", "changeme")):
        return []
    return [(s, e, 85, "structure")]


# Issuer keys with a specific prefix or structure (no keyword needed). Like the key patterns
# above, none needs a word boundary in front: the prefix and the fixed length or class carry it.
GOOGLE_API = r"(AIza[0-9A-Za-z_-]{35})"
GITLAB = r"(gl(?:pat|dt|rt|ptt|soat|cbt)-[0-9A-Za-z_-]{20,80})"
NPM = r"(npm_[A-Za-z0-9]{36})"
PYPI = r"(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,400})"
HUGGINGFACE = r"((?:hf_|api_org_)[A-Za-z]{34})"
SENDGRID = r"(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})"
SHOPIFY = r"(shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})"
DATABRICKS = r"(dapi[a-f0-9]{32}(?:-\d)?)"
DIGITALOCEAN = r"(do[opr]_v1_[a-f0-9]{64})"
# Mailgun: the legacy "key-" + 32 hex, and the current 32 hex-8 hex-8 hex.
MAILGUN = r"(key-[0-9a-f]{32}|\b[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{8})\b"
ATLASSIAN = r"(AT(?:ATT|CTT)3[A-Za-z0-9_=-]{150,250})"
# Twilio: an API key's SID ("SK" + 32 hex); an auth token is 32 bare hex, a secret only where
# Twilio, an auth token or an account SID ("AC" + 32 hex) comes shortly before it on its line. The
# context is in the pattern, not the check: a document of MD5s or dashless UUIDs yields no candidate
# (each candidate costs the request's inspection budget).
TWILIO_SK = r"\b(SK[0-9a-f]{32})\b"
TWILIO_TOKEN = r"(?i)(?:twilio|auth[_-]?token|\bAC[0-9a-f]{32})[^\n]{0,48}\b([0-9a-f]{32})\b"
TWILIO_TOKEN_MAX = 32 + 48 + 32


def check_twilio_token(data: bytes, s: int, e: int) -> list[Hit]:
    """The context found it (the pattern holds the words), the entropy rules out a run like 000…0."""
    return [(s, e, 80, "context")] if v.shannon_entropy(data[s:e].decode("ascii")) >= 3.0 else []
# Azure: a storage account key, a Service Bus / Event Hubs / Relay SharedAccessKey (in connection
# strings, "Key=value;"), and the signature of a SAS token in a URL's query.
AZURE = (r"(?i)(?:\b(?:AccountKey|SharedAccessKey)[ \t]{0,3}=[ \t]{0,3}|[?&]sig=)"
         r"((?:[A-Za-z0-9+/]|%2[BbFf]){40,120}(?:=|%3[Dd]){0,2})")


def check_azure(data: bytes, s: int, e: int) -> list[Hit]:
    value = data[s:e].decode("ascii")
    if v.shannon_entropy(value) < 3.5:
        return []
    if any(p in value.lower() for p in ("xxxx", "example", "your")):
        return []
    return [(s, e, 90, "entropy")]


# Credential files: a .netrc entry ("machine HOST login USER password PW", on one line or
# several) and a .pgpass line ("host:port:database:user:password").
NETRC = r"(?i)\blogin[ \t\r\n]{1,10}[^\s]{1,64}[ \t\r\n]{1,10}password[ \t]{1,3}([^\s]{1,200})"
# (No anchor or multi-line flag: the prefix analysis of the streaming gate, classify/prefix.py,
# reads only "i", and a match that could begin with a line break would hold every line break at
# the end of a streamed text. That the line holds nothing else, and that the password ends it, is
# checked in check_cred_file.)
PGPASS = (r"(?:\*|[A-Za-z0-9.-]{0,126}[A-Za-z.][A-Za-z0-9.-]{0,126}):(?:\*|\d{1,5}):"
          r"(?:\*|[A-Za-z0-9_.$-]{1,63}):(?:\*|[A-Za-z0-9_.@$-]{1,63}):((?:[^\s:\\]|\\\S){1,200})")
_PGPASS_FIELDS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_$@*:")
PGPASS_MAX = 1 + 8 + 254 + 1 + 5 + 1 + 63 + 1 + 63 + 1 + 400


def check_cred_file(data: bytes, s: int, e: int) -> list[Hit]:
    value = data[s:e].decode("utf-8", "replace")
    if not check_url_password(data, s, e) or value.lower() in ("password", "login", "machine"):
        return []
    if v.shannon_entropy(value) < 2.0 or len(value) < 4:
        return []
    if data[s - 1:s] == b":":                   # a .pgpass line: alone on its line, the password last
        line_start = data.rfind(b"\n", max(0, s - PGPASS_MAX), s) + 1
        if line_start == 0 and s > PGPASS_MAX:
            return []
        fields = data[line_start:s].lstrip(b" \t")
        if s - line_start - len(fields) > 8 or not all(c in _PGPASS_FIELDS for c in fields):
            return []
        after = data[e:e + 64].lstrip(b" \t")
        if not after.startswith((b"\n", b"\r")) and (after or e + 64 < len(data)):
            return []
        if all(c in b"0123456789abcdefABCDEF:" for c in fields + data[s:e]):
            return []         # an IPv6 address or a MAC-like run of hex groups, not a .pgpass line
    return [(s, e, 80, "structure")]


def _not_example(value: str) -> bool:
    return value.endswith("EXAMPLE")


def _is_anthropic(value: str) -> bool:
    return value.startswith("sk-ant-")


def builtin_rules() -> tuple[Rule, ...]:
    return (
        Rule("pii.email", EMAIL, r"[A-Za-z0-9._%+-]@[A-Za-z0-9]", 254, check_email),
        Rule("pii.phone", PHONE, r"\d{3}[ .-]?\d{4}|\+[1-9]", 80, check_phone, reads_context=True),
        Rule("pii.us_ssn", SSN, r"\d{3}[^0-9A-Za-z]{0,3}\d{2}[^0-9A-Za-z]{0,3}\d{4}", 15, check_ssn,
             reads_context=True),
        Rule("pii.ip_address", IPV4, r"\d\.\d{1,3}\.\d", 15, check_ipv4),
        Rule("pii.ip_address", IPV6, r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:", 45, check_ipv6),
        Rule("pii.iban", IBAN, r"[A-Z]{2}\d{2}[^0-9A-Za-z]{0,3}[A-Z0-9]", 4 * v.IBAN_MAX_LEN, check_iban),
        Rule("pii.date_of_birth", DATE, DOB_PREFILTER, 40, check_dob, reads_context=True),
        Rule("pci.card_number", CARD,
             r"\d(?:" + _DIGIT_SEP + r"?\d){6}|\d{4}[^0-9A-Za-z]{1,3}\d{4}",
             # 19 digits and 18 separators of up to 2 characters, and a neighbouring group of up
             # to 7 digits after up to 3 separator characters on either side (_group_run); a run
             # of CARD_RUN_DIGITS digits in at most 10 groups (_groups_after)
             max(19 + 18 * 2 + 2 * (7 + 3), CARD_RUN_DIGITS + 9 * 3), check_card, reads_context=True),
        Rule("phi.us_npi", NPI, r"[12]\d{9}", 10, check_npi, reads_context=True),
        Rule("phi.mrn", MRN, r"(?i)mrn|medical[ ]record|patient[ ]|chart[ ]|hospital[ ]number", 20,
             check_mrn),
        Rule("secret.aws_access_key", AWS, r"A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA", 20,
             _entropy_gate(3.0, 95, skip=4, reject=_not_example)),
        Rule("secret.github_token", GITHUB, r"gh[pousr]_|github_pat_", 93, _entropy_gate(3.0, 95, 4)),
        Rule("secret.private_key", PRIVATE_KEY, r"-----BEGIN", PRIVATE_KEY_MAX, check_private_key),
        Rule("secret.jwt", JWT, r"eyJ[A-Za-z0-9_-]{8}", JWT_MAX, check_jwt),
        Rule("secret.slack_token", SLACK, r"xox[abposr]-|xapp-|hooks\.slack\.com", 160,
             _entropy_gate(3.0, 95, 5)),
        Rule("secret.stripe_key", STRIPE, r"[sr]k_live_", 107, _entropy_gate(3.0, 95, 8)),
        Rule("secret.openai_key", OPENAI, r"sk-", 262,
             _entropy_gate(3.5, 95, 3, reject=_is_anthropic)),
        Rule("secret.anthropic_key", ANTHROPIC, r"sk-ant-", 220, _entropy_gate(3.5, 97, 14)),
        Rule("secret.generic", AUTH_SCHEME, r"(?i)bearer[ \t]|basic[ \t]", AUTH_VALUE_MAX + 10,
             check_auth_scheme),
        Rule("secret.url_password", URL_PASSWORD, r"://", 20 + 3 + 64 + 1 + 200 + 2, check_url_password),
        Rule("secret.google_api_key", GOOGLE_API, r"AIza", 39, _entropy_gate(3.5, 95, 4)),
        Rule("secret.gitlab_token", GITLAB, r"gl(?:pat|dt|rt|ptt|soat|cbt)-", 86, _entropy_gate(3.0, 95, 6)),
        Rule("secret.npm_token", NPM, r"npm_", 40, _entropy_gate(3.5, 95, 4)),
        Rule("secret.pypi_token", PYPI, r"pypi-AgEIcHlwaS5vcmc", 420, _entropy_gate(3.5, 97, 5)),
        Rule("secret.huggingface_token", HUGGINGFACE, r"hf_|api_org_", 42, _entropy_gate(3.5, 95, 3)),
        Rule("secret.sendgrid_key", SENDGRID, r"SG\.", 69, _entropy_gate(3.5, 95, 3)),
        Rule("secret.shopify_token", SHOPIFY, r"shp(?:at|ca|pa|ss)_", 38, _entropy_gate(3.0, 95, 6)),
        Rule("secret.databricks_token", DATABRICKS, r"dapi", 38, _entropy_gate(3.0, 95, 4)),
        Rule("secret.digitalocean_token", DIGITALOCEAN, r"do[opr]_v1_", 71, _entropy_gate(3.0, 95, 7)),
        Rule("secret.mailgun_key", MAILGUN, r"key-|[0-9a-f]{32}-", 50, _entropy_gate(3.0, 90)),
        Rule("secret.atlassian_token", ATLASSIAN, r"AT(?:ATT|CTT)3", 256, _entropy_gate(3.5, 95, 6)),
        Rule("secret.twilio_key", TWILIO_SK, r"SK[0-9a-f]{32}", 34, _entropy_gate(3.0, 90, 2)),
        Rule("secret.twilio_key", TWILIO_TOKEN, r"(?i)twilio|auth[_-]?token|AC[0-9a-f]{32}", TWILIO_TOKEN_MAX,
             check_twilio_token),
        Rule("secret.azure_key", AZURE, r"(?i)accountkey|sharedaccesskey|sig=", 140, check_azure),
        Rule("secret.generic", NETRC, r"(?i)login", 10 + 64 + 10 + 8 + 3 + 200 + 5, check_cred_file),
        Rule("secret.generic", PGPASS, r":(?:\*|\d{1,5}):", PGPASS_MAX, check_cred_file),
        Rule("secret.generic", GENERIC,
             r"(?i)secret|passwd|password|passphrase|pwd|token|api[_.-]?key|apikey|access[_.-]?key|"
             r"auth[_.-]?key|private[_.-]?key|credential", GENERIC_VALUE_MAX, check_generic),
    )
