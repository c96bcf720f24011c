"""spatial_probing: probing classifiers on frozen embeddings for spatial relations (VSR + synthetic scenes)."""

__version__ = "0.1.0"
