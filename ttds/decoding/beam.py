"""Batched beam search with a key/value cache, constrained by the catalogue trie.

Scores are sums of token log-probabilities (log-softmax over the full vocabulary, before the
constraint), with no length normalisation, so where ID lengths differ the shorter IDs are favoured. Hypotheses that reached EOS stay in the beam with a fixed
score: extending a live beam can only lower its score, so a finished hypothesis is never pushed out
by a worse one, and a search with beam width >= catalogue size ranks every ID exactly.

The key/value cache handling (preallocated per-beam buffers) lives in ``ttds.decoding.beam_cache``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ttds.data.config import build_strict
from ttds.decoding.beam_cache import _BeamLayer, _fan_out_cache, _reorder_cache  # noqa: F401 - _BeamLayer is re-exported for tests
from ttds.decoding.trie import DEAD, PrefixTrie

log = logging.getLogger(__name__)


@dataclass
class BeamResult:
    """Top-K IDs per user; slots beyond the number of IDs found hold -1, never filler."""

    items: Tensor  # (B, K) item indices, -1 for an empty slot or, unconstrained, an ID not in the catalogue
    scores: Tensor  # (B, K) sum of token log-probs, -inf for an empty slot
    sequences: Tensor  # (B, K, T) generated tokens, -1 after EOS and in empty slots


@dataclass
class DecodingConfig:
    """Beam search settings that conf/ mirrors; ``load_decoding_config`` also checks them against the trie."""

    beam_width: int = 20  # hypotheses kept per user at every step
    top_k: list[int] = field(default_factory=lambda: [1, 5, 10])  # cutoffs to report; the search returns max(top_k)
    max_new_tokens: int | None = None  # generation steps; None = longest ID plus EOS
    min_new_tokens: int = 0  # EOS suppressed before this many new tokens; only values the trie already implies are accepted
    forced_bos_token_id: int | None = None  # rejected when set: the first generated token must be a level-1 code
    forced_eos_token_id: int | None = None  # rejected when set: EOS may only follow a complete ID
    constrained: bool = True  # false only for benchmarks: the same search without the trie mask
    exclude_history: bool = False  # drop the user's history items from the results; off for the benchmark protocol

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"decoding.beam_width={self.beam_width} must be at least 1.")
        if not self.top_k or min(self.top_k) < 1:
            raise ValueError(f"decoding.top_k={self.top_k} must be a non-empty list of positive cutoffs, e.g. [1, 5, 10].")
        if max(self.top_k) > self.beam_width:
            raise ValueError(
                f"decoding.beam_width={self.beam_width} is below max(decoding.top_k)={max(self.top_k)}; "
                f"set decoding.beam_width>={max(self.top_k)}."
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"decoding.max_new_tokens={self.max_new_tokens} must be at least 1, or null for the ID length.")
        if self.min_new_tokens < 0:
            raise ValueError(f"decoding.min_new_tokens={self.min_new_tokens} is negative; use 0.")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"decoding.min_new_tokens={self.min_new_tokens} exceeds decoding.max_new_tokens={self.max_new_tokens}; lower min_new_tokens."
            )
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"decoding.{name}={getattr(self, name)} conflicts with the catalogue constraint, which alone decides "
                    "the first token (a level-1 code) and where EOS goes (after a complete ID); set it to null "
                    "and put any fixed tokens at the end of the prompt."
                )
        if self.min_new_tokens > 0 and not self.constrained:
            raise ValueError(
                f"decoding.min_new_tokens={self.min_new_tokens} is not applied by the unconstrained search; set it to 0."
            )
        if self.exclude_history and not self.constrained:
            raise ValueError("decoding.exclude_history=true needs decoding.constrained=true because it masks catalogue leaves.")

    @property
    def max_k(self) -> int:
        return max(self.top_k)

    def check_catalogue(self, trie: PrefixTrie) -> None:
        """Reject lengths that conflict with the catalogue's ID lengths (EOS included)."""
        if self.min_new_tokens > trie.min_length:
            raise ValueError(
                f"decoding.min_new_tokens={self.min_new_tokens} conflicts with the catalogue constraint: the shortest ID "
                f"ends with EOS after {trie.min_length} tokens, so it could never be generated; "
                f"set decoding.min_new_tokens<={trie.min_length} (0 leaves the length to the trie)."
            )
        if self.constrained and self.max_new_tokens is not None and self.max_new_tokens < trie.max_length:
            raise ValueError(
                f"decoding.max_new_tokens={self.max_new_tokens} is shorter than the longest catalogue ID plus EOS "
                f"({trie.max_length} tokens); set it to null or to at least {trie.max_length}."
            )


