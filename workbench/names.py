"""The one way to write a head's name and a hook's name.

A head is ``L{layer}H{head}`` (zero-based, layer first) in every table and figure;
hook names follow TransformerLens (``blocks.{l}.attn.hook_z``), built by ``act_name``
the way TransformerLens's ``get_act_name`` builds them, so no module spells either inline.
"""
from __future__ import annotations

import re

from .errors import InputError

_HEAD = re.compile(r"^L(\d+)H(\d+)$")

# short names -> TransformerLens's (``get_act_name``'s aliases)
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_ATTN = frozenset({"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"})
_MLP = frozenset({"pre", "mid", "post", "pre_linear"})
_BLOCK = frozenset({"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn_in", "mlp_in",
                    "q_input", "k_input", "v_input"})
_MODEL = frozenset({"embed", "pos_embed"})


def head_name(layer: int, head: int) -> str:
    """``L{layer}H{head}``: the name of a head in every table and figure."""
    return f"L{int(layer)}H{int(head)}"


def parse_head(name: str) -> tuple[int, int]:
    """``"L3H5"`` -> ``(3, 5)``; anything else is one ``InputError`` line."""
    match = _HEAD.match(name.strip()) if isinstance(name, str) else None
    if match is None:
        raise InputError(f"'{name}' is not a head name; write heads as L<layer>H<head>, e.g. L3H5")
    return int(match.group(1)), int(match.group(2))


def act_name(name: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of activation ``name`` at ``layer``: ``act_name("z", 3)``
    is ``blocks.3.attn.hook_z``, ``act_name("resid_pre", 0)`` is ``blocks.0.hook_resid_pre``,
    ``act_name("pattern", 1)`` (or ``"attn"``) is ``blocks.1.attn.hook_pattern``,
    ``act_name("embed")`` is ``hook_embed``. An unknown name is one ``InputError`` line."""
    name = _ALIASES.get(name, name)
    if name in _MODEL:
        return f"hook_{name}"
    if layer is None:
        raise InputError(f"activation '{name}' belongs to a layer; give act_name a layer")
    if name in _ATTN:
        return f"blocks.{int(layer)}.attn.hook_{name}"
    if name in _MLP:
        return f"blocks.{int(layer)}.mlp.hook_{name}"
    if name in _BLOCK:
        return f"blocks.{int(layer)}.hook_{name}"
    raise InputError(f"unknown activation '{name}'; known: {', '.join(sorted(_ATTN | _MLP | _BLOCK | _MODEL))}")
