"""Typed language-model settings that conf/backbone/*.yaml mirrors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ttds.data.config import build_strict

BACKBONE_KINDS = ("local-hf", "embedded-minilm", "scratch-llama")
DTYPES = ("float32", "bfloat16")


@dataclass
class LoraSettings:
    """LoRA adapter shape; the new-token rows of the embedding and output head are trained as well."""

    rank: int = 8  # LoRA rank r
    alpha: float = 16.0  # scaling numerator: the update is scaled by alpha / rank
    dropout: float = 0.05  # dropout on the LoRA input during training, in [0, 1)
    target_modules: list[str] | None = None  # module names to adapt; None picks the default for the architecture
    train_eos_row: bool = True  # also train the EOS row of the embedding and head, so the model learns to stop after an ID
    train_base: bool = False  # also train every base weight (full training), as scratch-llama needs because its weights start random

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"backbone.lora.rank={self.rank} must be at least 1.")
        if self.alpha <= 0:
            raise ValueError(f"backbone.lora.alpha={self.alpha} must be positive.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"backbone.lora.dropout={self.dropout} must be in [0, 1).")
        if self.target_modules is not None:
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError(
                    "backbone.lora.target_modules is an empty list; set module names or null for the architecture default."
                )


@dataclass
class ScratchLlamaSettings:
    """Sizes of the randomly initialised Llama used by kind=scratch-llama."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 688  # MLP width; about 8/3 of hidden_size as in Llama
    max_position_embeddings: int = 512  # maximum sequence length in tokens (rotary positions, no learned table)
    tie_word_embeddings: bool = True  # share the input embedding with the output head (halves the 30k x hidden tables)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"backbone.scratch.{name}={getattr(self, name)} must be at least 1.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"backbone.scratch.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "pick sizes where hidden_size % num_heads == 0."
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"backbone.scratch head size {self.hidden_size // self.num_heads} is odd; rotary embeddings need an even head size."
            )


@dataclass
class BackboneConfig:
    """Backbone choice: the causal LM to load, its dtype, its LoRA adapter shape and the sequence length."""

    kind: str = "embedded-minilm"
    path: str | None = None  # model folder for kind=local-hf; unused by the other kinds
    dtype: str = "float32"  # "bfloat16" applies on CUDA only; CPU always runs float32
    seed: int = 0  # seeds every random initialisation here: new-token rows, new head layers, scratch weights
    max_length: int = 512  # maximum tokens of BOS + prompt + response + EOS
    attn_implementation: str | None = None  # passed to from_pretrained (e.g. "sdpa", "eager"); None keeps the library default
    lora: LoraSettings = field(default_factory=LoraSettings)
    scratch: ScratchLlamaSettings = field(default_factory=ScratchLlamaSettings)

    def __post_init__(self) -> None:
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(f"backbone.kind={self.kind!r} is unknown; use one of {BACKBONE_KINDS}.")
        if self.kind == "local-hf" and not self.path:
            raise ValueError("backbone.kind=local-hf needs backbone.path, the folder holding config.json and the weights.")
        if self.dtype not in DTYPES:
            raise ValueError(f"backbone.dtype={self.dtype!r} is unknown; use one of {DTYPES}.")
        if self.max_length < 4:
            raise ValueError(
                f"backbone.max_length={self.max_length} is too small to hold a prompt, an ID and EOS; use at least 4."
            )
        if isinstance(self.lora, dict):
            self.lora = build_strict(LoraSettings, self.lora, "backbone.lora")
        if isinstance(self.scratch, dict):
            self.scratch = build_strict(ScratchLlamaSettings, self.scratch, "backbone.scratch")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backbone_config_from_dict(values: dict[str, Any]) -> BackboneConfig:
    """Build a BackboneConfig from a plain mapping (a resolved Hydra node), rejecting unknown keys."""
    values = {key: value for key, value in values.items() if key != "_target_"}
    return build_strict(BackboneConfig, values, "backbone")
