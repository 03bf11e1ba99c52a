"""Prompt compression: fewer input tokens for the same answer (off unless configured).

Strategies, each reported separately: whitespace and duplicate-content normalisation
(``text``), retrieval-context pruning (``retrieval``), history trimming (``history``);
``apply.compress`` runs the configured ones on a request body. Nothing is imported here:
``margin.config`` imports ``compression.config`` and must not pull the rest in.
"""