def load_decoding_config(values: dict[str, Any], trie: PrefixTrie | None = None) -> DecodingConfig:
    """Build a DecodingConfig from a plain mapping, rejecting unknown keys, and check it against ``trie`` when given."""
    values = {key: value for key, value in values.items() if key != "_target_"}
    config = build_strict(DecodingConfig, values, "decoding")
    if trie is not None:
        config.check_catalogue(trie)
    return config


def search_with_config(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, trie: PrefixTrie, config: DecodingConfig, exclude_items: Tensor | None = None
) -> BeamResult:
    """Run ``constrained_beam_search`` with the settings of ``config``, returning max(config.top_k) results per user."""
    config.check_catalogue(trie)
    if exclude_items is not None and not config.exclude_history:
        raise ValueError("exclude_items was passed but decoding.exclude_history=false; set it to true or pass no exclusions.")
    return constrained_beam_search(
        model,
        input_ids,
        attention_mask,
        trie,
        beam_width=config.beam_width,
        top_k=config.max_k,
        max_new_tokens=config.max_new_tokens,
        constrained=config.constrained,
        exclude_items=exclude_items,
    )


@dataclass
class _ForwardSpec:
    """How to call one model family: the name of its cache argument and the optional inputs it takes."""

    cache_argument: str
    takes_position_ids: bool
    takes_logits_to_keep: bool


