"""Migration 3: every kind of token a provider bills, and the API the client spoke.

``cache_write_tokens``: prompt tokens written to the provider's prompt cache (Anthropic's
cache_creation_input_tokens, Bedrock's cacheWriteInputTokens), billed above the input price;
``reasoning_tokens``: completion tokens spent thinking (a part of completion_tokens);
``dialect``: openai | messages | responses.
"""

STATEMENTS: list[str] = [
    "ALTER TABLE requests ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE requests ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE requests ADD COLUMN dialect TEXT NOT NULL DEFAULT 'openai'",
]
