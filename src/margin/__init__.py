"""margin: keep LLM and ML serving cheap, fast and right-sized."""

__version__ = "0.1.0"