@torch.no_grad()
def constrained_beam_search(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    trie: PrefixTrie,
    beam_width: int,
    top_k: int,
    max_new_tokens: int | None = None,
    constrained: bool = True,
    exclude_items: Tensor | None = None,
) -> BeamResult:
    """Return the ``top_k`` best catalogue IDs for each LEFT-padded prompt.

    input_ids, attention_mask: (B, T); every row must end with a real token.
    max_new_tokens: generation steps, the longest ID plus EOS by default.
    constrained=False runs the same loop without the trie mask, for benchmarks only; its IDs map to
        items where they exist in the catalogue and to -1 where they do not.
    exclude_items: (B, n_items) bool; True removes that item for that user by masking its leaf, so
        the search still looks for ``top_k`` other IDs.
    """
    batch_size = input_ids.shape[0]
    n_steps = trie.max_length if max_new_tokens is None else max_new_tokens
    _check_search_arguments(input_ids, attention_mask, trie, beam_width, top_k, n_steps, constrained, exclude_items)

    device = input_ids.device
    trie = trie.to(device)
    if exclude_items is not None:
        exclude_items = exclude_items.to(device)
    spec = _forward_spec(model)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    prompt_positions = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, T), pads get position 0
    logits, cache = _forward(model, spec, input_ids, attention_mask, prompt_positions, cache=None)

    # A reorder keeps every beam with its own user, so the prompt part of the attention mask and the
    # position of the next token are the same for all beams of a user and are built once.
    prompt_length = input_ids.shape[1]
    beam_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, n_steps - 1)], dim=1)
    beam_mask = beam_mask.repeat_interleave(beam_width, dim=0)  # (B * W, T + n_steps - 1)
    beam_positions = (prompt_positions[:, -1] + 1).repeat_interleave(beam_width)  # (B * W,)

    # The prompt pass has one row per user; the beams fan out at the first selection.
    width = 1
    scores = torch.zeros(batch_size, 1, device=device)  # (B, width)
    nodes = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B * width,)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    sequences = torch.empty(batch_size, 1, 0, dtype=torch.long, device=device)  # (B, width, steps)
    any_finished = False

    for step in range(n_steps):
        logits = logits.float()  # (B * width, V)
        if constrained:
            depth = min(step, len(trie.max_children_by_depth) - 1)
            candidate_tokens, candidate_nodes = trie.children(nodes, trie.max_children_by_depth[depth])  # (B * width, C)

            # log-softmax at the allowed tokens only: logit minus the log-normaliser over the full vocabulary.
            normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B * width, 1)
            candidate_scores = logits.gather(1, candidate_tokens.clamp(min=0)) - normaliser
            candidate_scores = candidate_scores.masked_fill(candidate_tokens < 0, float("-inf"))
            if exclude_items is not None:
                candidate_scores = _mask_excluded_leaves(candidate_scores, candidate_nodes, trie, exclude_items, width)
        else:
            candidate_scores = torch.log_softmax(logits, dim=-1)
        n_candidates = candidate_scores.shape[1]

        # A finished hypothesis has one candidate, slot 0, that keeps its score and emits nothing.
        if any_finished:
            keep = torch.full_like(candidate_scores[:1], float("-inf"))
            keep[0, 0] = 0.0
            candidate_scores = torch.where(finished[:, None], keep, candidate_scores)

        total = (scores.reshape(-1, 1) + candidate_scores).reshape(batch_size, width * n_candidates)
        n_kept = min(beam_width, width * n_candidates)
        top_scores, flat = total.topk(n_kept, dim=1)  # (B, n_kept), sorted best first
        source_beams = torch.div(flat, n_candidates, rounding_mode="floor")
        slots = flat % n_candidates
        if n_kept < beam_width:
            top_scores, source_beams, slots = _pad_beams(top_scores, source_beams, slots, beam_width)

        rows = (torch.arange(batch_size, device=device)[:, None] * width + source_beams).reshape(-1)  # (B * W,)
        slots = slots.reshape(-1)
        alive = torch.isfinite(top_scores).reshape(-1)
        was_finished = finished[rows]
        if constrained:
            tokens = candidate_tokens[rows, slots]
            stepped = candidate_nodes[rows, slots]
        else:
            tokens = slots
            stepped = trie.step(nodes[rows], tokens)

        tokens = torch.where(alive & ~was_finished, tokens, -1)
        nodes = torch.where(was_finished, nodes[rows], stepped)
        nodes = torch.where(alive, nodes, DEAD)
        finished = alive & (was_finished | (tokens == trie.eos_id))
        scores = top_scores
        sequences = torch.cat([sequences.reshape(batch_size * width, step)[rows], tokens[:, None]], dim=1)
        sequences = sequences.reshape(batch_size, beam_width, -1)
        width = beam_width

        # One device sync per step: stop once every live hypothesis has reached EOS.
        any_finished, all_done = torch.stack([finished.any(), (finished | ~alive).all()]).tolist()
        if all_done or step == n_steps - 1:
            break

        if step == 0:
            cache = _fan_out_cache(cache, rows, beam_width, room=n_steps - 1)
        else:
            cache = _reorder_cache(cache, rows)
        feed = torch.where(tokens >= 0, tokens, trie.eos_id)[:, None]  # finished and dead beams feed EOS, ignored
        mask = beam_mask[:, : prompt_length + step + 1]
        logits, cache = _forward(model, spec, feed, mask, (beam_positions + step)[:, None], cache)

    result = _rank_hypotheses(scores, nodes, finished, sequences, trie, top_k, constrained)
    if log.isEnabledFor(logging.DEBUG):  # counting empty slots costs a device sync
        log.debug("beam search: %d users, %d steps, %d of %d slots empty", batch_size, step + 1, int((result.items < 0).sum()), result.items.numel())
    return result


def _rank_hypotheses(
    scores: Tensor, nodes: Tensor, finished: Tensor, sequences: Tensor, trie: PrefixTrie, top_k: int, constrained: bool
) -> BeamResult:
    """Sort the final beams into (B, top_k) results, finished catalogue IDs first."""
    batch_size, beam_width = scores.shape
    finished = finished.reshape(batch_size, beam_width)
    items = trie.items_of(nodes).reshape(batch_size, beam_width)
    if constrained:
        # Only a hypothesis that reached EOS inside the trie is an ID; anything else is dropped.
        scores = torch.where(finished & (items >= 0), scores, float("-inf"))
    else:
        items = torch.where(finished, items, -1)

    order = scores.argsort(dim=1, descending=True, stable=True)[:, :top_k]
    scores = scores.gather(1, order)
    empty = torch.isinf(scores) & (scores < 0)
    items = torch.where(empty, -1, items.gather(1, order))
    sequences = sequences.gather(1, order[:, :, None].expand(-1, -1, sequences.shape[2]))
    sequences = torch.where(empty[:, :, None], -1, sequences)
    return BeamResult(items=items, scores=scores, sequences=sequences)


