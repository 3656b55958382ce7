"""Configuration: one typed `Settings` model, loaded from four layers (later wins):

    built-in defaults  <  YAML file  <  environment variables  <  CLI overrides

The YAML file is `--config PATH` (the `path` argument), else `$AGENTLOG_CONFIG`, else
`$XDG_CONFIG_HOME/agentlog/config.yaml` (default `~/.config/agentlog/config.yaml`) when it exists.
No file at all is fine: everything has a default, and the default is the embedded, zero-setup mode
with its data under `$XDG_DATA_HOME/agentlog` (default `~/.local/share/agentlog`).

Environment variables: `AGENTLOG_<SECTION>__<KEY>` for every setting (`AGENTLOG_DATA_DIR`,
`AGENTLOG_EMBEDDED__RETENTION=3d`, `AGENTLOG_SERVER__RATE_LIMITS__READ` one section down, ...) and
the conventional names of the services (`SEED_ENV`: LOKI_URL, DATABASE_URL, POSTGRES_*, REDIS_*,
OPENROUTER_*, PORT, JWT_SECRET). The generic form wins over a conventional name for the same
setting. Three conventional names also switch a backend on,
unless the file or an `AGENTLOG_*` variable sets that switch explicitly (`IMPLIED_BY_ENV`):
LOKI_URL -> `log_source: loki`; DATABASE_URL or POSTGRES_HOST -> `tasks.store: postgres`;
REDIS_URL or REDIS_HOST -> `redis.enabled: true`. Empty conventional variables count as unset.

Every layer is flattened to dotted keys (`embedded.retention`) before one pydantic validation, so
each key remembers which layer set it (`LoadedConfig.sources`) and every error names its origin.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import quote, urlsplit, urlunsplit

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from .errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "IMPLIED_BY_ENV",
    "SEED_ENV",
    "CacheSettings",
    "DemoSettings",
    "EmbeddedSettings",
    "FieldNames",
    "LoadedConfig",
    "LokiSettings",
    "PostgresSettings",
    "RateLimitSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "SummarizerSettings",
    "TasksSettings",
    "TuiSettings",
    "config_as_dict",
    "default_config_path",
    "default_data_dir",
    "env_var_for",
    "find_config_file",
    "format_duration",
    "format_size",
    "load_config",
    "mask_url",
    "parse_duration",
    "parse_size",
    "render_config",
    "setting_keys",
]

ENV_PREFIX = "AGENTLOG_"
CONFIG_ENV = "AGENTLOG_CONFIG"
MASK = "****"

# ---------------------------------------------------------------- value parsers

DURATION_HINT = "a duration like 7d or 12h"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds from "7d", "12h", "10m", "90s", "500ms", "1h30m" or a plain number of seconds.

    Raises ValueError (phrased "expected ...") for anything else, negatives and non-finite values.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = re.sub(r"\s+", "", value).lower()
        try:
            seconds = float(text)
        except ValueError:
            if _DURATION_RE.fullmatch(text):
                seconds = sum(
                    float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text)
                )
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected {DURATION_HINT}")
    return seconds


def format_duration(seconds: float) -> str:
    """The compact form of a duration: 604800 -> "7d", 5400 -> "1h30m", 0.5 -> "500ms"."""
    if not math.isfinite(seconds) or seconds < 0:
        return f"{seconds}s"
    if seconds == 0:
        return "0s"
    if not float(seconds).is_integer():
        millis = seconds * 1000
        if seconds < 1 and float(millis).is_integer():
            return f"{int(millis)}ms"
        return f"{format(seconds, '.15g')}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


SIZE_HINT = "a size like 256KB or 10MiB"
_POSITIVE_SIZE_HINT = "a positive size like 256KB or 10MiB"
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_size(value: object) -> int:
    """Bytes from "256KB" (x1000), "10MiB" (x1024), "512B" or a plain number of bytes."""
    size: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        size = float(value)
    elif isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip().lower())
        if match and match.group(2) in _SIZE_UNITS:
            size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size is None or not math.isfinite(size) or size < 0:
        raise ValueError(f"expected {SIZE_HINT}")
    return round(size)


def format_size(size: int) -> str:
    """The compact form of a byte count: 262144 -> "256KiB", 2000 -> "2KB", 100 -> "100B"."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _dur(text: str) -> float:
    """A duration default, written the way the example file writes it."""
    return parse_duration(text)


# ---------------------------------------------------------------- field types


@dataclass(frozen=True, slots=True)
class _Kind:
    """Field metadata: how to describe, parse from text and display a setting."""

    name: str  # "duration", "size", "port", "url", "regexes"
    expected: str


@dataclass(frozen=True, slots=True)
class _Secret:
    """Field metadata: the value is a secret and is masked whenever shown."""


_SECRET = _Secret()


def _positive_duration(value: object) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise ValueError("expected a positive duration like 30s or 5m")
    return seconds


def _positive_size(value: object) -> int:
    try:
        size = parse_size(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"expected {_POSITIVE_SIZE_HINT}")
    return size


_PORT_HINT = "a port number 1..65535"


def _port(value: object) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or not 1 <= number <= 65535:
        raise ValueError(f"expected {_PORT_HINT}")
    return number


def _port_or_none(value: object) -> int | None:
    return None if value is None else _port(value)


