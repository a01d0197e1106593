"""Semantic inputs of the twin towers: item and user texts, their embeddings and the embedding cache."""
