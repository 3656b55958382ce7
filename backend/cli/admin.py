"""CLI verbs for the HTTP port and its credentials: `serve`, `token`, `apikey`.

    agentlog serve [--host H] [--port P]
    agentlog token --role R [--tenant T] [--ttl 8h] [--subject S]
    agentlog apikey create [--tenant T] [--role R] [--name N]
    agentlog apikey list [--tenant T] [--all]
    agentlog apikey revoke KEY_ID

`token` and `apikey create` print the secret alone on the last line of stdout (what it is for
goes to stderr first), so a script can take it with `tail -1`; with `-o json` they print one JSON
object instead. The tenant defaults to `embedded.tenant_default`; the token's subject to
`tui.user` ($USER).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from .main import Ctx

NS = 1_000_000_000
ROLES = ("viewer", "operator", "admin")


def add_parsers(verb: Any) -> None:
    """Register the verbs on the CLI's sub-parser factory `verb(name, help)`."""
    s = verb("serve", "run the HTTP port headless (JSON API, /metrics, OTLP, Loki API)")
    s.add_argument("--host", metavar="H", help="address to listen on (server.host: 127.0.0.1)")
    s.add_argument("--port", type=int, metavar="P", help="port (server.port, else 3100)")
    s.add_argument(
        "--index-from-loki",
        metavar="SELECTOR",
        help="follow these streams of the log source (agents pushing to Loki directly) and keep "
        "the task table current; resumes where it stopped",
    )
    t = verb("token", "mint a JWT for the HTTP port (printed alone on the last line)")
    t.add_argument("--role", required=True, type=str.lower, choices=ROLES)
    t.add_argument("--tenant", metavar="T", help="default embedded.tenant_default")
    t.add_argument("--ttl", metavar="D", default="8h", help="lifetime (8h)")
    t.add_argument("--subject", metavar="S", help="who it is for (default tui.user)")
    k = verb("apikey", "API keys for pushers: create (printed last), list, revoke")
    k.add_argument("action", choices=("create", "list", "revoke"), metavar="create|list|revoke")
    k.add_argument("key_id", nargs="?", metavar="KEY_ID", help="the key to revoke")
    k.add_argument("--tenant", metavar="T", help="default embedded.tenant_default")
    k.add_argument("--role", type=str.lower, choices=ROLES, default="operator")
    k.add_argument("--name", default="", metavar="N", help="what the key is for")
    k.add_argument("--all", action="store_true", help="list: include revoked keys")


def _iso(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def cmd_serve(ctx: Ctx) -> int:
    from ..http.serve import serve

    port = ctx.args.port
    if port is not None and not 0 <= port <= 65535:
        raise UsageError("--port: expected a port number 0..65535")
    if ctx.args.index_from_loki and ctx.settings.log_source != "loki":
        raise UsageError(
            "--index-from-loki follows a Loki that agents push to directly; set log_source: loki "
            "(or LOKI_URL) — pushes to the embedded store already update the task table"
        )
    await serve(ctx.settings, host=ctx.args.host, port=port, index_from=ctx.args.index_from_loki)
    return 0


async def cmd_token(ctx: Ctx) -> int:
    from ..http.auth import mint_token
    from .main import _duration

    a = ctx.args
    secret = ctx.settings.server.jwt_secret
    if not secret:
        raise UsageError(
            "no JWT secret: set server.jwt_secret (env JWT_SECRET) to a random secret of at "
            "least 32 characters, e.g. `openssl rand -hex 32`, the same as `agentlog serve` uses"
        )
    ttl_s = _duration(a.ttl, "--ttl") / NS
    tenant = a.tenant or ctx.settings.embedded.tenant_default
    subject = a.subject or ctx.settings.tui.user or "agentlog"
    token = mint_token(secret, subject=subject, role=a.role, tenant=tenant, ttl_s=ttl_s)
    expires = _iso(int((datetime.now(UTC).timestamp() + ttl_s) * NS))
    if ctx.output in ("json", "jsonl"):
        ctx.json(
            {
                "token": token,
                "subject": subject,
                "role": a.role,
                "tenant": tenant,
                "expires_at": expires,
            }
        )
        return 0
    ctx.note(f"token for {subject}: role {a.role}, tenant {tenant}, expires {expires}")
    ctx.print(token)
    return 0


async def cmd_apikey(ctx: Ctx) -> int:
    from ..apikeys import SqliteApiKeyStore, default_path, parse_role

    a = ctx.args
    tenant = a.tenant or ctx.settings.embedded.tenant_default
    store = SqliteApiKeyStore(default_path(ctx.settings.data_dir))
    try:
        if a.action == "create":
            if a.key_id:
                raise UsageError("apikey create takes no KEY_ID")
            new = await store.create(tenant, parse_role(a.role), name=a.name, created_by="cli")
            if ctx.output in ("json", "jsonl"):
                ctx.json({**_key_json(new.key), "secret": new.secret})
                return 0
            ctx.note(
                f"API key {new.key.key_id}: tenant {tenant}, role {new.key.role.value}; the "
                "secret below is shown once (only its hash is kept). Loki clients send it as the "
                "basic-auth password, others as 'Authorization: Bearer <key>'"
            )
            ctx.print(new.secret)
            return 0
        if a.action == "list":
            keys = await store.list_keys(a.tenant, include_revoked=a.all)
            if ctx.output == "json":
                ctx.json([_key_json(k) for k in keys])
                return 0
            if ctx.output == "jsonl":
                for k in keys:
                    ctx.json(_key_json(k))
                return 0
            ctx.print(
                f"{'KEY_ID':<12} {'TENANT':<16} {'ROLE':<8} {'CREATED':<20} {'LAST USED':<20} "
                "STATE   NAME"
            )
            for k in keys:
                state = "active" if k.active else "revoked"
                ctx.print(
                    f"{k.key_id:<12} {k.tenant[:16]:<16} {k.role.value:<8} "
                    f"{_iso(k.created_at):<20} {_iso(k.last_used_at):<20} {state:<7} {k.name}"
                )
            ctx.note(f"{len(keys)} keys")
            return 0
        if not a.key_id:
            raise UsageError("apikey revoke needs the KEY_ID (see `agentlog apikey list`)")
        key = await store.revoke(a.key_id)
        if ctx.output in ("json", "jsonl"):
            ctx.json(_key_json(key))
        else:
            ctx.print(f"revoked {key.key_id} (tenant {key.tenant}, role {key.role.value})")
        return 0
    finally:
        await store.close()


def _key_json(k: Any) -> dict[str, Any]:
    return {
        "key_id": k.key_id,
        "tenant": k.tenant,
        "role": k.role.value,
        "name": k.name,
        "created_at": k.created_at,
        "created_by": k.created_by,
        "last_used_at": k.last_used_at,
        "revoked_at": k.revoked_at,
    }
