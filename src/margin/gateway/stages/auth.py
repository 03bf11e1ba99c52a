"""Auth stage: when a master key is configured, every request presents a valid key.

The key's user and team become the request's attribution, and its record (limits, budget)
rides on the context for the admission stage. A missing, malformed, unknown, revoked or
expired key gets 401 before anything else runs (the upstream is never called; the app
still writes the ledger row). A key limited to some models gets 403 for the others. The
master key itself may call models too. Without a master key the stage is off and the
gateway is open (``margin serve`` says so at start-up).
"""

from __future__ import annotations

from margin.auth.admin import is_master, presented_key
from margin.auth.config import AuthConfig
from margin.auth.verifier import KeyVerifier
from margin.errors import AuthenticationError, PermissionDenied, RateLimited
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.types import RequestContext, Response

MISSING_KEY = "Missing API key: send it as Authorization: Bearer <key>."


async def authorize(headers: dict[str, str], master_key: str, keys: KeyVerifier,
                    client: str | None = None) -> None:
    """For endpoints outside the pipeline (``/v1/models``): any valid key will do."""
    token = presented_key(headers)
    if token is None:
        raise AuthenticationError(MISSING_KEY)
    if not is_master(token, master_key):
        await keys.verify(token, client)


class AuthStage(Stage):
    name = "auth"

    def __init__(self, master_key: str, verifier: KeyVerifier) -> None:
        self.master_key = master_key
        self.verifier = verifier

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        token = presented_key(ctx.headers)
        if token is None:
            ctx.notes["auth"] = "missing"
            raise AuthenticationError(MISSING_KEY)
        if is_master(token, self.master_key):
            ctx.notes["auth"] = "master"
            return await call_next(ctx)
        try:
            record = await self.verifier.verify(token, ctx.client)
        except (AuthenticationError, RateLimited):
            ctx.notes["auth"] = "refused"
            raise
        ctx.key_id = record.id
        ctx.key = record
        if record.user:
            ctx.user = record.user
        if record.team:
            ctx.team = record.team
        asked = ctx.requested_model
        if not record.allows_model(asked):
            raise PermissionDenied(f"This API key may not use the model '{asked}'.",
                                   code="model_not_allowed")
        return await call_next(ctx)


def build(cfg: AuthConfig, services: Services) -> AuthStage | None:
    # The gateway owns the key verifier (the admin endpoints use it too); it exists
    # exactly when a master key does.
    if services.keys is None or not services.master_key:
        return None
    return AuthStage(services.master_key, services.keys)
