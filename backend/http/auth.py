"""Authentication and authorization of the HTTP port: JWTs for people and scripts, API keys for
pushers, roles, tenants, and the per-request guard that also applies the rate limits.

Credentials (on every `/api`, Loki, OTLP and `/metrics` route; `/health` and `/ready` are open):

- `Authorization: Bearer <JWT>`: HS256, signed with `server.jwt_secret` (env `JWT_SECRET`), with
  the claims `sub` (who), `role` (viewer, operator or admin), `tenant` and `exp` (required), plus
  `iat`. `agentlog token --role R --tenant T --ttl 8h` mints one. 10 s of clock skew are allowed.
- `Authorization: Bearer alk_...` or HTTP basic auth with the key as the password (what Loki
  clients send; the user name is ignored): an API key (`backend.apikeys`), bound to a tenant and a
  role. A JWT is also accepted as a basic-auth password.

Roles: viewer reads; operator also triages, changes run status, refreshes summaries and pushes;
admin may do everything (manage API keys). The tenant is the token's or the key's, never a
header's: an `X-Scope-OrgID` that names another tenant is refused with 403 (one that matches is
fine, so Loki clients configured with their tenant keep working).

Auth off: when `server.jwt_secret` is empty the port runs without authentication, and
`agentlog serve` allows that only on a loopback address (see `serve.check_bind`). Every caller is
then an anonymous admin, and the tenant comes from `X-Scope-OrgID` (default
`embedded.tenant_default`), as with a Loki that has auth disabled.

Refusals: 401 (no, malformed, expired or badly signed credentials; unknown or revoked key) with
`WWW-Authenticate`, 403 (role too low, tenant mismatch), 429 with `Retry-After` (rate limit; also
after too many failed logins from one address). Bodies are JSON `{"detail": "..."}` in plain words.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Security
from fastapi.security.http import HTTPBase
from starlette.requests import HTTPConnection

from ..apikeys import ApiKeyStore, Role, check_tenant, looks_like_key
from ..errors import AgentlogError, UsageError

if TYPE_CHECKING:
    from .app import AppContext

__all__ = [
    "JWT_ALGORITHM",
    "MIN_SECRET_LENGTH",
    "AuthError",
    "Authenticator",
    "Identity",
    "Role",
    "decode_token",
    "guard",
    "identity_of",
    "loki_guard",
    "mint_token",
    "require",
    "secret_problem",
]

JWT_ALGORITHM = "HS256"
MIN_SECRET_LENGTH = 32
LEEWAY_S = 10
MAX_TTL_S = 366 * 86400
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "default", "jwt_secret", "jwt-secret",
     "your-secret", "your_secret", "yoursecret", "please-change-me", "test", "password"}
)  # fmt: skip
MAX_TENANTS_TRACKED = 1000
PUSH_PATHS = frozenset({"/loki/api/v1/push", "/api/prom/push"})
OPEN_PATHS = frozenset({"/ready"})  # readiness probes need no credentials


def secret_problem(secret: str) -> str | None:
    """Why `secret` is no good for signing tokens, or None when it is."""
    s = secret.strip()
    if not s:
        return "it is empty"
    if s.lower() in PLACEHOLDER_SECRETS or "changeme" in s.lower().replace("-", "").replace(
        "_", ""
    ):
        return "it is a placeholder"
    if len(s) < MIN_SECRET_LENGTH:
        return f"it is shorter than {MIN_SECRET_LENGTH} characters"
    if len(set(s)) <= 4:
        return "it repeats too few characters"
    return None


def weak_secret_message(problem: str) -> str:
    return (
        f"server.jwt_secret (env JWT_SECRET) is not usable: {problem}. Set it to a random secret "
        f"of at least {MIN_SECRET_LENGTH} characters, e.g. the output of `openssl rand -hex 32`"
    )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: from a JWT, an API key, or nobody (auth off)."""

    subject: str
    role: Role
    tenant: str
    method: str  # "jwt", "apikey" or "none"
    key_id: str = ""

    @property
    def who(self) -> str:
        """For logs: `jwt:alice`, `apikey:<key id>` or `anonymous` (never a secret)."""
        if self.method == "apikey":
            return f"apikey:{self.key_id}"
        if self.method == "jwt":
            return f"jwt:{self.subject}"
        return "anonymous"

    @property
    def rate_key(self) -> str:
        return f"{self.who}@{self.tenant}"


