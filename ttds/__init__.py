"""ttds: a twin-tower dynamic semantic-ID generative recommender."""

__version__ = "0.1.0"
