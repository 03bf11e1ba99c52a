"""``/admin/<name>``: the master-key check, then the handler of that name, which gets a
typed ``AdminRequest``. The keys endpoints exist whenever a master key does; the
console's read-only pages (``gateway/console.py``) always, and without a master key they
answer loopback clients only (the gateway is open then, and says so). With a master key, a
request that presents no key may come with the console's session cookie instead
(``console_session.py``; writes need its CSRF token). Besides the master key, an API key
with the viewer role may read the console's endpoints and one with the admin role may do
everything (``auth/access.py``)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from margin.auth.access import MASTER, Access, check_allowed
from margin.auth.admin import KeysAdmin, SpendAdmin, is_master, presented_key
from margin.auth.keys import parse_token
from margin.errors import AuthenticationError, NotFound, PermissionDenied
from margin.gateway.console import Console
from margin.gateway.console_session import ConsoleAuth
from margin.gateway.http import (Receive, Scope, Send, client_address, read_body,
                                 request_headers, send_json)
from margin.gateway.service import Gateway
from margin.types import AdminRequest

AdminHandler = Callable[[AdminRequest], Awaitable[tuple[int, Any]]]


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def admin_handlers(gateway: Gateway) -> dict[str, AdminHandler]:
    if gateway.keys is None:
        return {}
    s = gateway.settings
    return {"keys": KeysAdmin(gateway.keys),
            "spend": SpendAdmin(s.ledger.url, s.limits.timezone)}


class Admin:
    def __init__(self, gateway: Gateway, sessions: ConsoleAuth | None = None) -> None:
        self.handlers = admin_handlers(gateway)
        self.console = Console(gateway.settings)
        # The console's spend page answers what /admin/spend answered before, too.
        self.handlers.update({name: self.console.handler(name) for name in self.console.names()})
        self.open = frozenset(self.console.names())
        self.master_key = gateway.master_key
        self.keys = gateway.keys
        self.sessions = sessions
        self.max_body = gateway.settings.server.max_body_bytes
        self.body_timeout_s = gateway.settings.server.body_timeout_s

    async def handle(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        headers = request_headers(scope)
        head, _, rest = name.partition("/")
        handler = self.handlers.get(head)
        if handler is None:
            raise NotFound(f"no such admin endpoint: /admin/{name[:200]}", code="unknown_url")
        if not self.master_key:
            if head not in self.open or client_address(scope) not in LOOPBACK:
                raise NotFound("admin endpoints need a master key: set MARGIN_MASTER_KEY",
                               code="admin_disabled")
        elif self.sessions is not None and presented_key(headers) is None:
            # No key in a header: the browser console's session cookie (with CSRF on writes).
            await self.sessions.authorize(scope["method"], headers, head, self.open)
        else:
            access = await self._presented(headers, client_address(scope))
            check_allowed(access, scope["method"], head, self.open)
        body = await read_body(scope, receive, self.max_body, self.body_timeout_s)
        query = parse_qs(scope.get("query_string", b"").decode())
        status, payload = await handler(AdminRequest(scope["method"], rest, query, headers, body))
        await send_json(send, status, payload)

    async def _presented(self, headers: dict[str, str], client: str | None) -> Access:
        """Who the key in the request's header is: the master key, or an API key (whose
        role ``check_allowed`` then weighs)."""
        token = presented_key(headers)
        if token is None:
            raise AuthenticationError("Admin endpoints need the master key or a viewer or "
                                      "admin key (Authorization: Bearer <key>).")
        if is_master(token, self.master_key or ""):
            return MASTER
        if self.keys is None or parse_token(token) is None:
            raise PermissionDenied("Admin endpoints need the master key; this key is not it.",
                                   code="master_key_required")
        record = await self.keys.verify(token, client)  # 401 for an unknown or revoked key
        return Access(record.role, record.id)
