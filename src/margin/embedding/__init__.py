"""The local sentence-embedding model (the bundled all-MiniLM-L6-v2), shared by every part
that embeds text: the embeddings upstream, the semantic cache, the learned router and
retrieval compression. ``shared_embedder`` loads it once per process."""

from margin.embedding.minilm import (DEFAULT_EMBEDDING_MODEL, EmbedderVariant, LocalEmbedder,
                                     bundled_minilm_path, shared_embedder)

__all__ = ["DEFAULT_EMBEDDING_MODEL", "EmbedderVariant", "LocalEmbedder", "bundled_minilm_path",
           "shared_embedder"]