def _pad_beams(top_scores: Tensor, source_beams: Tensor, slots: Tensor, beam_width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fill up to ``beam_width`` with dead beams when fewer candidates exist (the first steps of a small trie)."""
    missing = beam_width - top_scores.shape[1]
    top_scores = torch.cat([top_scores, top_scores.new_full((top_scores.shape[0], missing), float("-inf"))], dim=1)
    source_beams = torch.cat([source_beams, source_beams.new_zeros(source_beams.shape[0], missing)], dim=1)
    slots = torch.cat([slots, slots.new_zeros(slots.shape[0], missing)], dim=1)
    return top_scores, source_beams, slots


def _mask_excluded_leaves(candidate_scores: Tensor, candidate_nodes: Tensor, trie: PrefixTrie, exclude_items: Tensor, width: int) -> Tensor:
    """Set to -inf every EOS candidate that would finish an item excluded for that row's user."""
    # NOTE: only leaves are masked, so beams can still be spent on prefixes whose every item is excluded.
    # With a beam width close to top_k, a user with many excluded items may get fewer than top_k items.
    candidate_items = trie.items_of(candidate_nodes)  # (B * width, C), -1 unless the edge ends an ID
    users = torch.arange(candidate_nodes.shape[0], device=candidate_nodes.device) // width
    excluded = exclude_items[users[:, None], candidate_items.clamp(min=0)] & (candidate_items >= 0)
    return candidate_scores.masked_fill(excluded, float("-inf"))


def _check_search_arguments(
    input_ids: Tensor,
    attention_mask: Tensor,
    trie: PrefixTrie,
    beam_width: int,
    top_k: int,
    n_steps: int,
    constrained: bool,
    exclude_items: Tensor | None,
) -> None:
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1.")
    if beam_width < top_k:
        raise ValueError(f"beam_width={beam_width} is below top_k={top_k}; set beam_width>={top_k}.")
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be (batch, length)."
        )
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids has no rows; pass at least one prompt.")
    if input_ids.shape[1] == 0 or not bool(attention_mask[:, -1].all()):
        raise ValueError("every prompt must end with a real token; pad prompts on the LEFT (tokenizer.padding_side='left').")
    if n_steps < 1:
        raise ValueError(f"max_new_tokens={n_steps} must be at least 1.")
    if constrained and n_steps < trie.max_length:
        raise ValueError(
            f"max_new_tokens={n_steps} is shorter than the longest catalogue ID plus EOS ({trie.max_length} tokens); "
            f"leave it unset or set it to at least {trie.max_length}."
        )
    if exclude_items is not None:
        expected = (input_ids.shape[0], trie.n_items)
        if tuple(exclude_items.shape) != expected or exclude_items.dtype != torch.bool:
            raise ValueError(
                f"exclude_items must be a bool tensor of shape {expected} (users, catalogue items), "
                f"got {exclude_items.dtype} {tuple(exclude_items.shape)}."
            )
        if not constrained:
            raise ValueError("exclude_items needs constrained=True because it works by masking catalogue leaves.")


def _forward_spec(model: nn.Module) -> _ForwardSpec:
    """Read the forward signature; a peft wrapper is unwrapped to the model it adapts."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(base.forward).parameters
    # transformers 5.x names the cache argument `cache` (`past_key_values` is deprecated there), and 4.x accepts only `past_key_values`.
    cache_argument = "cache" if "cache" in parameters else "past_key_values"
    return _ForwardSpec(
        cache_argument=cache_argument,
        takes_position_ids="position_ids" in parameters,
        takes_logits_to_keep="logits_to_keep" in parameters,
    )


def _forward(model: nn.Module, spec: _ForwardSpec, input_ids: Tensor, attention_mask: Tensor, positions: Tensor, cache: Any) -> tuple[Tensor, Any]:
    """Run one forward pass and return the last position's logits (N, V) and the updated cache."""
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True, spec.cache_argument: cache}
    if spec.takes_position_ids:
        # Positions follow the attention mask, so a left-padded prompt gets the positions it would have unpadded.
        inputs["position_ids"] = positions
    if spec.takes_logits_to_keep:
        inputs["logits_to_keep"] = 1
    outputs = model(**inputs)

    new_cache = getattr(outputs, "cache", None)
    if new_cache is None:
        new_cache = getattr(outputs, "past_key_values", None)
    if new_cache is None:
        raise ValueError(f"{type(model).__name__} returned no key/value cache; load it with use_cache support (config.use_cache=True).")
    return outputs.logits[:, -1, :], new_cache
