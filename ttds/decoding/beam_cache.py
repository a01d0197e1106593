"""Key/value caches for beam search: preallocated per-beam buffers for plain DynamicCaches, a generic reorder otherwise.

With a plain transformers DynamicCache, the keys and values of all beams live in buffers preallocated for the
prompt and every step (``_BeamLayer``), and a reorder moves only the generated positions. Other caches are
reordered whole.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # releases that store the cache as per-layer lists; those take the generic reorder
    DynamicCache = DynamicLayer = None


def _fan_out_cache(cache: Any, rows: Tensor, beam_width: int, room: int) -> Any:
    """Give every beam a copy of its user's prompt cache at the first selection, where each user has one row.

    A plain DynamicCache moves into _BeamLayer buffers with ``room`` free positions for the tokens that later
    steps feed back. Beam b of user u copies row u, because at this step that is what ``rows`` selects.
    Any other cache is reordered by ``rows``.
    """
    if not _is_plain_dynamic_cache(cache):
        return _reorder_cache(cache, rows)
    cache.layers[:] = [_BeamLayer(layer, beam_width, room) for layer in cache.layers]
    return cache


def _reorder_cache(cache: Any, rows: Tensor) -> Any:
    """Select cache rows for the new beams; ``rows`` may repeat rows and must keep every beam with its own user."""
    if _holds_beam_buffers(cache):
        for layer in cache.layers:
            layer.reorder_generated(rows)
        return cache
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(rows)  # other transformers Cache objects, reordered in place
        return cache
    if isinstance(cache, tuple):
        # Legacy tuple cache of older transformers releases: per layer (key, value, ...) with batch first.
        return tuple(tuple(tensor.index_select(0, rows) for tensor in layer) for layer in cache)
    raise TypeError(f"cannot reorder a key/value cache of type {type(cache).__name__}; use a transformers Cache or a tuple of tensors.")


def _is_plain_dynamic_cache(cache: Any) -> bool:
    """Return True for a DynamicCache whose every layer is a full-attention DynamicLayer with 4-D keys and values.

    Sliding-window, quantized, offloaded and encoder-decoder caches, and transformers releases without
    per-layer cache objects, take the generic reorder instead.
    """
    if DynamicCache is None or type(cache) is not DynamicCache or getattr(cache, "offloading", False) or not cache.layers:
        return False
    return all(
        type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4 and layer.values.dim() == 4
        for layer in cache.layers
    )


def _holds_beam_buffers(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    if _BeamLayer is None or not isinstance(layers, list) or not layers:
        return False
    return all(isinstance(layer, _BeamLayer) for layer in layers)


if DynamicLayer is not None:

    class _BeamLayer(DynamicLayer):
        """Keys and values of one attention layer, for every beam, in buffers that also hold the steps still to come.

        The beams of a user share its prompt, so a reorder moves only the generated positions, in place, and a
        step writes its one position into the buffer instead of concatenating the whole cache. ``keys`` and
        ``values`` are views of the filled part, (B * W, heads, length, head_dim).
        """

        def __init__(self, prompt: DynamicLayer, beam_width: int, room: int) -> None:
            super().__init__()
            keys, values = prompt.keys, prompt.values  # (B, heads, T, head_dim), one row per user
            batch_size, _, self.prompt_length, _ = keys.shape
            self.length = self.prompt_length
            self.key_buffer = keys.new_empty(batch_size * beam_width, keys.shape[1], self.length + room, keys.shape[3])
            self.value_buffer = values.new_empty(batch_size * beam_width, values.shape[1], self.length + room, values.shape[3])

            # One broadcast copy per tensor: viewed as (B, W, heads, positions, head_dim), every beam gets its user's row.
            for buffer, prompt_states in ((self.key_buffer, keys), (self.value_buffer, values)):
                by_user = buffer.view(batch_size, beam_width, *buffer.shape[1:])
                by_user[:, :, :, : self.length] = prompt_states[:, None]
            self.device = keys.device
            self.is_initialized = True
            self._expose_filled()

        def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
            end = self.length + key_states.shape[2]
            if end > self.key_buffer.shape[2]:
                raise ValueError(
                    f"beam cache overflow: {self.key_buffer.shape[2]} positions were preallocated, but fed-back token "
                    f"{end - self.prompt_length} needs position {end - 1}; preallocate room for every token fed back."
                )
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self._expose_filled()
            return self.keys, self.values

        def reorder_generated(self, rows: Tensor) -> None:
            """Move the generated positions to the new beams; ``rows`` must keep every beam with its own user."""
            if self.length > self.prompt_length:
                generated = slice(self.prompt_length, self.length)
                self.key_buffer[:, :, generated] = self.key_buffer[:, :, generated].index_select(0, rows)
                self.value_buffer[:, :, generated] = self.value_buffer[:, :, generated].index_select(0, rows)

        def _expose_filled(self) -> None:
            self.keys = self.key_buffer[:, :, : self.length]
            self.values = self.value_buffer[:, :, : self.length]

else:
    _BeamLayer = None