def _no_bool(value: object) -> object:
    # pydantic's lax mode reads `true` as 1; for counts and rates that is always a mistake
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _url_checker(schemes: tuple[str, ...], example: str, *, allow_empty: bool = False) -> Any:
    expected = f"expected a URL like {example}" + (' or ""' if allow_empty else "")

    def check(value: str) -> str:
        if allow_empty and value == "":
            return value
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise ValueError(expected) from exc
        if parts.scheme.lower() not in schemes or not (parts.netloc or parts.path):
            raise ValueError(expected)
        return value

    return AfterValidator(check)


RATE_HINT = 'a rate such as "600/minute" or "10/second;100/minute"'


def _check_rate(value: str) -> str:
    # Imported here: `limits` takes ~0.2 s to import and most loads never set a rate.
    from limits import parse_many

    parts = [part for part in value.split(";") if part.strip()]
    if not parts:
        raise ValueError(f"expected {RATE_HINT}")
    for part in parts:
        try:
            items = parse_many(part)
        except ValueError:
            items = []
        # "10/second,100/minute" parses, but the port splits on ";" only and would keep the first
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError(f"expected {RATE_HINT}")
    return value


def _check_regexes(patterns: list[str]) -> list[str]:
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"expected regular expressions (item {index + 1} does not compile: {exc})"
            ) from exc
    return patterns


