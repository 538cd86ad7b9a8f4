"""kenner: classify photos of specialist collections with frozen foundation-model embeddings."""

__version__ = "0.1.0"
