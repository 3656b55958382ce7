"""Secret redaction: applied to everything a summary sends off the machine.

`Redactor(extra_patterns).redact(text)` returns the text with every secret replaced by
``[REDACTED:<kind>]`` and the number of replacements. Built-in kinds:

| kind             | what                                                                 |
|------------------|----------------------------------------------------------------------|
| private_key      | PEM private keys (``-----BEGIN ... PRIVATE KEY-----`` to its END, or |
|                  | to the end of the base64 when the END line was cut off)              |
| openrouter_key   | ``sk-or-...``                                                        |
| anthropic_key    | ``sk-ant-...``                                                       |
| openai_key       | ``sk-proj-...``, ``sk-svcacct-...``, ``sk-...``                      |
| stripe_key       | ``sk_live_`` / ``sk_test_`` / ``rk_live_`` / ``rk_test_`` keys       |
| github_token     | ``ghp_ gho_ ghu_ ghs_ ghr_`` tokens and ``github_pat_`` tokens       |
| aws_access_key   | ``AKIA...`` / ``ASIA...`` key ids                                    |
| aws_secret_key   | the value of ``aws_secret_access_key = ...``                         |
| google_api_key   | ``AIza...``                                                          |
| slack_token      | ``xoxb- xoxp- xoxa- xoxo- xoxs- xoxr-`` tokens                        |
| jwt              | ``eyJ...`` . ``eyJ...`` . signature                                   |
| bearer_token     | the credential of ``Authorization: Bearer|Token ...`` and of a bare   |
|                  | ``Bearer <token>``                                                    |
| basic_auth       | the credential of ``Authorization: Basic ...`` and of a bare          |
|                  | ``Basic <base64>``                                                    |
| url_password     | the password of ``scheme://user:password@host``                      |
| secret           | the value of ``password=``, ``"api_key": ...``, ``client_secret:`` .. |
| email            | e-mail addresses                                                      |
| custom           | matches of the configured `summarizer.redact_patterns`                |

Where a kind needs context (a header name, ``user:`` in a URL, ``password=``), the context is kept
and only the secret is replaced: ``Authorization: Bearer [REDACTED:bearer_token]``; when that
secret is itself a provider's key, it is named as one (``api_key=[REDACTED:openai_key]``).

The built-in kinds are ONE compiled regex, so a text is scanned once (leftmost match wins, then
the order above), and only when a cheap gate finds one of the substrings every match contains
(``sk-``, ``@``, ``://``, ``bearer``, ``password``...): most log lines never pay for the regex.
Configured patterns are arbitrary regexes (their groups and backreferences would clash if
merged), so each runs as its own pass, before the built-in one. Redacting twice changes
nothing: no pattern matches a ``[REDACTED:...]`` marker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["KINDS", "Redactor", "redact"]

_PEM = (
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:(?s:.*?)-----END[A-Z0-9 ]*PRIVATE KEY-----|(?:[A-Za-z0-9+/=\s]|\\[nr])*)"
)
_TOKEN_END = r"(?![A-Za-z0-9_\-])"
# a credential after a scheme word: anything up to a space, quote, comma or bracket
_CRED = r"(?!\[REDACTED)[^\s\"',;\[\]{}<>]+"

# (kind, regex, has a kept-context prefix group). Order matters where two match at one place.
_RULES: tuple[tuple[str, str, bool], ...] = (
    ("private_key", _PEM, False),
    # Authorization headers (also "authorization": "..." in JSON, authorization=... in logfmt)
    (
        "authorization",
        r"(?P<p_authorization>(?i:\b(?:proxy-)?authorization)[\"']?\s*[:=]\s*[\"']?"
        r"(?:(?i:bearer|basic|token|digest|apikey)\s+)?)"
        r"(?!(?i:bearer|basic|token|digest|apikey)(?:\s|$))" + _CRED,
        True,
    ),
    ("openrouter_key", r"\bsk-or-(?:v1-)?[A-Za-z0-9]{16,}" + _TOKEN_END, False),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{16,}" + _TOKEN_END, False),
    (
        "openai_key",
        r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}" + _TOKEN_END,
        False,
    ),
    ("stripe_key", r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}" + _TOKEN_END, False),
    (
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})" + _TOKEN_END,
        False,
    ),
    ("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", False),
    (
        "aws_secret_key",
        r"(?P<p_aws_secret_key>(?i:aws_?secret_?access_?key)[\"']?\s*[:=]\s*[\"']?)"
        r"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
        True,
    ),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}" + _TOKEN_END, False),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", False),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*" + _TOKEN_END,
        False,
    ),
    # bare scheme + credential; a digit (or '=' padding) must appear, so prose never matches
    (
        "bearer_token",
        r"(?P<p_bearer_token>\b[Bb]earer\s+)(?=[A-Za-z0-9._~+/\-]*[0-9])[A-Za-z0-9._~+/\-]{16,}=*",
        True,
    ),
    (
        "basic_auth",
        r"(?P<p_basic_auth>\bBasic\s+)(?=[A-Za-z0-9+/]*[0-9=+/])[A-Za-z0-9+/]{12,}={0,2}",
        True,
    ),
    (
        "url_password",
        r"(?P<p_url_password>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@\"'<>\[\]]*:)"
        r"(?!\[REDACTED)[^\s/@\"'<>]+(?=@)",
        True,
    ),
    (
        "secret",
        r"(?P<p_secret>(?i:\b(?:[A-Za-z0-9]+[_\-])*(?:password|passwd|pwd|passphrase|secret"
        r"|api_?key|access_?token|refresh_?token|auth_?token|secret_?key|private_?key))"
        r"[\"']?\s*[:=]\s*[\"']?)" + _CRED,
        True,
    ),
    (
        "email",
        r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*"
        r"\.[A-Za-z]{2,}\b",
        False,
    ),
)

#: every kind a marker can name
KINDS: tuple[str, ...] = (
    *(k for k, _, _ in _RULES if k != "authorization"),
    "custom",
)


def _compile() -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<k_{kind}>{rx})" for kind, rx, _ in _RULES))


_BUILTIN = _compile()
_PREFIXED = frozenset(kind for kind, _, prefixed in _RULES if prefixed)

# A cheap gate: every built-in match contains one of these (lower-cased) substrings. Scanning the
# lower-cased text for them is ~15x faster than the full regex, and most log lines have none.
_TRIGGERS = (
    "-----begin", "authorization", "sk-", "k_live_", "k_test_", "ghp_", "gho_", "ghu_", "ghs_",
    "ghr_", "github_pat_", "akia", "asia", "abia", "acca", "aiza", "xox", "eyj", "bearer",
    "basic", "://", "@", "password", "passwd", "pwd", "passphrase", "secret", "api_key", "apikey",
    "access_token", "accesstoken", "refresh_token", "refreshtoken", "auth_token", "authtoken",
    "private",
)  # fmt: skip
_GATE = re.compile("|".join(re.escape(t) for t in _TRIGGERS))


def _auth_kind(prefix: str) -> str:
    return "basic_auth" if "basic" in prefix.lower() else "bearer_token"


def _replace(m: re.Match[str]) -> str:
    kind = m.lastgroup
    assert kind is not None and kind.startswith("k_")
    kind = kind[2:]
    if kind not in _PREFIXED:
        return f"[REDACTED:{kind}]"
    prefix = m.group(f"p_{kind}") or ""
    if kind == "authorization":
        kind = _auth_kind(prefix)
    # a provider's key behind `api_key=` or `Bearer` is named as that provider's key
    inner = _BUILTIN.fullmatch(m.group()[len(prefix) :])
    if inner is not None and inner.lastgroup and inner.lastgroup[2:] not in _PREFIXED:
        kind = inner.lastgroup[2:]
    return f"{prefix}[REDACTED:{kind}]"


class Redactor:
    """Replaces secrets with ``[REDACTED:<kind>]``; see the module docstring for the kinds."""

    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        self.extra: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in extra_patterns)

    def redact(self, text: str) -> tuple[str, int]:
        """`text` with secrets replaced, and how many were replaced."""
        total = 0
        for rx in self.extra:
            hits = 0

            def custom(m: re.Match[str]) -> str:
                nonlocal hits
                if not m.group():
                    return ""  # a pattern that can match nothing must not pepper the text
                hits += 1
                return "[REDACTED:custom]"

            text = rx.sub(custom, text)
            total += hits
        if _GATE.search(text.lower()) is None:
            return text, total
        text, n = _BUILTIN.subn(_replace, text)
        return text, total + n

    def redact_all(self, texts: Iterable[str]) -> tuple[list[str], int]:
        """Every text redacted, and the total number of replacements."""
        out: list[str] = []
        total = 0
        for t in texts:
            r, n = self.redact(t)
            out.append(r)
            total += n
        return out, total


def redact(text: str) -> str:
    """`text` with the built-in kinds redacted (no configured patterns)."""
    return _BUILTIN.sub(_replace, text)