Duration = Annotated[float, BeforeValidator(parse_duration), _Kind("duration", DURATION_HINT)]
PositiveDuration = Annotated[
    float,
    BeforeValidator(_positive_duration),
    _Kind("duration", "a positive duration like 30s or 5m"),
]
Size = Annotated[int, BeforeValidator(_positive_size), _Kind("size", _POSITIVE_SIZE_HINT)]
Port = Annotated[int, BeforeValidator(_port), _Kind("port", _PORT_HINT)]
OptionalPort = Annotated[int | None, BeforeValidator(_port_or_none), _Kind("port", _PORT_HINT)]
PositiveInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=1)]
NonNegativeInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]
Secret = Annotated[str, Field(repr=False), _SECRET]
HttpUrl = Annotated[
    str,
    _url_checker(("http", "https"), "http://127.0.0.1:3100"),
    _Kind("url", "an http(s) URL"),
]
OptionalHttpUrl = Annotated[
    str,
    _url_checker(("http", "https"), "https://example.com", allow_empty=True),
    _Kind("url", 'an http(s) URL or ""'),
]
RedisUrl = Annotated[
    str,
    _url_checker(("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0"),
    Field(repr=False),
    _Kind("url", "a redis URL"),
]
PostgresDsn = Annotated[
    str,
    _url_checker(
        ("postgres", "postgresql"), "postgresql://user:pass@host:5432/db", allow_empty=True
    ),
    Field(repr=False),
    _Kind("url", "a postgresql:// URL"),
]
Rate = Annotated[str, AfterValidator(_check_rate), _Kind("rate", RATE_HINT)]
RegexList = Annotated[
    list[str], AfterValidator(_check_regexes), _Kind("regexes", "a list of regular expressions")
]


# ---------------------------------------------------------------- environment-derived defaults


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _xdg_dir(env: Mapping[str, str], name: str, fallback: str) -> Path:
    # The XDG spec says relative values are invalid and must be ignored.
    value = env.get(name, "")
    return Path(value) if value and Path(value).is_absolute() else _home(env) / fallback


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_DATA_HOME/agentlog`, default `~/.local/share/agentlog`."""
    return (
        _xdg_dir(os.environ if env is None else env, "XDG_DATA_HOME", ".local/share") / "agentlog"
    )


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/agentlog/config.yaml`, default `~/.config/agentlog/config.yaml`."""
    env = os.environ if env is None else env
    return _xdg_dir(env, "XDG_CONFIG_HOME", ".config") / "agentlog" / "config.yaml"


def _default_user(env: Mapping[str, str]) -> str:
    return env.get("USER") or env.get("LOGNAME") or env.get("USERNAME") or ""


def _expand_user(path: str, env: Mapping[str, str]) -> str:
    if path == "~" or path.startswith("~/"):
        return str(_home(env)) + path[1:]
    return path


def _expanded_path(value: object) -> object:
    if value == "":
        raise ValueError("expected a path")
    return Path(_expand_user(str(value), os.environ)) if isinstance(value, str | Path) else value


ExpandedPath = Annotated[Path, BeforeValidator(_expanded_path)]
OptionalPath = Annotated[Path | None, BeforeValidator(_expanded_path)]


# ---------------------------------------------------------------- the schema

_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    use_attribute_docstrings=True,  # each field's docstring is its description (and the doc)
    coerce_numbers_to_str=True,  # `tenant: 42` or `password: 1234` in YAML mean the string
)


class EmbeddedSettings(BaseModel):
    """The embedded Loki-compatible log store (SQLite), the zero-setup default."""

    model_config = _MODEL_CONFIG

    path: OptionalPath = None
    """SQLite file of the log store. null means <data_dir>/logs.sqlite3."""
    retention: Duration = _dur("7d")
    """Entries older than this are deleted. 0 keeps everything."""
    max_line_bytes: Size = 262144
    """Longer lines are truncated on ingest, with a visible marker at the cut."""
    tail_buffer: PositiveInt = 10000
    """Entries buffered per live-tail subscriber before it is told it dropped some."""
    tenant_default: Name = "fake"
    """Tenant for pushes and queries without X-Scope-OrgID (Loki's default is "fake")."""


class LokiSettings(BaseModel):
    """Grafana Loki over HTTP, used when `log_source: loki`."""

    model_config = _MODEL_CONFIG

    url: HttpUrl = "http://127.0.0.1:3100"
    """Base URL of Loki (no /loki/api/v1 suffix)."""
    tenant: str = ""
    """X-Scope-OrgID sent with every request; empty sends none."""
    username: str = ""
    """Basic-auth user name; empty sends no basic auth."""
    password: Secret = ""
    """Basic-auth password."""
    bearer_token: Secret = ""
    """Bearer token (Authorization header), instead of basic auth."""
    tls_verify: bool = True
    """Verify the server's TLS certificate."""
    ca_file: OptionalPath = None
    """CA bundle (PEM) to verify the server with; null uses the system store."""
    timeout: PositiveDuration = _dur("30s")
    """Timeout of one HTTP request."""
    max_entries_per_query: PositiveInt = 5000
    """Largest `limit` sent in one query (Loki's max_entries_limit_per_query)."""
    split_interval: Duration = _dur("1h")
    """Long range queries are split into pieces this long. 0 disables splitting."""
    max_parallel: PositiveInt = 4
    """Split queries sent at the same time."""


class TasksSettings(BaseModel):
    """The task (run) table."""

    model_config = _MODEL_CONFIG

    store: Literal["sqlite", "postgres"] = "sqlite"
    """Where the task table lives."""
    stall_after: PositiveDuration = _dur("10m")
    """A running run silent for this long is shown as stalled."""
    sqlite_path: OptionalPath = None
    """SQLite file of the task table. null means <data_dir>/tasks.sqlite3."""


class PostgresSettings(BaseModel):
    """PostgreSQL, used when `tasks.store: postgres`."""

    model_config = _MODEL_CONFIG

    dsn: PostgresDsn = ""
    """Connection URL (postgresql://user:pass@host:5432/db); when set, the parts below are
    unused."""
    host: str = "127.0.0.1"
    """Server host name or address."""
    port: Port = 5432
    """Server port."""
    database: str = "agentlog"
    """Database name."""
    user: str = "agentlog"
    """User name."""
    password: Secret = ""
    """Password."""
    pool_min: NonNegativeInt = 1
    """Connections the pool keeps open."""
    pool_max: PositiveInt = 10
    """Most connections the pool opens."""
    schema_name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")] = "public"
    """Schema that holds agentlog's tables (created if missing); lets one database serve
    several agentlog installations."""

    @property
    def effective_dsn(self) -> str:
        """`dsn` if set, else a URL built from the parts (user and password percent-encoded)."""
        if self.dsn:
            return self.dsn
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{auth}@{host}:{self.port}" if auth else f"{host}:{self.port}"
        return f"postgresql://{netloc}/{quote(self.database, safe='')}"


class RedisSettings(BaseModel):
    """Redis as the shared second cache level (summaries, query results)."""

    model_config = _MODEL_CONFIG

    enabled: bool = False
    """Use Redis behind the in-process cache."""
    url: RedisUrl = "redis://127.0.0.1:6379/0"
    """Connection URL (redis://, rediss:// or unix://)."""
    key_prefix: str = "agentlog:"
    """Prefix of every key agentlog writes."""
    default_ttl: PositiveDuration = _dur("5m")
    """Expiry of entries stored without an explicit one."""


class CacheSettings(BaseModel):
    """The in-process LRU cache (first level)."""

    model_config = _MODEL_CONFIG

    memory_max_entries: PositiveInt = 10000
    """Most entries kept."""
    memory_max_bytes: Size = 64 * 1024**2
    """Most bytes of values kept."""
    memory_ttl: PositiveDuration = _dur("5m")
    """Expiry of entries stored without an explicit one."""


class SummarizerSettings(BaseModel):
    """AI summaries of a run."""

    model_config = _MODEL_CONFIG

    provider: Literal["auto", "openrouter", "extractive"] = "auto"
    """auto: OpenRouter when an API key is set, else the offline extractive summary."""
    api_key: Secret = ""
    """OpenRouter API key."""
    model: Name = "anthropic/claude-3-haiku"
    """OpenRouter model id."""
    base_url: HttpUrl = "https://openrouter.ai/api/v1"
    """OpenAI-compatible API base URL."""
    timeout: PositiveDuration = _dur("60s")
    """Timeout of one completion (the whole stream)."""
    max_input_tokens: PositiveInt = 6000
    """Token budget of the compressed run logs sent to the model."""
    app_url: OptionalHttpUrl = ""
    """Sent as HTTP-Referer (OpenRouter app attribution); empty sends none."""
    app_title: str = "agentlog"
    """Sent as X-Title (OpenRouter app attribution)."""
    redact_patterns: RegexList = Field(default_factory=list)
    """Extra regular expressions whose matches are replaced before logs leave the machine."""

    @property
    def effective_provider(self) -> Literal["openrouter", "extractive"]:
        """The provider `auto` resolves to."""
        if self.provider == "auto":
            return "openrouter" if self.api_key else "extractive"
        return self.provider


class RateLimitSettings(BaseModel):
    """Rate limits of the HTTP port, per identity and route (429 with Retry-After when over), in
    the `limits` notation: "600/minute", or several joined by ";" ("10/second;100/minute")."""

    model_config = _MODEL_CONFIG

    enabled: bool = True
    """Enforce the limits below; false lets every request through."""
    read: Rate = "3000/minute"
    """GET routes: queries, lists, analytics, metrics."""
    write: Rate = "300/minute"
    """Triage and status changes, API key management."""
    push: Rate = "6000/minute"
    """Loki and OTLP push requests (pushers batch lines, so these count requests)."""
    expensive: Rate = "30/minute"
    """Summaries with refresh (an LLM call each)."""
    auth_failures: Rate = "60/minute"
    """Failed logins per client address."""


class ServerSettings(BaseModel):
    """The optional HTTP port (`agentlog serve`, or `--port` beside the TUI)."""

    model_config = _MODEL_CONFIG

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: OptionalPort = None
    """Port to listen on; null keeps the HTTP port off unless `serve` or `--port` asks."""
    jwt_secret: Secret = ""
    """Key that signs and checks JWTs; empty turns JWT auth off."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS ("*" for any); empty allows none."""
    body_limit: Size = 1024**2
    """Largest request body of the JSON API; larger ones get 413."""
    push_body_limit: Size = 100 * 1024**2
    """Largest Loki or OTLP push body as received (compressed); larger ones get 413."""
    push_decoded_limit: Size = 128 * 1024**2
    """Largest push body once decompressed: the guard against decompression bombs."""
    max_tails_per_tenant: PositiveInt = 10
    """Most live tails (WebSockets) open at a time per tenant; the next one is refused."""
    tail_max_duration: PositiveDuration = _dur("1h")
    """A live tail is closed after this long (clients reconnect and resume)."""
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    """Rate limits per identity and route; counters are shared through Redis when
    `redis.enabled`, else kept per process."""


class FieldNames(BaseModel):
    """Names of the fields of the log data contract. Synonyms (OpenTelemetry GenAI names and the
    like) are accepted by the event parser regardless; these are the primary names."""

    model_config = _MODEL_CONFIG

    run_id: Name = "run_id"
    """Run id (line field, structured metadata or label)."""
    agent: Name = "agent"
    """Agent name (label or field)."""
    event: Name = "event"
    """Event kind: run.start, run.end, step, tool.call, llm.call, error."""
    level: Name = "level"
    """Log level."""
    status: Name = "status"
    """Run status at run.end."""
    model: Name = "model"
    """Model name of an llm.call."""
    input_tokens: Name = "input_tokens"
    """Prompt tokens of an llm.call."""
    output_tokens: Name = "output_tokens"
    """Completion tokens of an llm.call."""
    cost_usd: Name = "cost_usd"
    """Cost in US dollars."""
    task: Name = "task"
    """Task name of the run."""
    error_type: Name = "error.type"
    """Error class."""
    error_message: Name = "error.message"
    """Error message."""
    tool: Name = "tool"
    """Tool name of a tool.call."""
    step: Name = "step"
    """Step name or number."""


class TuiSettings(BaseModel):
    """The terminal dashboard."""

    model_config = _MODEL_CONFIG

    theme: str = "textual-dark"
    """Textual theme name."""
    bell: bool = True
    """Ring the terminal bell once when a new failure pattern or an agent failure signal
    (loop, retry storm, stall) appears while you watch."""
    banner: bool = True
    """Show a banner when a new failure pattern or an agent failure signal appears."""
    refresh_hz: Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=60)] = 4.0
    """Screen updates per second of live panes."""
    keys: dict[str, str] = Field(default_factory=dict)
    """Key remaps: binding id -> key, e.g. {"triage.ack": "a"}."""
    time_range: PositiveDuration = _dur("1h")
    """Initial time range of the panes."""
    user: str = Field(default_factory=lambda: _default_user(os.environ))
    """Name recorded when you triage a run. Empty means $USER."""


