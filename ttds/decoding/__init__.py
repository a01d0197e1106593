"""Decoding: the catalogue prefix trie and the batched beam search that it constrains."""

from ttds.decoding.beam import BeamResult, DecodingConfig, constrained_beam_search, load_decoding_config, search_with_config
from ttds.decoding.results import history_exclusion_mask, recommendations_frame
from ttds.decoding.trie import PrefixTrie

__all__ = [
    "BeamResult",
    "DecodingConfig",
    "PrefixTrie",
    "constrained_beam_search",
    "history_exclusion_mask",
    "load_decoding_config",
    "recommendations_frame",
    "search_with_config",
]
