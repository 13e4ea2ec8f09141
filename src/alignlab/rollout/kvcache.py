"""The decode loop's KV cache: one pre-allocated buffer per layer that rows leave and join.

Layout: keys/values of every live row share one column axis, right-aligned: column `length - 1` is every
row's newest token, and a row whose history is shorter than the cache has masked (zero) columns on its left.
That is what lets the loop in rollout/engine.py

- write one column per decode step into a buffer reserved for the whole generation (`reserve`: prompt
  width + max_new_tokens), instead of `torch.cat` of the whole cache in every layer at every step
  (transformers' DynamicLayer);
- drop finished rows and the leading columns no remaining row attends to (`select`);
- repeat a prompt's prefill rows for its n samples (`repeat_rows`, prefix sharing);
- append the prefilled rows of prompts that join while others are still decoding (`append_rows`,
  `append_kv`; continuous batching in generate() and in the serving scheduler, rollout/scheduler.py): the
  newcomers' columns are right-aligned to the current length, the gap masked.

Models with layers that are not plain full attention (sliding windows, linear attention, ...) keep
transformers' own DynamicCache; the engine then batches statically (a new batch once the last one ends).
"""

from __future__ import annotations

from typing import Any


def _growing_layer_cls():
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer whose keys/values are views of a reserved buffer (doubling if ever full)."""

        reserve = 0
        store_dtype = None  # keys/values kept in this dtype (None: as computed); see new_cache

        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self.length = 0
            self.kbuf = self.vbuf = None

        def _alloc(self, like, rows: int, cap: int):
            return like.new_zeros(rows, like.shape[1], cap, like.shape[-1], dtype=self.store_dtype or like.dtype)

        def _view(self) -> None:
            self.keys = self.kbuf[..., :self.length, :]
            self.values = self.vbuf[..., :self.length, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            if self.kbuf is None or self.length + new > self.kbuf.shape[-2]:
                cap = max(2 * (self.length + new), 16, self.reserve if self.kbuf is None else 0)
                kb, vb = self._alloc(key_states, key_states.shape[0], cap), self._alloc(value_states,
                                                                                        key_states.shape[0], cap)
                if self.length:
                    kb[..., :self.length, :] = self.kbuf[..., :self.length, :]
                    vb[..., :self.length, :] = self.vbuf[..., :self.length, :]
                self.kbuf, self.vbuf = kb, vb
            self.kbuf[..., self.length:self.length + new, :] = key_states
            self.vbuf[..., self.length:self.length + new, :] = value_states
            self.length += new
            self._view()
            return self.keys, self.values

        def select(self, rows: torch.Tensor, drop_left: int) -> None:
            """Keep `rows` (in that order); drop the first `drop_left` columns (padding for every kept row)."""
            self.kbuf = self.kbuf[rows, :, drop_left:]
            self.vbuf = self.vbuf[rows, :, drop_left:]
            self.length -= drop_left
            self._view()

        def repeat_rows(self, n: int) -> None:
            self.kbuf = self.kbuf.repeat_interleave(n, dim=0)
            self.vbuf = self.vbuf.repeat_interleave(n, dim=0)
            self._view()

        def append_rows(self, other: GrowingLayer, spare: int) -> int:
            """Append `other`'s rows below ours (see append_kv); returns the columns added on our left."""
            return self.append_kv(other.keys, other.values, spare)

        def append_kv(self, keys, values, spare: int) -> int:
            """Append rows whose cache is `keys`/`values` [b, H, L, D] below ours, both right-aligned to the
            longer of the two lengths, with `spare` free columns after it (an empty layer just takes them).
            Returns how many columns were added on our left (our rows' mask must grow by as many masked columns)."""
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            width, new = max(self.length, keys.shape[-2]), keys.shape[-2]
            old = self.kbuf.shape[0] if self.kbuf is not None else 0
            cap = max(width + spare, self.kbuf.shape[-2] if old else 0)
            kb, vb = self._alloc(keys, old + keys.shape[0], cap), self._alloc(values, old + keys.shape[0], cap)
            for dst, mine, theirs in ((kb, self.kbuf, keys), (vb, self.vbuf, values)):
                if old:
                    dst[:old, :, width - self.length:width] = mine[..., :self.length, :]
                dst[old:, :, width - new:width] = theirs
            grown = width - self.length if old else 0
            self.kbuf, self.vbuf, self.length = kb, vb, width
            self._view()
            return grown

    return GrowingLayer


_LAYER = None


def full_attention(model: Any) -> bool:
    """Whether every decoder layer is plain full attention (what GrowingLayer caches)."""
    text_cfg = model.config.get_text_config(decoder=True)
    types = getattr(text_cfg, "layer_types", None) or ["full_attention"] * text_cfg.num_hidden_layers
    return all(t == "full_attention" for t in types)


def new_cache(model: Any, reserve: int = 0, dtype: Any = None):
    """(cache, growing): our growing cache when every layer is plain full attention, reserving `reserve`
    columns at the first write and storing keys/values in `dtype` (None: the dtype they are computed in);
    else (transformers' DynamicCache, False)."""
    from transformers.cache_utils import Cache, DynamicCache

    global _LAYER
    if full_attention(model):
        _LAYER = _LAYER or _growing_layer_cls()
        layers = [_LAYER() for _ in range(model.config.get_text_config(decoder=True).num_hidden_layers)]
        for layer in layers:
            layer.reserve, layer.store_dtype = reserve, dtype
        return Cache(layers=layers), True
    return DynamicCache(config=model.config), False