class DemoSettings(BaseModel):
    """The demo fleet (`agentlog demo`)."""

    model_config = _MODEL_CONFIG

    agents: PositiveInt = 8
    """Number of simulated agents."""
    rate: Annotated[float, BeforeValidator(_no_bool), Field(gt=0)] = 2.0
    """Runs per minute per agent."""
    seed: Annotated[int | None, BeforeValidator(_no_bool)] = None
    """Random seed; null picks a new one each time."""


class Settings(BaseModel):
    """All settings. Build it with `load_config`, which knows the layers and the environment."""

    model_config = _MODEL_CONFIG

    data_dir: ExpandedPath = Field(default_factory=lambda: default_data_dir(os.environ))
    """Directory of the embedded mode's files. Default $XDG_DATA_HOME/agentlog
    (~/.local/share/agentlog)."""
    log_source: Literal["embedded", "loki"] = "embedded"
    """Where logs are read from: the embedded store or Grafana Loki."""
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    """The embedded log store."""
    loki: LokiSettings = Field(default_factory=LokiSettings)
    """Grafana Loki."""
    tasks: TasksSettings = Field(default_factory=TasksSettings)
    """The task table."""
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    """PostgreSQL."""
    redis: RedisSettings = Field(default_factory=RedisSettings)
    """Redis."""
    cache: CacheSettings = Field(default_factory=CacheSettings)
    """The in-process cache."""
    summarizer: SummarizerSettings = Field(default_factory=SummarizerSettings)
    """AI summaries."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    """The HTTP port."""
    fields: FieldNames = Field(default_factory=FieldNames)
    """Field names of the log data contract."""
    tui: TuiSettings = Field(default_factory=TuiSettings)
    """The terminal dashboard."""
    demo: DemoSettings = Field(default_factory=DemoSettings)
    """The demo fleet."""

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        # Paths left null follow data_dir, so moving data_dir moves every embedded file.
        if self.embedded.path is None:
            self.embedded.path = self.data_dir / "logs.sqlite3"
        if self.tasks.sqlite_path is None:
            self.tasks.sqlite_path = self.data_dir / "tasks.sqlite3"
        return self

    @property
    def embedded_db_path(self) -> Path:
        """The log store's SQLite file (never None)."""
        return self.embedded.path or self.data_dir / "logs.sqlite3"

    @property
    def tasks_db_path(self) -> Path:
        """The task table's SQLite file (never None)."""
        return self.tasks.sqlite_path or self.data_dir / "tasks.sqlite3"


