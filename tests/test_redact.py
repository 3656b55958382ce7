"""Secret redaction before anything leaves the machine."""

from __future__ import annotations

import time

import pytest

from backend.demo.fleet import FleetOptions, generate_backfill
from backend.summarize.redact import KINDS, Redactor, redact

CASES = [
    ("openrouter_key", "key sk-or-v1-0123456789abcdef0123456789abcdef0123 ok", "key {} ok"),
    ("anthropic_key", "sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAAAAAA-bbbb", "{}"),
    ("openai_key", "use sk-proj-abcdefghijklmnopqrstuvwxyz012345 now", "use {} now"),
    ("openai_key", "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCD", "{}"),
    ("stripe_key", "stripe sk_live_abcdefghijklmnop1234", "stripe {}"),
    ("github_token", "token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token {}"),
    ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop x", "{} x"),
    ("aws_access_key", "id AKIAIOSFODNN7EXAMPLE.", "id {}."),
    (
        "aws_secret_key",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_access_key = {}",
    ),
    ("google_api_key", "k=AIzaSyA-1234567890abcdefghijklmnopqrstu", "k={}"),
    ("slack_token", "xoxb-1234567890-abcdefghij", "{}"),
    (
        "jwt",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP",
        "jwt {}",
    ),
    ("bearer_token", "Authorization: Bearer abc.def.ghi123", "Authorization: Bearer {}"),
    ("bearer_token", "authorization=Token 1234567890abcdef", "authorization=Token {}"),
    ("bearer_token", "bare Bearer 9f8e7d6c5b4a39281706", "bare Bearer {}"),
    (
        "basic_auth",
        '{"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}',
        '{{"headers": {{"Authorization": "Basic {}"}}}}',
    ),
    ("basic_auth", "curl -H 'Basic dXNlcjpwYXNzd29yZA=='", "curl -H 'Basic {}'"),
    (
        "url_password",
        "connect postgresql://admin:s3cr3t!@db.internal:5432/app",
        "connect postgresql://admin:{}@db.internal:5432/app",
    ),
    ("url_password", "redis://:hunter2@cache:6379/0", "redis://:{}@cache:6379/0"),
    ("secret", "password=hunter2 rest", "password={} rest"),
    ("secret", '{"api_key": "abc123xyz"}', '{{"api_key": "{}"}}'),
    ("secret", "DB_PASSWORD: plain", "DB_PASSWORD: {}"),
    ("email", "mail alice.o+tag@example.co.uk now", "mail {} now"),
    (
        "private_key",
        '"-----BEGIN RSA PRIVATE KEY-----\\nMIIEpAIBAAKCAQEA\\nabc==\\n'
        '-----END RSA PRIVATE KEY-----"',
        '"{}"',
    ),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\nAAAA", "{}"),
]


@pytest.mark.parametrize(("kind", "text", "expected"), CASES)
def test_each_kind(kind: str, text: str, expected: str) -> None:
    out, n = Redactor().redact(text)
    assert out == expected.format(f"[REDACTED:{kind}]")
    assert n == 1
    assert kind in KINDS


def test_redaction_is_idempotent() -> None:
    r = Redactor([r"ACME-\d{6}"])
    for _, text, _ in CASES:
        once, _ = r.redact(text)
        assert r.redact(once) == (once, 0)


def test_context_kept_and_provider_named() -> None:
    out, n = Redactor().redact(
        "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz "
        "Authorization: Bearer sk-or-v1-abcdefabcdefabcdefabcdef"
    )
    assert (
        out
        == "OPENAI_API_KEY=[REDACTED:openai_key] Authorization: Bearer [REDACTED:openrouter_key]"
    )
    assert n == 2


def test_configured_patterns() -> None:
    r = Redactor([r"ACME-\d{6}", r"cust_[a-z]+"])
    assert r.redact("order ACME-123456 for cust_bob") == (
        "order [REDACTED:custom] for [REDACTED:custom]",
        2,
    )
    # a pattern that can match the empty string does not pepper the text
    assert Redactor([r"x*"]).redact("abc") == ("abc", 0)
    texts, total = r.redact_all(["ACME-000001", "me@example.com", "nothing"])
    assert texts == ["[REDACTED:custom]", "[REDACTED:email]", "nothing"] and total == 2


@pytest.mark.parametrize(
    "text",
    [
        "the bearer of bad news and basic information, Basic authentication",
        "Authorization: Bearer",
        "input_tokens=1200 output_tokens=80 access_token_count=3",
        "https://example.com/path?a=1 and host:8080",
        "task sk-learn tutorial; skip-list",
        "retry after 30s; provider openai: HTTP 429",
        "secretary=bob",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor().redact(text) == (text, 0)


def test_demo_fleet_lines_are_untouched_and_fast() -> None:
    """The demo fleet writes no secrets: nothing may be redacted, and a pass is cheap."""
    lines = [
        e.line
        for batch in generate_backfill(FleetOptions(seed=3, backfill_s=1800), 10**18)
        for s in batch
        for e in s.entries
    ]
    assert len(lines) > 1000
    r = Redactor()
    t0 = time.perf_counter()
    texts, total = r.redact_all(lines)
    elapsed = time.perf_counter() - t0
    assert total == 0 and texts == lines
    assert elapsed / len(lines) < 200e-6  # well under 0.2 ms a line


def test_module_function() -> None:
    assert redact("me@example.com") == "[REDACTED:email]"
