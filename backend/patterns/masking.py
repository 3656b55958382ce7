"""Variable masking and tokenisation for the template miner.

Masking runs BEFORE matching, as one pass of one compiled regex: every alternative below is a
kind of variable, and every match becomes ``<*>``. A line is then split into tokens on spaces and
on structural punctuation, so ``uid=0,`` and ``(TID 7).`` give stable constant tokens around the
variable instead of one opaque word.

Kinds masked (where two could match, the first listed wins):

- timestamps: ISO dates with an optional time, clock times (``18:01:47,978``), date(1) and syslog
  dates (``Fri Jul 01 08:16:53 PDT 2005``)
- URLs (``scheme://...``), UUIDs, IPv4 and IPv6 addresses (``host:port`` gives ``<*>:<*>``)
- sizes with a unit, also after a space (``2.1 KB``): the unit is chosen at run time
- absolute paths (``/var/log/x?q=1``, ``~/x``, ``./x``, ``C:\\x``)
- single-token quoted strings (``'foo'``, ``"bar"``), except JSON keys (``"k":``)
- MAC addresses and other colon-separated hex byte strings, ``0x`` hex
- any other token that contains a digit: numbers, durations (``30s``, ``250ms``, ``1.5h``), ids
  (``blk_-42``, ``rdd_2_3``, ``req-9f3a``), hashes, versions, model names (``gpt-4o``), host names
  with digits. A token glued to ``(`` (a function name like ``jk2_init(``) or to ``=`` (a key like
  ``r24=``) is kept: it is code, not data.
- the value of ``key=value``, whatever it is.

A run of variables separated by spaces or commas (a list of block ids) becomes ONE ``<*>``, so
lists of any length give one template.

Quoted strings with spaces are NOT masked whole: they are usually a message or a request line
(``"GET /v2/x HTTP/1.1"``) whose words are the template; the variables inside are masked anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "<*>"

# Characters that end a token for masking purposes. ':' is here so ``host:port`` and ``key:7`` mask
# the port/value alone; '.' is not (versions, host names and dotted ids are one token), but a run
# of dots (``instruction......0``, aligned register dumps) separates.
_DELIMS = r"\s()\[\]{}<>,;\"'=:|"
_BODY = rf"(?:[^{_DELIMS}.]|(?<!\.)\.(?!\.))"
# Not followed by more token body (a sentence's final '.' is not body), nor by '(' (a function
# name) nor '=' (a key).
_END = rf"(?![^{_DELIMS}.(=]|[(=]|\.[^{_DELIMS}.])"
_START = rf"(?:(?<![^{_DELIMS}])|(?<=\.\.))"
_HEX = r"[0-9a-fA-F]"
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"

# Each kind of variable, as a regex tried at a token start. Order matters where two could match
# (a timestamp before a plain number); `build_mask_regex` dispatches on the first character.
_TIMESTAMP = (  # 2017-05-16, 2017-05-16T00:00:00.008Z, 2015-10-18 18:01:47,978
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?" + _END
)
_CLOCK = r"\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?" + _END  # 06:55:46, 18:01:47,978
_DATE = (  # date(1) and syslog: [Fri ]Jul 01 08:16:53[ PDT][ 2005]
    rf"(?:{_DAY} )?{_MONTH} +\d{{1,2}} \d{{2}}:\d{{2}}:\d{{2}}(?:[.,]\d+)?"
    r"(?: [A-Z]{3,4})?(?: \d{4})?" + _END
)
# any scheme (http, hdfs, spark, akka.tcp); runs to a space, a quote or a closing bracket
_URL = r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>)\]}]*"
_UUID = rf"{_HEX}{{8}}-(?:{_HEX}{{4}}-){{3}}{_HEX}{{12}}" + _END
_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}(?![\w.])"  # a following :port is masked as a number
_IPV6 = (
    rf"(?:{_HEX}{{1,4}}:){{7}}{_HEX}{{1,4}}(?![\w:])"
    rf"|(?:{_HEX}{{1,4}}:){{1,6}}:(?:{_HEX}{{1,4}}(?::{_HEX}{{1,4}})*)?(?![\w:])"
)
_IPV6_LEADING = rf"::{_HEX}{{1,4}}(?::{_HEX}{{1,4}})*(?![\w:])"
# sizes: the unit is chosen at run time (2.1 KB, then 16.0 B), so it is part of the variable
_SIZE = r"\d+(?:\.\d+)?\s?(?:[KMGTPE]i?B|B|bytes)(?![\w])"
# absolute paths (POSIX, home, ./relative) with a query string if any; Windows drive paths
_PATH = rf"(?:~|\.{{1,2}})?/[^{_DELIMS}?]+(?:\?[^\s\"'<>]*)?"
_WINPATH = r"[A-Za-z]:\\[^\s\"'<>|]+"
# single-token quoted strings, empty ones too ('' is a value like any other), but not JSON keys
_QUOTED = r"'[^'\s]*'(?!\s*:)|\"[^\"\s]*\"(?!\s*:)"
_MAC = rf"{_HEX}{{2}}(?:[:-]{_HEX}{{2}}){{5,}}" + _END  # also longer colon-separated hex strings
_HEX0X = rf"0[xX]{_HEX}+" + _END
# anything else with a digit: numbers, durations (30s, 250ms, 1.5h), ids, versions, host names
_DIGITS = rf"(?:[^{_DELIMS}\d.]|(?<!\.)\.(?!\.))*+\d{_BODY}*+" + _END
# key=value: the value, whatever it is ('=' is a delimiter, so this is a token start)
_KV_VALUE = r"(?<==)[^\s,;()\[\]{}<>\"'|]+"

#: every kind, in precedence order (the benchmark hands them to drain3 one by one)
_ALTERNATIVES: tuple[str, ...] = (
    _TIMESTAMP, _CLOCK, _DATE, _URL, _UUID, _IPV4, _IPV6, _IPV6_LEADING, _SIZE, _PATH, _WINPATH,
    _QUOTED, _MAC, _HEX0X, _DIGITS, _KV_VALUE,
)  # fmt: skip

# A plain word (no digit, ends at a delimiter) is never a variable: rejecting it up front spares
# trying every kind at most token starts. Day and month names may start a date.
_PLAIN_WORD = rf"(?!{_DAY} |{_MONTH} )[A-Za-z][A-Za-z_'-]*+(?=[\s,;)\]}}>\"'|=]|$)"


def build_mask_regex(extra: Iterable[str] = ()) -> re.Pattern[str]:
    """Compile the single masking regex; `extra` patterns are tried first, at token starts.

    Kinds are grouped by the class of their first character, so a token only tries the kinds it
    can start. A run of variables separated only by spaces or commas (a list of ids, IPs, blocks)
    is one match, hence one ``<*>``: lists of any length give the same template.
    """
    kinds = "|".join(
        [
            *extra,
            rf"(?=\d)(?:{_TIMESTAMP}|{_CLOCK}|{_UUID}|{_IPV4}|{_IPV6}|{_SIZE}|{_MAC}|{_HEX0X})",
            rf"(?=[A-Za-z])(?:{_DATE}|{_URL}|{_UUID}|{_IPV6}|{_MAC}|{_WINPATH})",
            rf"(?=[/~.])(?:{_PATH})",
            rf"(?=['\"])(?:{_QUOTED})",
            _IPV6_LEADING,
            _DIGITS,
        ]
    )
    one = f"(?:{kinds})"
    return re.compile(rf"{_START}(?!{_PLAIN_WORD}){one}(?:(?:,\s*|\s+){one})*|{_KV_VALUE}")


MASK_RE = build_mask_regex()

# Tokens: the mask, dot runs, structural punctuation one char each, a ':' that ends a word
# (``provider openai: HTTP`` keeps ``:`` when ``openai`` turns into ``<*>``), else runs of anything
# else; a ':' inside a word stays (``sshd:auth``, ``environment:user.dir``).
_TOKEN_RE = re.compile(
    r"<\*>|\.{2,}|[()\[\]{}=,;\"']|:(?=\s|$)"
    r"|(?:[^\s()\[\]{}=,;\"'<.:]|<(?!\*>)|\.(?!\.)|:(?!\s|$))+"
)

# Constant-looking tokens: plain words (letters, '_', '-', a trailing sentence mark) and pure
# punctuation. Everything else (dotted names, host names, anything with '/', '@', '<*>'...) looks
# like data; the miner treats a difference between two constant-looking tokens as a difference
# in the message itself.
_WORDLIKE_RE = re.compile(r"[A-Za-z][A-Za-z_'-]*[.:!?+]?|[^\w\s<]+")


def mask(text: str, regex: re.Pattern[str] = MASK_RE) -> str:
    """Replace every variable in `text` by ``<*>`` (one regex pass)."""
    return regex.sub(MASK, text)


def tokenize(masked: str) -> list[str]:
    """Split a masked line into tokens (one regex pass)."""
    return _TOKEN_RE.findall(masked)


def tokenize_with_gaps(masked: str) -> tuple[list[str], list[bool]]:
    """Tokens plus, for each, whether a space preceded it: enough to print a template the way the
    line was written (``uid=<*>`` rather than ``uid = <*>``)."""
    tokens: list[str] = []
    gaps: list[bool] = []
    end = 0
    for m in _TOKEN_RE.finditer(masked):
        tokens.append(m.group())
        gaps.append(m.start() > end)
        end = m.end()
    if gaps:
        gaps[0] = False
    return tokens, gaps


def render(tokens: Iterable[str], gaps: Iterable[bool]) -> str:
    """Join tokens back into a template string, spaces where the first line had them."""
    return "".join((" " + t) if g else t for t, g in zip(tokens, gaps, strict=True))


def is_wordlike(token: str) -> bool:
    """True for tokens that look like a fixed part of a message (see `_WORDLIKE_RE`)."""
    return _WORDLIKE_RE.fullmatch(token) is not None
