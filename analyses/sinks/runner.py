"""Last-token logits of left-padded prompts, recomputing only the layers a calibration can
change: one base forward keeps the residual stream into the layers in ``keep``, and a
calibration whose first calibrated layer is ``l`` runs the model's own decoder layers from
the latest kept layer at or below ``l`` to the end (the workbench hook points fire inside them, so the same
``blocks.{l}.attn.hook_pattern`` patches apply). Layers below ``l`` are untouched by the
calibration, so this equals a full forward with the same patches (tested)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch

from workbench.generation import last_token_logits
from workbench.names import act_name
from workbench.patching.suffix import additive_mask


class LayerRunner:
    """One batch of left-padded prompts (``ids``, ``mask`` [batch pos]) and its base run."""

    def __init__(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, keep: Iterable[int] = ()):
        self.model, self.ids, self.mask = model, ids, mask
        self.adapter = model.adapter
        self.n_layers = model.shape.n_layers
        self.keep = sorted({int(l) for l in keep if 0 <= int(l) < self.n_layers})
        names = [act_name("resid_pre", l) for l in self.keep]
        self.base_logits, store = last_token_logits(model, ids, mask, read=names)
        self.resid_pre = {l: store[act_name("resid_pre", l)] for l in self.keep}
        self._mask_add: torch.Tensor | None = None
        self._rotary: Any = None

    def logits(self, patches: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> torch.Tensor:
        """[batch vocab] last-token logits with ``patches`` on ``blocks.{l}.attn.hook_pattern``
        (or other hook points of layers at or after the first patched one)."""
        if not patches:
            return self.base_logits
        first = min(int(name.split(".")[1]) for name in patches)
        usable = [l for l in self.keep if l <= first]
        if not usable:  # nothing kept that early: a full forward
            return last_token_logits(self.model, self.ids, self.mask, patches)[0]
        start = usable[-1]
        a, hf = self.adapter, self.model.hf
        x = self.resid_pre[start]
        if self._mask_add is None:  # the same for every start layer
            self._mask_add = additive_mask(self.mask, x.dtype)
            positions = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                self._rotary = a.rotary_cos_sin(hf, x, positions)
        handles = []
        for name, fn in patches.items():
            handles.append(self.model.hook_points[name].register_forward_hook(lambda m, i, o, fn=fn: fn(o)))
        try:
            with torch.no_grad():
                blocks = a.layers(hf)
                for l in range(start, self.n_layers):
                    x = a.call_layer(blocks[l], x, self._mask_add, self._rotary)
                return a.unembed(hf)(a.final_norm(hf)(x[:, -1]))
        finally:
            for h in handles:
                h.remove()
