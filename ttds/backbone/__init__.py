"""The causal language model: loading, semantic-ID tokens, LoRA, collation, loss and adapter checkpoints."""

from ttds.backbone.checkpoint import LoadedAdapter, load_adapter_checkpoint, save_adapter_checkpoint
from ttds.backbone.collate import GenerationCollator, PromptCollator, position_ids_from_mask
from ttds.backbone.config import BackboneConfig, LoraSettings, ScratchLlamaSettings, backbone_config_from_dict
from ttds.backbone.lm import load_backbone
from ttds.backbone.lora import apply_lora
from ttds.backbone.loss import causal_lm_loss
from ttds.backbone.tokens import add_id_tokens, check_single_id_tokens, id_tokens_to_text

__all__ = [
    "BackboneConfig",
    "GenerationCollator",
    "LoadedAdapter",
    "LoraSettings",
    "PromptCollator",
    "ScratchLlamaSettings",
    "add_id_tokens",
    "apply_lora",
    "backbone_config_from_dict",
    "causal_lm_loss",
    "check_single_id_tokens",
    "id_tokens_to_text",
    "load_adapter_checkpoint",
    "load_backbone",
    "position_ids_from_mask",
    "save_adapter_checkpoint",
]
