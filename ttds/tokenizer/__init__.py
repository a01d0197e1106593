"""Semantic ID generator: residual quantizer, dual-modality VAE towers, ID tables and their diagnostics."""

from ttds.tokenizer.id_table import SemanticIdTable
from ttds.tokenizer.quantizer import QuantizerConfig, QuantizerOutput, ResidualQuantizer
from ttds.tokenizer.towers import DualModalityVAE, TowerConfig, TowerOutput, tower_config_from_dict

__all__ = [
    "DualModalityVAE",
    "QuantizerConfig",
    "QuantizerOutput",
    "ResidualQuantizer",
    "SemanticIdTable",
    "TowerConfig",
    "TowerOutput",
    "tower_config_from_dict",
]
