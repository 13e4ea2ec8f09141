"""The batched KV cache of continuous batching (rollout/scheduler.py): rows join and leave between steps.

Every row is right-aligned: its newest token sits in the last column and a shorter row is padded on the
left (the attention mask hides the padding). A joining row's prefill cache goes into the last columns; when
it is wider than the batch, the batch is padded on the left instead. Keys/values live in a buffer with spare
columns, so a decode step writes one column instead of copying the whole cache (`torch.cat`) in every layer.
"""

from __future__ import annotations

from typing import Any


def batch_layer_cls():
    """A cache layer whose rows can be selected, dropped and appended between steps; keys/values live in a
    buffer with spare columns so a decode step writes one column instead of copying the cache."""
    from transformers.cache_utils import DynamicLayer

    class BatchLayer(DynamicLayer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.length, self.kbuf, self.vbuf = 0, None, None

        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self.length, self.kbuf, self.vbuf = 0, None, None

        def _view(self) -> None:
            self.keys = self.kbuf[..., :self.length, :]
            self.values = self.vbuf[..., :self.length, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            if self.kbuf is None or self.length + new > self.kbuf.shape[-2]:
                self._grow(self.length + new, template=key_states)
            self.kbuf[..., self.length:self.length + new, :] = key_states
            self.vbuf[..., self.length:self.length + new, :] = value_states
            self.length += new
            self._view()
            return self.keys, self.values

        def _grow(self, need: int, rows: int | None = None, shift: int = 0, template=None) -> None:
            src = self.kbuf if self.kbuf is not None else template
            rows = src.shape[0] if rows is None else rows
            cap = max(2 * need, 16)
            kb = src.new_zeros(rows, src.shape[1], cap, src.shape[-1])
            vb = kb.clone()
            if self.kbuf is not None and self.length:
                old = self.kbuf.shape[0]
                kb[:old, :, shift:shift + self.length] = self.kbuf[..., :self.length, :]
                vb[:old, :, shift:shift + self.length] = self.vbuf[..., :self.length, :]
            self.kbuf, self.vbuf = kb, vb

        def select(self, rows, drop_left: int) -> None:
            self.kbuf, self.vbuf = self.kbuf[rows, :, drop_left:], self.vbuf[rows, :, drop_left:]
            self.length -= drop_left
            self._view()

        def append_rows(self, keys, values) -> None:
            """Add rows whose cache is `keys`/`values` [b, H, L, D], right-aligned with the batch."""
            b, width = keys.shape[0], keys.shape[-2]
            old_rows = self.kbuf.shape[0] if self.kbuf is not None and self.length else 0
            total = max(self.length if old_rows else 0, width)
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            if not old_rows:
                self.kbuf = self.vbuf = None
                self.length = 0
            self._grow(total, rows=old_rows + b, shift=total - self.length if old_rows else 0, template=keys)
            self.kbuf[old_rows:, :, total - width:total] = keys
            self.vbuf[old_rows:, :, total - width:total] = values
            self.length = total
            self._view()

    return BatchLayer


def full_attention(model: Any) -> bool:
    """Whether every decoder layer is plain full attention (what BatchLayer caches)."""
    text_cfg = model.config.get_text_config(decoder=True)
    types = getattr(text_cfg, "layer_types", None) or ["full_attention"] * text_cfg.num_hidden_layers
    return all(t == "full_attention" for t in types)
