"""Auth stage: when a master key is configured, every request presents a valid key.

The key's user and team become the request's attribution. A missing, malformed, unknown,
revoked or expired key gets 401 before anything else runs (the upstream is never
called; the app still writes the ledger row). A key limited to some models gets 403 for
the others. The master key itself may call models too. Without a master key the stage is
off and the gateway is open (``margin serve`` says so at start-up).

This stage's factory also mounts ``/admin/keys`` and ``/admin/spend`` behind the master key.
"""

from __future__ import annotations

import os
from typing import Any

from margin.auth.admin import KeysAdmin, SpendAdmin, is_master, master_guard, presented_key
from margin.auth.verifier import KeyVerifier
from margin.errors import AuthenticationError, PermissionDenied
from margin.types import RequestContext, Response
from margin.gateway.pipeline import Handler


class AuthStage:
    name = "auth"

    def __init__(self, master_key: str, verifier: KeyVerifier) -> None:
        self.master_key = master_key
        self.verifier = verifier

    async def start(self) -> None:
        await self.verifier.start()

    async def authorize(self, headers: dict[str, str]) -> None:
        """For endpoints outside the pipeline (``/v1/models``): any valid key will do."""
        token = presented_key(headers)
        if token is None:
            raise AuthenticationError("Missing API key: send it as Authorization: Bearer <key>.")
        if not is_master(token, self.master_key):
            await self.verifier.verify(token)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        token = presented_key(ctx.headers)
        if token is None:
            ctx.notes["auth"] = "missing"
            raise AuthenticationError("Missing API key: send it as Authorization: Bearer <key>.")
        if is_master(token, self.master_key):
            ctx.notes["auth"] = "master"
            return await call_next(ctx)
        try:
            record = await self.verifier.verify(token)
        except AuthenticationError:
            ctx.notes["auth"] = "refused"
            raise
        ctx.key_id = record.id
        if record.user:
            ctx.user = record.user
        if record.team:
            ctx.team = record.team
        asked = ctx.requested_model
        if not record.allows_model(asked):
            raise PermissionDenied(f"This API key may not use the model '{asked}'.",
                                   code="model_not_allowed")
        return await call_next(ctx)


def build(gateway: Any) -> AuthStage | None:
    settings = gateway.settings
    master_key = os.environ.get(settings.server.master_key_env)
    # Admin endpoints exist whenever a master key does; /admin/spend is useful on an open
    # gateway too, but it still needs the master key to be read.
    if not master_key:
        return None
    cfg = settings.auth
    redis_url = cfg.redis_url or settings.redis_url
    verifier = KeyVerifier(settings.ledger.url, cfg, redis_url)
    gateway.key_verifier = verifier
    gateway.auth_enabled = True
    gateway.admin_auth = master_guard(master_key)
    gateway.admin_routes["keys"] = KeysAdmin(verifier)
    gateway.admin_routes["spend"] = SpendAdmin(settings.ledger.url, settings.limits.timezone)
    gateway.on_close(verifier.aclose)
    stage = AuthStage(master_key, verifier)
    gateway.authorize = stage.authorize
    return stage
