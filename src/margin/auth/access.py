"""Who may use ``/admin/`` and the console: the master key, or an API key with a role.

A key's role (``auth/keys.py``) says what it may do besides calling models:

- ``user`` (every key unless made otherwise): models only;
- ``viewer``: also the console's read-only pages and the ``/admin/`` queries behind them
  (spend, budgets, requests, capacity, anomalies, alerts, quality, experiments), GET only;
- ``admin``: everything the master key may, keys included.

So a team can hand its finance people a viewer key and its on-call an admin key, revoke
either on its own, and keep the master key in the deployment's secret store. The check is
the same whether the key comes in a header or through a console session made with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from margin.errors import PermissionDenied

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CONSOLE_ROLES = ("viewer", "admin")


@dataclass(frozen=True, slots=True)
class Access:
    """Who is asking: ``key_id`` None for the master key."""
    role: str
    key_id: str | None = None

    @property
    def label(self) -> str:
        return "the master key" if self.key_id is None else f"key {self.key_id} ({self.role})"


MASTER = Access("admin")


def check_allowed(access: Access, method: str, endpoint: str,
                  read_only: frozenset[str] | set[str]) -> None:
    """Raise 403 unless ``access`` may make this request of ``/admin/<endpoint>``;
    ``read_only`` names the endpoints a viewer may read."""
    if access.role == "admin":
        return
    if access.role == "viewer":
        if method.upper() in SAFE_METHODS and endpoint in read_only:
            return
        raise PermissionDenied(
            f"A viewer key may only read the console's pages; {method.upper()} "
            f"/admin/{endpoint[:100]} needs an admin key or the master key.",
            code="admin_role_required")
    raise PermissionDenied(
        f"This API key's role is {access.role!r}: it calls models but does not open the "
        "console or /admin/; use the master key or a key with the viewer or admin role.",
        code="admin_role_required")


def console_role(role: str) -> bool:
    return role in CONSOLE_ROLES