class AuthError(Exception):
    """A refused request: `status` 401 or 403, `reason` a short metric label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def mint_token(
    secret: str,
    *,
    subject: str,
    role: Role | str,
    tenant: str,
    ttl_s: float,
    now_s: float | None = None,
) -> str:
    """A signed JWT (HS256) with sub, role, tenant, iat and exp."""
    problem = secret_problem(secret)
    if problem is not None:
        raise UsageError(weak_secret_message(problem))
    r = Role(role)
    check_tenant(tenant)
    if not subject.strip():
        raise UsageError("the token needs a subject (who it is for)")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise UsageError("the token's lifetime must be positive and at most 366 days")
    now = int(time.time() if now_s is None else now_s)
    claims = {
        "sub": subject,
        "role": r.value,
        "tenant": tenant,
        "iat": now,
        "exp": now + int(ttl_s),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_token(secret: str, token: str) -> Identity:
    """The identity a JWT carries; AuthError(401) when it is expired, badly signed or lacks a
    claim, with the reason in plain words."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            leeway=LEEWAY_S,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "expired", "the token has expired: get a new one") from None
    except jwt.InvalidSignatureError:
        raise AuthError(
            401, "bad_signature", "the token's signature does not match this server's secret"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(401, "bad_claims", f"the token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, "malformed", f"the token is not valid: {exc}") from None
    sub, role, tenant = claims.get("sub"), claims.get("role"), claims.get("tenant")
    if not isinstance(sub, str) or not sub:
        raise AuthError(401, "bad_claims", "the token's 'sub' claim must be a non-empty string")
    if not isinstance(role, str) or role not in {r.value for r in Role}:
        raise AuthError(
            401, "bad_claims", "the token's 'role' claim must be viewer, operator or admin"
        )
    if not isinstance(tenant, str):
        raise AuthError(401, "bad_claims", "the token lacks the 'tenant' claim")
    try:
        check_tenant(tenant)
    except UsageError as exc:
        raise AuthError(401, "bad_claims", f"the token's tenant is not valid: {exc}") from None
    return Identity(subject=sub[:200], role=Role(role), tenant=tenant, method="jwt")


class Authenticator:
    """Checks credentials (see module doc). `enabled` False: everyone is an anonymous admin."""

    def __init__(
        self,
        *,
        enabled: bool,
        secret: str = "",
        keys: ApiKeyStore | None = None,
        default_tenant: str = "fake",
    ) -> None:
        if enabled and secret and (problem := secret_problem(secret)) is not None:
            raise UsageError(weak_secret_message(problem))
        self.enabled = enabled
        self.secret = secret
        self.keys = keys
        self.default_tenant = default_tenant

    async def _key(self, secret: str) -> Identity:
        if self.keys is None:
            raise AuthError(401, "unknown_key", "API keys are not accepted by this server")
        try:
            key = await self.keys.verify(secret)
        except AgentlogError as exc:  # the key table is unreadable: say so, as a 503
            raise HTTPException(503, f"cannot check the API key: {exc}") from None
        if key is None:
            raise AuthError(401, "unknown_key", "the API key is unknown or revoked")
        return Identity(
            subject=key.name or key.key_id,
            role=key.role,
            tenant=key.tenant,
            method="apikey",
            key_id=key.key_id,
        )

    async def _credential(self, secret: str) -> Identity:
        if looks_like_key(secret):
            return await self._key(secret)
        if not self.secret:
            raise AuthError(401, "malformed", "this server accepts API keys only (no JWT secret)")
        return decode_token(self.secret, secret)

    async def authenticate(self, authorization: str) -> Identity:
        """The identity of an `Authorization` header value; AuthError when there is none."""
        scheme, _, cred = authorization.strip().partition(" ")
        cred = cred.strip()
        if not scheme:
            raise AuthError(
                401,
                "missing",
                "authentication required: send 'Authorization: Bearer <token or API key>'",
            )
        if scheme.lower() == "bearer" and cred:
            return await self._credential(cred)
        if scheme.lower() == "basic" and cred:
            try:
                user, _, password = base64.b64decode(cred, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise AuthError(401, "malformed", "malformed basic-auth credentials") from None
            return await self._credential(password or user)
        raise AuthError(
            401, "malformed", "unsupported Authorization header: use Bearer or Basic credentials"
        )


# ---------------------------------------------------------------- the guard (a dependency)


class _Documented(HTTPBase):
    """A security scheme for the OpenAPI document only: the guard reads the header itself (the
    same code serves HTTP routes and WebSockets)."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


BEARER = _Documented(
    scheme="bearer",
    scheme_name="bearer",
    description="A JWT (`agentlog token`) or an API key (`agentlog apikey create`).",
)
BASIC = _Documented(
    scheme="basic",
    scheme_name="basic",
    description="For Loki clients: any user name, an API key (or a JWT) as the password.",
)


def _ctx(conn: HTTPConnection) -> AppContext:
    from .app import context_of  # app.py imports this module

    return context_of(conn)


def identity_of(conn: HTTPConnection) -> Identity | None:
    """The identity the guard settled on for this request (None before the guard ran)."""
    ident = conn.scope.get("state", {}).get("identity")
    return ident if isinstance(ident, Identity) else None


def _client(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def _refuse(ctx: AppContext, exc: AuthError) -> HTTPException:
    ctx.metrics.auth_failures.labels(exc.reason).inc()
    headers = {"WWW-Authenticate": 'Bearer realm="agentlog"'} if exc.status == 401 else None
    return HTTPException(exc.status, str(exc), headers=headers)


def _too_many(ctx: AppContext, category: str, retry_after: float) -> HTTPException:
    ctx.metrics.rate_limited.labels(category).inc()
    return HTTPException(
        429,
        f"rate limit exceeded ({category}); retry in {int(retry_after)} s",
        headers={"Retry-After": str(int(retry_after))},
    )


async def _anonymous(conn: HTTPConnection, ctx: AppContext) -> Identity:
    from .loki_api import tenant_of  # the Loki rules for X-Scope-OrgID

    try:
        tenant = tenant_of(conn)
    except UsageError as exc:
        raise HTTPException(400, str(exc)) from None
    return Identity(subject="anonymous", role=Role.ADMIN, tenant=tenant, method="none")


async def guard(conn: HTTPConnection, needed: Role, category: str) -> Identity:
    """Authenticate, authorize (`needed` role), bind the tenant, and apply the rate limit of
    `category` for this identity and route. Stores the identity on the request."""
    ctx = _ctx(conn)
    auth = ctx.auth
    if not auth.enabled:
        ident = await _anonymous(conn, ctx)
    else:
        client = _client(conn)
        wait = await ctx.limiter.blocked("auth_failures", client)
        if wait is not None:
            raise _too_many(ctx, "auth_failures", wait)
        try:
            ident = await auth.authenticate(conn.headers.get("authorization", ""))
            org = conn.headers.get("x-scope-orgid")
            if org and org != ident.tenant:
                raise AuthError(
                    403,
                    "tenant_mismatch",
                    f"X-Scope-OrgID {org[:160]!r} is not the tenant of these credentials; the "
                    "tenant comes from the token or key (drop the header or make it match)",
                )
        except AuthError as exc:
            await ctx.limiter.hit("auth_failures", client)
            raise _refuse(ctx, exc) from None
        if not ident.role.allows(needed):
            raise _refuse(
                ctx,
                AuthError(
                    403,
                    "forbidden_role",
                    f"this needs the {needed.value} role; "
                    f"these credentials have {ident.role.value}",
                ),
            )
    conn.scope.setdefault("state", {})["identity"] = ident
    if len(ctx.tenants) < MAX_TENANTS_TRACKED:
        ctx.tenants.add(ident.tenant)
    route = getattr(conn.scope.get("route"), "path", conn.url.path)
    # Without auth every caller is "anonymous": count them apart by address.
    who = ident.rate_key if ident.method != "none" else f"{_client(conn)}@{ident.tenant}"
    wait = await ctx.limiter.hit(category, who, route)
    if wait is not None:
        raise _too_many(ctx, category, wait)
    return ident


def require(needed: Role, category: str = "read") -> Any:
    """A dependency: `ident: Annotated[Identity, require(Role.OPERATOR, "write")]`."""

    async def dependency(
        conn: HTTPConnection,
        _bearer: Annotated[None, Security(BEARER)],
        _basic: Annotated[None, Security(BASIC)],
    ) -> Identity:
        return await guard(conn, needed, category)

    return Depends(dependency)


async def loki_guard(
    conn: HTTPConnection,
    _bearer: Annotated[None, Security(BEARER)],
    _basic: Annotated[None, Security(BASIC)],
) -> Identity:
    """The guard of the Loki-compatible routes: pushes need an operator, the rest a viewer."""
    route = getattr(conn.scope.get("route"), "path", "")
    if route in OPEN_PATHS:
        ctx = _ctx(conn)
        return Identity("anonymous", Role.VIEWER, ctx.default_tenant, "none")
    if route in PUSH_PATHS:
        return await guard(conn, Role.OPERATOR, "push")
    return await guard(conn, Role.VIEWER, "read")