# ---------------------------------------------------------------- the flat view of the schema


@dataclass(frozen=True, slots=True)
class _Leaf:
    key: str  # dotted
    info: FieldInfo
    kind: str  # "path", "list", "dict" or "" (anything read from text as is)
    optional: bool
    secret: bool
    url: bool
    marker: _Kind | None


def _section_model(info: FieldInfo) -> type[BaseModel] | None:
    ann = info.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _strip_optional(ann: Any) -> tuple[Any, bool]:
    if get_origin(ann) in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return ann, False


def _walk(model: type[BaseModel], prefix: str = "") -> Iterator[_Leaf]:
    for name, info in model.model_fields.items():
        sub = _section_model(info)
        if sub is not None:
            yield from _walk(sub, f"{prefix}{name}.")
            continue
        base, optional = _strip_optional(info.annotation)
        origin = get_origin(base)
        kinds = {Path: "path", list: "list", dict: "dict"}
        kind = kinds.get(base) or kinds.get(origin) or ""
        marker = next((m for m in info.metadata if isinstance(m, _Kind)), None)
        yield _Leaf(
            key=prefix + name,
            info=info,
            kind=kind,
            optional=optional,
            secret=any(isinstance(m, _Secret) for m in info.metadata),
            url=marker is not None and marker.name == "url",
            marker=marker,
        )


_LEAVES: dict[str, _Leaf] = {leaf.key: leaf for leaf in _walk(Settings)}


def _section_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        sub = _section_model(info)
        if sub is not None:
            yield prefix + name
            yield from _section_keys(sub, f"{prefix}{name}.")


_SECTIONS: frozenset[str] = frozenset(_section_keys(Settings))  # "server", "server.rate_limits"


def setting_keys() -> list[str]:
    """Every setting as a dotted key, in schema order ("data_dir", ..., "embedded.retention")."""
    return list(_LEAVES)


def env_var_for(key: str) -> str:
    """The generic environment variable of a dotted key: embedded.retention ->
    AGENTLOG_EMBEDDED__RETENTION."""
    return ENV_PREFIX + key.upper().replace(".", "__")


_ENV_TO_KEY = {env_var_for(key): key for key in _LEAVES}
_ENV_ONE_UNDERSCORE = {name.replace("__", "_"): name for name in _ENV_TO_KEY if "__" in name}

SEED_ENV: dict[str, str] = {
    "LOKI_URL": "loki.url",
    "DATABASE_URL": "postgres.dsn",
    "POSTGRES_HOST": "postgres.host",
    "POSTGRES_PORT": "postgres.port",
    "POSTGRES_DB": "postgres.database",
    "POSTGRES_USER": "postgres.user",
    "POSTGRES_PASSWORD": "postgres.password",
    "REDIS_URL": "redis.url",
    "REDIS_HOST": "redis.url",  # host part of the URL
    "REDIS_PORT": "redis.url",  # port part of the URL
    "OPENROUTER_API_KEY": "summarizer.api_key",
    "OPENROUTER_MODEL": "summarizer.model",
    "PORT": "server.port",
    "JWT_SECRET": "server.jwt_secret",
}
"""Conventional environment names and the setting each one sets."""

IMPLIED_BY_ENV: dict[str, tuple[str, object]] = {
    "LOKI_URL": ("log_source", "loki"),
    "DATABASE_URL": ("tasks.store", "postgres"),
    "POSTGRES_HOST": ("tasks.store", "postgres"),
    "REDIS_URL": ("redis.enabled", True),
    "REDIS_HOST": ("redis.enabled", True),
}
"""Conventional names that also switch a backend on, unless the file or an AGENTLOG_* variable
sets the switch explicitly."""


# ---------------------------------------------------------------- messages


