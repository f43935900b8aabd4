"""Shared layers: attention dispatch, positional embeddings."""
