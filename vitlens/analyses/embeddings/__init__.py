"""Analyses of learned embeddings: position-embedding similarity and structure, patch-embedding filters.
"""