def _show(value: object, leaf: _Leaf | None = None) -> str:
    """A value as an error message shows it, secrets masked."""
    if leaf is not None and leaf.secret and value not in ("", None):
        return f'"{MASK}"'
    if leaf is not None and leaf.url and isinstance(value, str):
        value = mask_url(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = json.dumps(
        str(value) if isinstance(value, Path) else value, ensure_ascii=False, default=str
    )
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_type(ann: Any) -> str:
    base, optional = _strip_optional(ann)
    origin = get_origin(base)
    if origin is Literal:
        text = "one of " + ", ".join(json.dumps(a) for a in get_args(base))
    elif base is bool:
        text = "true or false"
    elif base is int:
        text = "an integer"
    elif base is float:
        text = "a number"
    elif base is Path:
        text = "a path"
    elif origin is list:
        text = "a list of strings"
    elif origin is dict:
        text = "a mapping of strings to strings"
    else:
        text = "a string"
    return text + " or null" if optional else text


def _describe(leaf: _Leaf) -> str:
    if leaf.marker is not None:
        return leaf.marker.expected
    text = _describe_type(leaf.info.annotation)
    bounds = []
    for meta in leaf.info.metadata:
        if isinstance(meta, annotated_types.Ge):
            bounds.append(f">= {meta.ge}")
        elif isinstance(meta, annotated_types.Gt):
            bounds.append(f"> {meta.gt}")
        elif isinstance(meta, annotated_types.Le):
            bounds.append(f"<= {meta.le}")
        elif isinstance(meta, annotated_types.Lt):
            bounds.append(f"< {meta.lt}")
        elif isinstance(meta, annotated_types.MinLen) and meta.min_length == 1:
            text = "a non-empty string"
    return text + (" " + " and ".join(bounds) if bounds else "")


def _suggest(word: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(word, choices, n=2, cutoff=0.6)


def _unknown_key(dotted: str, level: list[str], prefix: str) -> str:
    name = dotted.rsplit(".", 1)[-1]
    close = [prefix + c for c in _suggest(name, level)]
    if not close:
        # A key put in the wrong section: `retention:` at the top instead of under `embedded:`.
        close = [k for k in _LEAVES if k.rsplit(".", 1)[-1] == name][:3]
    if close:
        hint = " or ".join(f'"{c}"' for c in close)
        return f'unknown key "{dotted}" (did you mean {hint}?)'
    return f'unknown key "{dotted}" (known keys here: {", ".join(level)})'


# ---------------------------------------------------------------- the layers


@dataclass(slots=True)
class LoadedConfig:
    """Validated settings and, for every dotted key, the layer that set it."""

    settings: Settings
    sources: dict[str, str]
    """Dotted key -> "default", "file:/abs/path", "env:NAME" or "cli"."""
    path: Path | None = None
    """The YAML file that was read, if any."""

    def source(self, key: str) -> str:
        return self.sources[key]


class _Layers:
    """The merged flat values, with the layer (label and message origin) of each."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.sources: dict[str, str] = dict.fromkeys(_LEAVES, "default")
        self.origins: dict[str, str] = dict.fromkeys(_LEAVES, "default")

    def put(self, key: str, value: object, source: str, origin: str) -> None:
        self.values[key] = value
        self.sources[key] = source
        self.origins[key] = origin


def find_config_file(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[Path | None, str]:
    """The YAML file to read and how it is named in messages: `path`, else $AGENTLOG_CONFIG,
    else the XDG default when it exists. A named file that is missing is a ConfigError."""
    env = os.environ if env is None else env
    if path is not None and str(path) != "":
        named, how = str(path), "--config"
    elif env.get(CONFIG_ENV):
        named, how = env[CONFIG_ENV], f"${CONFIG_ENV}"
    else:
        default = default_config_path(env)
        return (default, str(default)) if default.is_file() else (None, "")
    found = Path(_expand_user(named, env))
    if not found.is_file():
        what = "is not a file" if found.exists() else "does not exist"
        raise ConfigError(f"{named}: config file {what} (named by {how})")
    return found, named


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f'duplicate key "{key}"', key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def _read_yaml(path: Path, named: str) -> Mapping[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{named}: config file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{named}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "malformed"
        raise ConfigError(f"{named}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{named}: invalid YAML: {exc}") from None
    if data is None:  # an empty file, or one with only comments
        return {}
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else _show(data)
        raise ConfigError(
            f"{named}: expected a mapping of settings (key: value lines) at the top level, "
            f"found {kind}"
        )
    return data


def _flatten_file(data: Mapping[Any, Any], named: str) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(model: type[BaseModel], mapping: Mapping[Any, Any], prefix: str) -> None:
        for raw_key, value in mapping.items():
            key = str(raw_key)
            dotted = prefix + key
            info = model.model_fields.get(key)
            if info is None:
                raise ConfigError(
                    f"{named}: {_unknown_key(dotted, list(model.model_fields), prefix)}"
                )
            sub = _section_model(info)
            if sub is None:
                out[dotted] = value
            elif value is None:
                continue  # a section whose keys are all commented out
            elif isinstance(value, Mapping):
                walk(sub, value, dotted + ".")
            else:
                raise ConfigError(
                    f"{named}: {dotted}: expected a section (key: value lines), "
                    f"found {_show(value)}"
                )

    walk(Settings, data, "")
    return out


def _path_value(value: object, env: Mapping[str, str], base: Path | None) -> object:
    if not isinstance(value, str | Path) or value == "":
        return value  # the model says what is wrong with it
    path = Path(_expand_user(str(value), env))
    # Relative paths in a file are relative to that file, so a config works from any cwd.
    return base / path if base is not None and not path.is_absolute() else path


def _from_text(leaf: _Leaf, text: str, origin: str) -> object:
    """Read a setting from an environment variable or a CLI string."""
    stripped = text.strip()
    if leaf.kind == "list":
        if stripped.startswith("["):
            return _flow_yaml(leaf, text, origin, "a list like [a, b] or a,b")
        return [part.strip() for part in stripped.split(",") if part.strip()]
    if leaf.kind == "dict":
        if stripped.startswith("{"):
            return _flow_yaml(leaf, text, origin, "a mapping like {a: b} or a=b,c=d")
        pairs: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in stripped.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(
                    f"{origin}: {leaf.key}: expected a mapping like {{a: b}} or a=b,c=d, "
                    f"found {_show(text)}"
                )
            pairs[name.strip()] = value.strip()
        return pairs
    base, _ = _strip_optional(leaf.info.annotation)
    if leaf.optional and base is not str and stripped.lower() in ("", "null"):
        return None
    return text


def _flow_yaml(leaf: _Leaf, text: str, origin: str, expected: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(
            f"{origin}: {leaf.key}: expected {expected}, found {_show(text)}"
        ) from None


def _generic_env(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """AGENTLOG_<SECTION>__<KEY> variables: dotted key -> (value, variable name).

    A variable with `__` that names no setting is an error (a typo would otherwise be silently
    ignored); other AGENTLOG_* names (AGENTLOG_CONFIG, test switches) are not settings and pass.
    """
    out: dict[str, tuple[str, str]] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = _ENV_TO_KEY.get(name)
        if key is not None:
            out[key] = (env[name], name)
        elif "__" in name:
            close = _suggest(name, list(_ENV_TO_KEY))
            hint = f" (did you mean ${close[0]}?)" if close else ""
            raise ConfigError(f"${name}: not a setting{hint}")
        elif name in _ENV_ONE_UNDERSCORE:  # AGENTLOG_EMBEDDED_RETENTION: one _ short
            raise ConfigError(
                f"${name}: not a setting (did you mean ${_ENV_ONE_UNDERSCORE[name]}?)"
            )
    return out


def _redis_url_from_parts(env: Mapping[str, str], current: str) -> str:
    """REDIS_HOST / REDIS_PORT replace the host and port of the URL in effect, keeping the rest
    (password, database) as the file or default had it."""
    parts = urlsplit(current)
    port_text = env.get("REDIS_PORT", "")
    if port_text:
        try:
            port = _port(port_text)
        except ValueError:
            raise ConfigError(
                f"$REDIS_PORT: redis.url: expected {_PORT_HINT}, found {_show(port_text)}"
            ) from None
    else:
        port = parts.port or 6379
    host = env.get("REDIS_HOST") or parts.hostname or "127.0.0.1"
    userinfo, at, _ = parts.netloc.rpartition("@")
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(
        (parts.scheme or "redis", f"{userinfo}{at}{hostport}", parts.path, parts.query, "")
    )


def _flatten_overrides(
    overrides: Mapping[str, object], prefix: str = ""
) -> Iterator[tuple[str, object]]:
    for raw_key, value in overrides.items():
        key = prefix + str(raw_key).replace("-", "_")
        if key in _SECTIONS and isinstance(value, Mapping):
            yield from _flatten_overrides(value, key + ".")
        else:
            yield key, value


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> LoadedConfig:
    """Load, merge and validate the settings. Raises ConfigError with one readable message.

    `path` is `--config`; `env` defaults to os.environ; `overrides` are the CLI's dotted keys
    ({"server.port": 8080}), whose None values mean "not given" and are skipped. Strings in env and
    overrides are parsed per setting: lists as `a,b` or `[a, b]`, mappings as `a=b,c=d` or
    `{a: b}`, and "" (or "null") for a setting that may be null means null.
    """
    env = os.environ if env is None else env
    layers = _Layers()
    layers.put("data_dir", default_data_dir(env), "default", "default")
    layers.put("tui.user", _default_user(env), "default", "default")

    file_path, named = find_config_file(path, env)
    file_keys: set[str] = set()
    if file_path is not None:
        source = f"file:{file_path.resolve()}"
        base = file_path.resolve().parent
        for key, value in _flatten_file(_read_yaml(file_path, named), named).items():
            if _LEAVES[key].kind == "path":
                value = _path_value(value, env, base)
            layers.put(key, value, source, named)
            file_keys.add(key)

    generic = _generic_env(env)

    for name, key in SEED_ENV.items():
        text = env.get(name, "")
        if not text or key in generic:
            continue
        if name in ("REDIS_HOST", "REDIS_PORT"):
            if env.get("REDIS_URL") or (name == "REDIS_PORT" and env.get("REDIS_HOST")):
                continue  # the full URL wins over its parts; HOST already applied PORT too
            current = layers.values.get(key, _LEAVES[key].info.get_default())
            text = _redis_url_from_parts(env, str(current))
        layers.put(key, _from_text(_LEAVES[key], text, f"${name}"), f"env:{name}", f"${name}")

    explicit = file_keys | set(generic)
    for name, (key, value) in IMPLIED_BY_ENV.items():
        if env.get(name) and key not in explicit and layers.sources[key] == "default":
            layers.put(key, value, f"env:{name}", f"${name}")

    for key, (text, name) in generic.items():
        leaf = _LEAVES[key]
        value = _from_text(leaf, text, f"${name}")
        if leaf.kind == "path":
            value = _path_value(value, env, None)
        layers.put(key, value, f"env:{name}", f"${name}")

    for key, value in _flatten_overrides(overrides or {}):
        if value is None:
            continue
        target = _LEAVES.get(key)
        if target is None:
            close = _suggest(key, list(_LEAVES))
            hint = " or ".join(f'"{c}"' for c in close)
            raise ConfigError(
                f'command line: unknown key "{key}"' + (f" (did you mean {hint}?)" if hint else "")
            )
        if isinstance(value, str):
            value = _from_text(target, value, "command line")
        if target.kind == "path":
            value = _path_value(value, env, None)
        layers.put(key, value, "cli", "command line")

    if layers.values.get("tui.user") == "":
        layers.values["tui.user"] = _default_user(env)

    settings = _validate(layers)
    return LoadedConfig(settings=settings, sources=layers.sources, path=file_path)


def _unflatten(values: Mapping[str, object]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *sections, name = key.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    return nested


def _validate(layers: _Layers) -> Settings:
    try:
        settings = Settings.model_validate(_unflatten(layers.values))
    except ValidationError as exc:
        raise _config_error(exc.errors()[0], layers) from None
    pg = settings.postgres
    if pg.pool_min > pg.pool_max:
        key = "postgres.pool_min" if "postgres.pool_min" in layers.values else "postgres.pool_max"
        raise ConfigError(
            f"{layers.origins[key]}: {key}: expected postgres.pool_min <= postgres.pool_max, "
            f"found pool_min {pg.pool_min} and pool_max {pg.pool_max}"
        )
    return settings


def _config_error(error: Any, layers: _Layers) -> ConfigError:
    loc = [str(part) for part in error["loc"]]
    key = ""
    for end in range(len(loc), 0, -1):
        if ".".join(loc[:end]) in _LEAVES:
            key = ".".join(loc[:end])
            break
    leaf = _LEAVES.get(key)
    if leaf is None:  # not expected: every check is per field; keep pydantic's words
        where = ".".join(loc) or "settings"
        return ConfigError(f"{where}: {error['msg']}")
    exact = len(loc) == key.count(".") + 1
    found = layers.values[key] if exact and key in layers.values else error.get("input")
    expected = _describe(leaf)
    if error["type"] in ("value_error", "assertion_error"):
        message = str(error.get("ctx", {}).get("error", ""))
        if message.startswith("expected "):
            expected = message.removeprefix("expected ")
    text = f"{layers.origins[key]}: {key}: expected {expected}, found {_show(found, leaf)}"
    if isinstance(found, bool) and _strip_optional(leaf.info.annotation)[0] is str:
        text += " (YAML reads yes/no/on/off as true/false: put the value in quotes)"
    return ConfigError(text)


# ---------------------------------------------------------------- showing the effective config


def mask_url(url: str) -> str:
    """The URL with its password (and password=/token= query values) replaced by ****."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            netloc = f"{user}:{MASK}@{hostport}"
    query = re.sub(
        r"(?i)((?:^|&)(?:password|passwd|pass|token|secret|api_key|apikey)=)[^&]*",
        rf"\g<1>{MASK}",
        parts.query,
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _lookup(settings: Settings, key: str) -> object:
    value: object = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _masked(leaf: _Leaf, value: object) -> object:
    if leaf.secret and value:
        return MASK
    if leaf.url and isinstance(value, str):
        return mask_url(value)
    return value


def _display(leaf: _Leaf, value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    kind = leaf.marker.name if leaf.marker else ""
    if kind == "duration" and isinstance(value, float):
        return format_duration(value)
    if kind == "size" and isinstance(value, int):
        return format_size(value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text if text and text.strip() == text else json.dumps(text)


def render_config(loaded: LoadedConfig, *, mask: bool = True) -> str:
    """The effective config, one `key = value   (source)` line per setting, aligned, secrets
    masked unless `mask=False`."""
    rows = []
    for key, leaf in _LEAVES.items():
        value = _lookup(loaded.settings, key)
        if mask:
            value = _masked(leaf, value)
        rows.append((key, _display(leaf, value), loaded.sources.get(key, "default")))
    key_width = max(len(k) for k, _, _ in rows)
    value_width = min(max(len(v) for _, v, _ in rows), 48)
    return (
        "\n".join(f"{k.ljust(key_width)} = {v.ljust(value_width)}   ({s})" for k, v, s in rows)
        + "\n"
    )


def config_as_dict(loaded: LoadedConfig, mask: bool = True) -> dict[str, Any]:
    """The effective config as JSON-ready nested data (durations in seconds, sizes in bytes,
    paths as strings), secrets masked unless `mask=False`."""
    data: dict[str, Any] = loaded.settings.model_dump(mode="json")
    if mask:
        for key, leaf in _LEAVES.items():
            if leaf.secret or leaf.url:
                *sections, name = key.split(".")
                target = data
                for section in sections:
                    target = target[section]
                target[name] = _masked(leaf, target[name])
    return data
