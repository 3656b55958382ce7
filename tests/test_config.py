"""Tests of backend.config: layers and their precedence, env names, paths, errors, masking."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from backend.cli import main as cli
from backend.config import (
    SEED_ENV,
    LoadedConfig,
    Settings,
    config_as_dict,
    env_var_for,
    format_duration,
    format_size,
    load_config,
    mask_url,
    parse_duration,
    parse_size,
    render_config,
    setting_keys,
)
from backend.errors import ConfigError, UsageError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: a home of our own, no XDG variables, no user."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home)}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def model_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf setting of a model as a dotted key, walked independently of backend.config."""
    keys = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += model_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def flat_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of a parsed config: mappings are sections (server.rate_limits one level down),
    except a mapping-valued setting such as tui.keys, which stays one key."""
    keys: set[str] = set()
    for name, value in data.items():
        key = prefix + name
        if isinstance(value, dict) and key not in model_keys(Settings):
            keys |= flat_keys(value, key + ".")
        else:
            keys.add(key)
    return keys


def error_of(tmp_path: Path, env: dict[str, str], text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return str(info.value)


# ---------------------------------------------------------------- defaults and the example file


def test_no_config_is_the_embedded_default(env: dict[str, str]) -> None:
    loaded = load_config(env=env)
    s = loaded.settings
    data_dir = Path(env["HOME"]) / ".local/share/agentlog"
    assert loaded.path is None
    assert s.data_dir == data_dir
    assert s.log_source == "embedded"
    assert s.tasks.store == "sqlite"
    assert s.redis.enabled is False
    assert s.embedded.path == data_dir / "logs.sqlite3" == s.embedded_db_path
    assert s.tasks.sqlite_path == data_dir / "tasks.sqlite3" == s.tasks_db_path
    assert s.embedded.retention == 7 * 86400
    assert s.embedded.max_line_bytes == 262144
    assert s.cache.memory_max_bytes == 64 * 1024 * 1024
    assert s.loki.timeout == 30 and s.loki.split_interval == 3600
    assert s.tasks.stall_after == 600
    assert s.summarizer.timeout == 60 and s.summarizer.effective_provider == "extractive"
    assert s.server.port is None
    assert s.fields.error_type == "error.type"
    assert s.tui.time_range == 3600
    assert set(loaded.sources.values()) == {"default"}
    assert list(loaded.sources) == setting_keys() == model_keys(Settings)


def test_example_file_verbatim_gives_the_defaults(env: dict[str, str]) -> None:
    loaded = load_config(EXAMPLE, env=env)
    assert loaded.path == EXAMPLE
    assert loaded.settings == load_config(env=env).settings
    assert set(loaded.sources.values()) == {"default"}


def uncommented_example() -> str:
    # `#key: value` lines are settings at their defaults; `# text` lines are prose.
    return re.sub(r"(?m)^(\s*)#(?=[a-z_]+:)", r"\1", EXAMPLE.read_text(encoding="utf-8"))


def test_example_lists_every_setting_at_its_default(tmp_path: Path, env: dict[str, str]) -> None:
    text = uncommented_example()
    data = yaml.safe_load(text)
    assert flat_keys(data) == set(model_keys(Settings))
    # With every line uncommented, the file still gives exactly the defaults.
    loaded = load_config(write(tmp_path, text), env=env)
    assert loaded.settings == load_config(env=env).settings
    assert set(loaded.sources.values()) == {f"file:{(tmp_path / 'config.yaml').resolve()}"}


def test_example_names_every_env_variable() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in model_keys(Settings):
        assert re.search(rf"\b{env_var_for(key)}\b", text), key
    for name in SEED_ENV:
        assert re.search(rf"\b{name}\b", text), name


def test_the_three_switches_are_commented_out_in_the_example() -> None:
    # Set in the file, they would stop LOKI_URL & co. from switching the backend on.
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in ("log_source", "store", "enabled"):
        assert re.search(rf"(?m)^\s*#{name}:", text)
        assert not re.search(rf"(?m)^\s*{name}:", text)


def test_settings_can_be_built_directly() -> None:
    s = Settings(log_source="loki", embedded={"retention": "3d"})  # type: ignore[arg-type]
    assert s.embedded.retention == 3 * 86400
    assert s.embedded.path == s.data_dir / "logs.sqlite3"


# ---------------------------------------------------------------- layers and sources


def test_precedence_default_file_env_cli(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "embedded:\n  retention: 1d\n  tail_buffer: 5\nserver:\n  port: 7000\n")
    file_label = f"file:{path.resolve()}"

    loaded = load_config(path, env=env)
    assert loaded.settings.embedded.retention == 86400
    assert loaded.sources["embedded.retention"] == file_label
    assert loaded.sources["loki.url"] == "default"

    env["AGENTLOG_EMBEDDED__RETENTION"] = "2d"
    env["PORT"] = "7001"
    loaded = load_config(path, env=env)
    assert loaded.settings.embedded.retention == 2 * 86400
    assert loaded.settings.embedded.tail_buffer == 5
    assert loaded.settings.server.port == 7001
    assert loaded.sources["embedded.retention"] == "env:AGENTLOG_EMBEDDED__RETENTION"
    assert loaded.sources["embedded.tail_buffer"] == file_label
    assert loaded.sources["server.port"] == "env:PORT"

    overrides = {"embedded.retention": "3d", "server.port": 8080, "demo.seed": None}
    loaded = load_config(path, env=env, overrides=overrides)
    assert loaded.settings.embedded.retention == 3 * 86400
    assert loaded.settings.server.port == 8080
    assert loaded.settings.demo.seed is None  # None means "not given on the command line"
    assert loaded.sources["embedded.retention"] == "cli"
    assert loaded.sources["server.port"] == "cli"
    assert loaded.sources["demo.seed"] == "default"


def test_generic_env_wins_over_the_conventional_name(env: dict[str, str]) -> None:
    env |= {"PORT": "7001", "AGENTLOG_SERVER__PORT": "7002"}
    loaded = load_config(env=env)
    assert loaded.settings.server.port == 7002
    assert loaded.sources["server.port"] == "env:AGENTLOG_SERVER__PORT"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [*SEED_ENV, "XDG_DATA_HOME", "XDG_CONFIG_HOME", "AGENTLOG_CONFIG"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AGENTLOG_DEMO__AGENTS", "3")
    loaded = load_config()
    assert loaded.settings.demo.agents == 3
    assert loaded.settings.data_dir == tmp_path / ".local/share/agentlog"


def test_cli_overrides_accept_sections_and_dashes(env: dict[str, str]) -> None:
    loaded = load_config(env=env, overrides={"server": {"port": "9000"}, "tui.refresh-hz": 2})
    assert loaded.settings.server.port == 9000
    assert loaded.settings.tui.refresh_hz == 2.0
    assert loaded.sources["tui.refresh_hz"] == "cli"


def test_env_lists_and_mappings(env: dict[str, str]) -> None:
    env |= {
        "AGENTLOG_SERVER__CORS_ORIGINS": "https://a.example, https://b.example",
        "AGENTLOG_SUMMARIZER__REDACT_PATTERNS": '["x{1,3}", "secret-[0-9]+"]',
        "AGENTLOG_TUI__KEYS": "triage.ack=a, app.quit=q",
        "AGENTLOG_TUI__BELL": "false",
        "AGENTLOG_DEMO__SEED": "",
    }
    s = load_config(env=env).settings
    assert s.server.cors_origins == ["https://a.example", "https://b.example"]
    assert s.summarizer.redact_patterns == ["x{1,3}", "secret-[0-9]+"]
    assert s.tui.keys == {"triage.ack": "a", "app.quit": "q"}
    assert s.tui.bell is False
    assert s.demo.seed is None
    env["AGENTLOG_TUI__KEYS"] = "{triage.ack: x}"
    assert load_config(env=env).settings.tui.keys == {"triage.ack": "x"}


def test_tui_user_defaults_to_user(env: dict[str, str], tmp_path: Path) -> None:
    env["USER"] = "alice"
    assert load_config(env=env).settings.tui.user == "alice"
    # An explicit empty value means $USER too (that is what the example file shows).
    path = write(tmp_path, 'tui:\n  user: ""\n')
    assert load_config(path, env=env).settings.tui.user == "alice"
    path = write(tmp_path, "tui:\n  user: bob\n")
    assert load_config(path, env=env).settings.tui.user == "bob"


# ---------------------------------------------------------------- conventional env names


@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("LOKI_URL", "http://loki:3100", "loki.url", "http://loki:3100"),
        ("OPENROUTER_API_KEY", "sk-or-1", "summarizer.api_key", "sk-or-1"),
        ("OPENROUTER_MODEL", "openai/gpt-4o-mini", "summarizer.model", "openai/gpt-4o-mini"),
        ("PORT", "8080", "server.port", 8080),
        ("JWT_SECRET", "s3cret", "server.jwt_secret", "s3cret"),
        ("DATABASE_URL", "postgresql://u:p@db/x", "postgres.dsn", "postgresql://u:p@db/x"),
        ("POSTGRES_HOST", "db", "postgres.host", "db"),
        ("POSTGRES_PORT", "6543", "postgres.port", 6543),
        ("POSTGRES_DB", "runs", "postgres.database", "runs"),
        ("POSTGRES_USER", "ops", "postgres.user", "ops"),
        ("POSTGRES_PASSWORD", "pw", "postgres.password", "pw"),
        ("REDIS_URL", "redis://cache:6379/2", "redis.url", "redis://cache:6379/2"),
        ("REDIS_HOST", "cache", "redis.url", "redis://cache:6379/0"),
        ("REDIS_PORT", "6380", "redis.url", "redis://127.0.0.1:6380/0"),
    ],
)
def test_conventional_env_names(
    env: dict[str, str], name: str, value: str, key: str, expected: object
) -> None:
    env[name] = value
    loaded = load_config(env=env)
    section, _, field = key.partition(".")
    assert getattr(getattr(loaded.settings, section), field) == expected
    assert loaded.sources[key] == f"env:{name}"


@pytest.mark.parametrize(
    ("name", "value", "switch", "on"),
    [
        ("LOKI_URL", "http://loki:3100", "log_source", "loki"),
        ("DATABASE_URL", "postgresql://db/x", "tasks.store", "postgres"),
        ("POSTGRES_HOST", "db", "tasks.store", "postgres"),
        ("REDIS_URL", "redis://cache:6379/0", "redis.enabled", True),
        ("REDIS_HOST", "cache", "redis.enabled", True),
    ],
)
def test_conventional_names_switch_backends_unless_set_explicitly(
    tmp_path: Path, env: dict[str, str], name: str, value: str, switch: str, on: object
) -> None:
    def get(loaded: LoadedConfig) -> object:
        value: object = loaded.settings
        for part in switch.split("."):
            value = getattr(value, part)
        return value

    env[name] = value
    loaded = load_config(env=env)
    assert get(loaded) == on
    assert loaded.sources[switch] == f"env:{name}"

    off = {"log_source": "embedded", "tasks.store": "sqlite", "redis.enabled": False}[switch]
    section, dot, field = switch.partition(".")
    text = f"{section}:\n  {field}: {json.dumps(off)}\n" if dot else f"{switch}: {off}\n"
    loaded = load_config(write(tmp_path, text), env=env)
    assert get(loaded) == off
    assert loaded.sources[switch].startswith("file:")

    loaded = load_config(env=env | {env_var_for(switch): str(off).lower()})
    assert get(loaded) == off
    assert loaded.sources[switch] == f"env:{env_var_for(switch)}"


def test_empty_conventional_names_are_ignored(env: dict[str, str]) -> None:
    env |= {"LOKI_URL": "", "PORT": "", "REDIS_HOST": ""}
    loaded = load_config(env=env)
    assert loaded.settings.log_source == "embedded"
    assert loaded.settings.server.port is None
    assert loaded.settings.redis.enabled is False
    assert set(loaded.sources.values()) == {"default"}


def test_redis_host_and_port_keep_the_rest_of_the_url(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "redis:\n  url: redis://:pw@old:1111/3\n")
    env |= {"REDIS_HOST": "new", "REDIS_PORT": "2222"}
    loaded = load_config(path, env=env)
    assert loaded.settings.redis.url == "redis://:pw@new:2222/3"
    assert loaded.sources["redis.url"] == "env:REDIS_HOST"
    # The full URL wins over its parts.
    env["REDIS_URL"] = "redis://full:6379/1"
    assert load_config(path, env=env).settings.redis.url == "redis://full:6379/1"


def test_postgres_effective_dsn(env: dict[str, str]) -> None:
    env |= {
        "POSTGRES_HOST": "db",
        "POSTGRES_PORT": "6543",
        "POSTGRES_DB": "runs",
        "POSTGRES_USER": "ops",
        "POSTGRES_PASSWORD": "p@ss:word/",
    }
    s = load_config(env=env).settings
    assert s.tasks.store == "postgres"
    assert s.postgres.effective_dsn == "postgresql://ops:p%40ss%3Aword%2F@db:6543/runs"
    env["DATABASE_URL"] = "postgresql://x:y@other/z"
    assert load_config(env=env).settings.postgres.effective_dsn == "postgresql://x:y@other/z"


def test_api_key_turns_auto_provider_to_openrouter(env: dict[str, str]) -> None:
    env["OPENROUTER_API_KEY"] = "sk-or-1"
    assert load_config(env=env).settings.summarizer.effective_provider == "openrouter"
    env["AGENTLOG_SUMMARIZER__PROVIDER"] = "extractive"
    assert load_config(env=env).settings.summarizer.effective_provider == "extractive"


# ---------------------------------------------------------------- files and paths


def test_xdg_data_home(env: dict[str, str], tmp_path: Path) -> None:
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    s = load_config(env=env).settings
    assert s.data_dir == tmp_path / "data" / "agentlog"
    assert s.embedded.path == tmp_path / "data" / "agentlog" / "logs.sqlite3"
    # The XDG spec: a relative value is invalid and ignored.
    env["XDG_DATA_HOME"] = "relative/dir"
    assert load_config(env=env).settings.data_dir == Path(env["HOME"]) / ".local/share/agentlog"


def test_data_dir_setting_moves_the_embedded_files(env: dict[str, str], tmp_path: Path) -> None:
    env["AGENTLOG_DATA_DIR"] = str(tmp_path / "d")
    loaded = load_config(env=env)
    assert loaded.settings.tasks.sqlite_path == tmp_path / "d" / "tasks.sqlite3"
    assert loaded.sources["data_dir"] == "env:AGENTLOG_DATA_DIR"
    env["AGENTLOG_EMBEDDED__PATH"] = str(tmp_path / "elsewhere.db")
    assert load_config(env=env).settings.embedded.path == tmp_path / "elsewhere.db"


def test_xdg_config_file_is_found(env: dict[str, str], tmp_path: Path) -> None:
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    assert load_config(env=env).path is None  # absent: fine, defaults
    path = tmp_path / "cfg" / "agentlog" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("demo:\n  agents: 2\n", encoding="utf-8")
    loaded = load_config(env=env)
    assert loaded.path == path
    assert loaded.settings.demo.agents == 2
    assert loaded.sources["demo.agents"] == f"file:{path.resolve()}"


def test_home_config_file_is_found_without_xdg(env: dict[str, str]) -> None:
    path = Path(env["HOME"]) / ".config" / "agentlog" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("demo:\n  agents: 4\n", encoding="utf-8")
    assert load_config(env=env).settings.demo.agents == 4


def test_config_path_order(env: dict[str, str], tmp_path: Path) -> None:
    xdg = tmp_path / "cfg" / "agentlog" / "config.yaml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("demo:\n  agents: 1\n", encoding="utf-8")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    env["AGENTLOG_CONFIG"] = str(write(tmp_path, "demo:\n  agents: 2\n", "from-env.yaml"))
    explicit = write(tmp_path, "demo:\n  agents: 3\n", "explicit.yaml")
    assert load_config(env=env).settings.demo.agents == 2
    assert load_config(explicit, env=env).settings.demo.agents == 3
    assert load_config(str(explicit), env=env).path == explicit


def test_named_config_file_must_exist(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file does not exist \(named by"):
        load_config(missing, env=env)
    env["AGENTLOG_CONFIG"] = str(missing)
    with pytest.raises(ConfigError, match=r"named by \$AGENTLOG_CONFIG"):
        load_config(env=env)


def test_paths_in_a_file_are_relative_to_it(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: state\nloki:\n  ca_file: ~/ca.pem\n")
    s = load_config(path, env=env).settings
    assert s.data_dir == tmp_path / "state"
    assert s.loki.ca_file == Path(env["HOME"]) / "ca.pem"


def test_empty_and_comment_only_files_are_fine(env: dict[str, str], tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env=env).settings.log_source == "embedded"
    assert load_config(write(tmp_path, "# nothing\nloki:\n"), env=env).settings.loki.tenant == ""


# ---------------------------------------------------------------- error messages


def test_error_is_a_usage_error() -> None:
    assert issubclass(ConfigError, UsageError)  # the CLI maps UsageError to exit 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "embedded:\n  retention: seven days\n",
            "config.yaml: embedded.retention: expected a duration like 7d or 12h, "
            'found "seven days"',
        ),
        (
            "embeded:\n  retention: 3d\n",
            'config.yaml: unknown key "embeded" (did you mean "embedded"?)',
        ),
        (
            "embedded:\n  retension: 3d\n",
            'config.yaml: unknown key "embedded.retension" (did you mean "embedded.retention"?)',
        ),
        (
            "retention: 3d\n",
            'config.yaml: unknown key "retention" (did you mean "embedded.retention"?)',
        ),
        (
            "server:\n  port: 70000\n",
            "config.yaml: server.port: expected a port number 1..65535, found 70000",
        ),
        (
            "postgres:\n  port: 0\n",
            "config.yaml: postgres.port: expected a port number 1..65535, found 0",
        ),
        (
            "log_source: elastic\n",
            'config.yaml: log_source: expected one of "embedded", "loki", found "elastic"',
        ),
        (
            "demo:\n  agents: 0\n",
            "config.yaml: demo.agents: expected an integer >= 1, found 0",
        ),
        (
            "demo:\n  agents: true\n",
            "config.yaml: demo.agents: expected an integer >= 1, found true",
        ),
        (
            "cache:\n  memory_max_bytes: lots\n",
            "config.yaml: cache.memory_max_bytes: expected a positive size like 256KB or 10MiB, "
            'found "lots"',
        ),
        (
            "loki:\n  timeout: 0s\n",
            'config.yaml: loki.timeout: expected a positive duration like 30s or 5m, found "0s"',
        ),
        (
            "loki:\n  url: loki:3100\n",
            'config.yaml: loki.url: expected a URL like http://127.0.0.1:3100, found "loki:3100"',
        ),
        (
            "tui:\n  bell: maybe\n",
            'config.yaml: tui.bell: expected true or false, found "maybe"',
        ),
        (
            "loki:\n  tenant: no\n",
            "config.yaml: loki.tenant: expected a string, found false "
            "(YAML reads yes/no/on/off as true/false: put the value in quotes)",
        ),
        ("embedded: 5\n", "config.yaml: embedded: expected a section (key: value lines), found 5"),
        (
            "- a\n- b\n",
            "config.yaml: expected a mapping of settings (key: value lines) at the top level, "
            "found a list",
        ),
        (
            "just text\n",
            "config.yaml: expected a mapping of settings (key: value lines) at the top level, "
            'found "just text"',
        ),
        (
            "postgres:\n  pool_min: 20\n",
            "config.yaml: postgres.pool_min: expected postgres.pool_min <= postgres.pool_max, "
            "found pool_min 20 and pool_max 10",
        ),
        (
            "server:\n  rate_limits:\n    read: lots\n",
            "config.yaml: server.rate_limits.read: expected a rate such as "
            '"600/minute" or "10/second;100/minute", found "lots"',
        ),
        (
            "server:\n  rate_limits:\n    push: 10/second;1/fortnight\n",
            "config.yaml: server.rate_limits.push: expected a rate such as "
            '"600/minute" or "10/second;100/minute", found "10/second;1/fortnight"',
        ),
        (  # `limits` would read this as 10/second alone: the port splits on ";" only
            "server:\n  rate_limits:\n    write: 10/second,100/minute\n",
            "config.yaml: server.rate_limits.write: expected a rate such as "
            '"600/minute" or "10/second;100/minute", found "10/second,100/minute"',
        ),
        (
            "server:\n  rate_limits:\n    expensive: 0/minute\n",
            "config.yaml: server.rate_limits.expensive: expected a rate such as "
            '"600/minute" or "10/second;100/minute", found "0/minute"',
        ),
        (
            "server:\n  body_limit: 1 megabyte\n",
            "config.yaml: server.body_limit: expected a positive size like 256KB or 10MiB, "
            'found "1 megabyte"',
        ),
        (
            "server:\n  push_decoded_limit: 0\n",
            "config.yaml: server.push_decoded_limit: expected a positive size like 256KB or "
            "10MiB, found 0",
        ),
        (
            "server:\n  max_tails_per_tenant: 0\n",
            "config.yaml: server.max_tails_per_tenant: expected an integer >= 1, found 0",
        ),
        (
            "server:\n  tail_max_duration: forever\n",
            "config.yaml: server.tail_max_duration: expected a positive duration like 30s or 5m, "
            'found "forever"',
        ),
        (
            "server:\n  rate_limits: 100/minute\n",
            "config.yaml: server.rate_limits: expected a section (key: value lines), "
            'found "100/minute"',
        ),
        (
            "server:\n  rate_limits:\n    reads: 1/second\n",
            'config.yaml: unknown key "server.rate_limits.reads" '
            '(did you mean "server.rate_limits.read"?)',
        ),
    ],
)
def test_file_error_messages(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)  # so the file is named as given: "config.yaml"
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config("config.yaml", env=env)
    assert str(info.value) == message


def test_malformed_yaml_names_file_and_line(tmp_path: Path, env: dict[str, str]) -> None:
    message = error_of(tmp_path, env, "embedded:\n  retention: 7d\n  tail_buffer: [1,\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}: line 4, column 1: invalid YAML: ")
    message = error_of(tmp_path, env, "loki:\n  url: x\n url2: y\n")
    assert re.match(rf"{re.escape(str(tmp_path / 'config.yaml'))}: line 3, column \d+: ", message)


def test_duplicate_keys_are_errors(tmp_path: Path, env: dict[str, str]) -> None:
    message = error_of(tmp_path, env, "tui:\n  bell: true\n  bell: false\n")
    assert message.endswith('line 3, column 3: invalid YAML: duplicate key "bell"')


def test_regex_errors_name_the_item(tmp_path: Path, env: dict[str, str]) -> None:
    message = error_of(tmp_path, env, "summarizer:\n  redact_patterns: ['ok', '(']\n")
    assert "summarizer.redact_patterns: expected regular expressions (item 2 does not compile" in (
        message
    )
    assert message.endswith('found ["ok", "("]')


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"AGENTLOG_EMBEDDED__RETENTION": "seven days"},
            "$AGENTLOG_EMBEDDED__RETENTION: embedded.retention: expected a duration like 7d or "
            '12h, found "seven days"',
        ),
        (
            {"AGENTLOG_EMBEDED__RETENTION": "3d"},
            "$AGENTLOG_EMBEDED__RETENTION: not a setting (did you mean "
            "$AGENTLOG_EMBEDDED__RETENTION?)",
        ),
        (
            {"AGENTLOG_EMBEDDED_RETENTION": "3d"},
            "$AGENTLOG_EMBEDDED_RETENTION: not a setting (did you mean "
            "$AGENTLOG_EMBEDDED__RETENTION?)",
        ),
        ({"PORT": "http"}, '$PORT: server.port: expected a port number 1..65535, found "http"'),
        (
            {"POSTGRES_PORT": "99999"},
            '$POSTGRES_PORT: postgres.port: expected a port number 1..65535, found "99999"',
        ),
        ({"REDIS_PORT": "0"}, '$REDIS_PORT: redis.url: expected a port number 1..65535, found "0"'),
        (
            {"AGENTLOG_TUI__REFRESH_HZ": "0"},
            '$AGENTLOG_TUI__REFRESH_HZ: tui.refresh_hz: expected a number > 0 and <= 60, found "0"',
        ),
        (
            {"AGENTLOG_TUI__KEYS": "triage.ack"},
            "$AGENTLOG_TUI__KEYS: tui.keys: expected a mapping "
            'like {a: b} or a=b,c=d, found "triage.ack"',
        ),
        (
            {"AGENTLOG_SERVER__RATE_LIMITS__READ": "fast"},
            "$AGENTLOG_SERVER__RATE_LIMITS__READ: server.rate_limits.read: expected a rate such "
            'as "600/minute" or "10/second;100/minute", found "fast"',
        ),
        (
            {"AGENTLOG_SERVER__PUSH_BODY_LIMIT": "1 meg"},
            "$AGENTLOG_SERVER__PUSH_BODY_LIMIT: server.push_body_limit: expected a positive size "
            'like 256KB or 10MiB, found "1 meg"',
        ),
        (
            {"AGENTLOG_SERVER__RATE_LIMITS_READ": "1/second"},
            "$AGENTLOG_SERVER__RATE_LIMITS_READ: not a setting (did you mean "
            "$AGENTLOG_SERVER__RATE_LIMITS__READ?)",
        ),
    ],
)
def test_env_error_messages(env: dict[str, str], variables: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env | variables)
    assert str(info.value) == message


def test_other_agentlog_variables_are_not_settings(env: dict[str, str]) -> None:
    # AGENTLOG_CONFIG and switches of tests or tools are not settings and must not fail a load.
    load_config(env=env | {"AGENTLOG_TEST_PG": "x", "AGENTLOG_DEBUG": "1"})


def test_cli_error_messages(env: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError,
        match=r'^command line: unknown key "sever.port" \(did you '
        r'mean "server.port"',
    ):
        load_config(env=env, overrides={"sever.port": 80})
    with pytest.raises(ConfigError) as info:
        load_config(env=env, overrides={"server.port": "x"})
    assert (
        str(info.value) == 'command line: server.port: expected a port number 1..65535, found "x"'
    )
    with pytest.raises(ConfigError) as info:
        load_config(env=env, overrides={"server": {"rate_limits": {"auth_failures": "often"}}})
    assert str(info.value) == (
        "command line: server.rate_limits.auth_failures: expected a rate such as "
        '"600/minute" or "10/second;100/minute", found "often"'
    )


def test_error_messages_do_not_leak_secrets(tmp_path: Path, env: dict[str, str]) -> None:
    message = error_of(tmp_path, env, "loki:\n  password: [hunter2]\n")
    assert "hunter2" not in message and "loki.password" in message
    message = error_of(tmp_path, env, "postgres:\n  dsn: mysql://u:hunter2@h/db\n")
    assert "hunter2" not in message and "mysql://u:****@h/db" in message


# ---------------------------------------------------------------- the HTTP port's limits


def test_server_limits_defaults(env: dict[str, str]) -> None:
    s = load_config(env=env).settings.server
    r = s.rate_limits
    assert r.enabled is True
    assert (r.read, r.write, r.push, r.expensive, r.auth_failures) == (
        "3000/minute",
        "300/minute",
        "6000/minute",
        "30/minute",
        "60/minute",
    )
    assert s.body_limit == 1024**2
    assert (s.push_body_limit, s.push_decoded_limit) == (100 * 1024**2, 128 * 1024**2)
    assert (s.max_tails_per_tenant, s.tail_max_duration) == (10, 3600)


def test_server_limits_precedence_file_env_cli(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path,
        "server:\n"
        "  body_limit: 2MiB\n"
        "  push_body_limit: 10MB\n"
        "  tail_max_duration: 30m\n"
        "  rate_limits:\n"
        "    enabled: false\n"
        "    read: 10/second;100/minute\n"
        "    push: 100 per minute\n",
    )
    file_label = f"file:{path.resolve()}"

    loaded = load_config(path, env=env)
    s = loaded.settings.server
    assert (s.body_limit, s.push_body_limit, s.tail_max_duration) == (2 * 1024**2, 10**7, 1800)
    assert s.push_decoded_limit == 128 * 1024**2  # not in the file: the default
    assert s.rate_limits.enabled is False
    assert (s.rate_limits.read, s.rate_limits.push) == ("10/second;100/minute", "100 per minute")
    assert s.rate_limits.write == "300/minute"
    assert loaded.sources["server.rate_limits.read"] == file_label
    assert loaded.sources["server.rate_limits.write"] == "default"

    env |= {
        "AGENTLOG_SERVER__RATE_LIMITS__ENABLED": "true",
        "AGENTLOG_SERVER__RATE_LIMITS__READ": "5/second",
        "AGENTLOG_SERVER__BODY_LIMIT": "64KiB",
        "AGENTLOG_SERVER__MAX_TAILS_PER_TENANT": "3",
    }
    loaded = load_config(path, env=env)
    s = loaded.settings.server
    assert s.rate_limits.enabled is True and s.rate_limits.read == "5/second"
    assert (s.body_limit, s.max_tails_per_tenant) == (65536, 3)
    assert s.rate_limits.push == "100 per minute"
    assert loaded.sources["server.rate_limits.read"] == "env:AGENTLOG_SERVER__RATE_LIMITS__READ"
    assert loaded.sources["server.rate_limits.push"] == file_label

    overrides = {
        "server.rate_limits.read": "1/second",
        "server": {"rate_limits": {"write": "2/minute"}, "push-decoded-limit": "1GiB"},
    }
    loaded = load_config(path, env=env, overrides=overrides)
    s = loaded.settings.server
    assert (s.rate_limits.read, s.rate_limits.write) == ("1/second", "2/minute")
    assert s.push_decoded_limit == 1024**3 and s.body_limit == 65536
    for key in ("rate_limits.read", "rate_limits.write", "push_decoded_limit"):
        assert loaded.sources[f"server.{key}"] == "cli"
    assert loaded.sources["server.body_limit"] == "env:AGENTLOG_SERVER__BODY_LIMIT"


def test_nested_section_is_shown_and_round_trips(
    tmp_path: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(
        tmp_path, "server:\n  push_decoded_limit: 256MiB\n  rate_limits:\n    read: 7/second\n"
    )
    loaded = load_config(path, env=env)
    rows = {line.split(" = ")[0].strip(): line for line in render_config(loaded).splitlines()}
    assert rows["server.rate_limits.read"].split(" = ")[1].split()[0] == "7/second"
    assert rows["server.rate_limits.read"].endswith(f"(file:{path.resolve()})")
    assert rows["server.rate_limits.enabled"].split(" = ")[1].split()[0] == "true"
    assert rows["server.push_decoded_limit"].split(" = ")[1].split()[0] == "256MiB"
    assert rows["server.tail_max_duration"].split(" = ")[1].split()[0] == "1h"
    data = config_as_dict(loaded)
    assert data["server"]["rate_limits"]["read"] == "7/second"
    assert data["server"]["push_decoded_limit"] == 256 * 1024**2
    assert Settings.model_validate(config_as_dict(loaded, mask=False)) == loaded.settings
    # the JSON form, written as a config file, loads back to the same settings
    back = write(tmp_path, yaml.safe_dump(config_as_dict(loaded, mask=False)), "back.yaml")
    assert load_config(back, env=env).settings == loaded.settings

    # `agentlog config check`, as text and as JSON
    for name in list(os.environ):
        if name.startswith("AGENTLOG_"):
            monkeypatch.delenv(name)
    args = ["--config", str(path), "--data-dir", str(tmp_path / "data"), "config", "check"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"(?m)^server\.rate_limits\.read += 7/second +\(file:", out)
    assert cli.main([*args, "-o", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["server"]["rate_limits"] == {
        "enabled": True,
        "read": "7/second",
        "write": "300/minute",
        "push": "6000/minute",
        "expensive": "30/minute",
        "auth_failures": "60/minute",
    }


# ---------------------------------------------------------------- showing the config


def secret_env(env: dict[str, str]) -> dict[str, str]:
    return env | {
        "OPENROUTER_API_KEY": "sk-or-v1-hunter2KEY",
        "JWT_SECRET": "jwt-hunter2",
        "POSTGRES_PASSWORD": "pg-hunter2",
        "DATABASE_URL": "postgresql://ops:dsn-hunter2@db:5432/runs",
        "REDIS_URL": "redis://:redis-hunter2@cache:6379/0",
        "AGENTLOG_LOKI__PASSWORD": "loki-hunter2",
        "AGENTLOG_LOKI__BEARER_TOKEN": "token-hunter2",
        "LOKI_URL": "https://u:url-hunter2@loki.example",
    }


def test_render_config_masks_secrets(env: dict[str, str]) -> None:
    loaded = load_config(env=secret_env(env))
    text = render_config(loaded)
    assert "hunter2" not in text
    assert "redis.url" in text and "redis://:****@cache:6379/0" in text
    assert "postgresql://ops:****@db:5432/runs" in text
    assert "https://u:****@loki.example" in text
    for key in ("summarizer.api_key", "server.jwt_secret", "postgres.password", "loki.password"):
        line = next(line for line in text.splitlines() if line.startswith(key + " "))
        assert re.match(rf"{re.escape(key)} += \*\*\*\* +\(env:\w+\)$", line), line
    assert "hunter2" in render_config(loaded, mask=False)
    # repr() of the settings hides the secret fields (and the URLs that usually hold one)
    shown = repr(loaded.settings)
    for secret in ("sk-or", "jwt-", "pg-", "dsn-", "redis-", "loki-", "token-"):
        assert f"{secret}hunter2" not in shown


def test_render_config_is_aligned_with_sources(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "embedded:\n  retention: 36h\n  max_line_bytes: 1MiB\n")
    loaded = load_config(path, env=env | {"PORT": "8080"}, overrides={"demo.agents": 3})
    lines = render_config(loaded).splitlines()
    assert len(lines) == len(setting_keys())
    assert len({line.index(" = ") for line in lines}) == 1
    assert len({line.index("   (") for line in lines if len(line) < 100}) == 1
    rows = {line.split(" = ")[0].strip(): line for line in lines}
    assert rows["embedded.retention"].split(" = ")[1].split()[0] == "1d12h"
    assert rows["embedded.max_line_bytes"].split(" = ")[1].split()[0] == "1MiB"
    assert rows["embedded.retention"].endswith(f"(file:{path.resolve()})")
    assert rows["server.port"].endswith("(env:PORT)")
    assert rows["demo.agents"].endswith("(cli)")
    assert rows["loki.url"].endswith("(default)")
    assert rows["loki.tenant"].split(" = ")[1].split()[0] == '""'


def test_config_as_dict(env: dict[str, str]) -> None:
    loaded = load_config(env=secret_env(env))
    data = config_as_dict(loaded)
    assert "hunter2" not in json.dumps(data)
    assert data["summarizer"]["api_key"] == "****"
    assert data["redis"]["url"] == "redis://:****@cache:6379/0"
    assert data["loki"]["tenant"] == ""
    assert data["embedded"]["retention"] == 7 * 86400
    assert data["data_dir"] == str(loaded.settings.data_dir)
    raw = config_as_dict(loaded, mask=False)
    assert raw["server"]["jwt_secret"] == "jwt-hunter2"
    # The JSON form is itself a valid config: durations in seconds, sizes in bytes.
    assert Settings.model_validate(raw) == loaded.settings


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@host:6379/0", "redis://:****@host:6379/0"),
        ("postgresql://user:pw@host/db", "postgresql://user:****@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host/db?user=u&password=pw", "postgresql://host/db?user=u&password=****"),
        ("http://127.0.0.1:3100", "http://127.0.0.1:3100"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 604800.0),
        ("12h", 43200.0),
        ("10m", 600.0),
        ("90s", 90.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2w", 1209600.0),
        ("1.5h", 5400.0),
        ("45", 45.0),
        (45, 45.0),
        (2.5, 2.5),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["seven days", "7 days", "-1s", "1y", "", "inf", True, None, [1]])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like 7d or 12h"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(604800, "7d"), (5400, "1h30m"), (90, "1m30s"), (0, "0s"), (0.5, "500ms"), (1.5, "1.5s")],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256KB", 256000),
        ("256KiB", 262144),
        ("10MiB", 10485760),
        ("1GB", 10**9),
        ("512", 512),
        ("512B", 512),
        ("1.5KiB", 1536),
        (4096, 4096),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "10XB", "-1KB", True, None])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("size", "text"), [(262144, "256KiB"), (64 * 1024**2, "64MiB"), (2000, "2KB"), (100, "100B")]
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size
