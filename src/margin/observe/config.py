"""Settings for ``/metrics`` (the ``metrics:`` section). Imports only pydantic."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from margin.configbase import Strict as _Strict


class MetricsConfig(_Strict):
    """Prometheus metrics at ``/metrics``. No label value ever comes from what a client
    sent: ``model`` is a declared model or route name (anything else is ``unknown``), and
    users and features are labelled only when listed here (every other one counts as
    ``other``), so the number of series stays fixed however many names clients invent.
    Per-user and per-feature figures belong to the ledger (``margin spend``)."""

    yaml_example: ClassVar[str] = """
        metrics:
          require_auth: true            # Authorization: Bearer <token or master key>
          token_env: MARGIN_METRICS_TOKEN
          users: [alice, batch-jobs]    # these users get their own cost series
          features: [support-chat]
    """

    require_auth: bool = False
    """Refuse ``/metrics`` (401) unless it presents ``Authorization: Bearer`` with the token
    from ``token_env`` or the master key."""
    token_env: str = "MARGIN_METRICS_TOKEN"
    """The environment variable holding a token that may read ``/metrics`` (a Prometheus
    scraper's); the master key is accepted too."""
    users: list[str] = Field(default_factory=list, max_length=200)
    """Users whose cost is labelled by name in ``margin_cost_usd``; every other user is
    ``other``. At most 200."""
    features: list[str] = Field(default_factory=list, max_length=200)
    """Features labelled by name in ``margin_cost_usd``; every other feature is ``other``.
    At most 200."""
