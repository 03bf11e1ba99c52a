"""A/B experiments: arms of a named experiment, assigned by a stable hash of the user or
key, each arm overriding what the pipeline does (model, router threshold, semantic cache,
compression); the report's statistics (``stats``)."""
