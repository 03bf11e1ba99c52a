"""The base of every settings class: unknown fields are an error, never silently ignored
(a misspelt ``max_tokns`` must not fall back to a default). Imports nothing of margin's."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # Docstrings under fields describe them: ``margin config docs`` prints them.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
