"""Greedy captioning with the image (rows ``:n`` of a ``PairedBatch``) and, alongside, the same
tokens without the image (rows ``n:``), so that at every decoding step each head's output can
be compared between the two branches (VHD) and, under VHR, reinforced.

Both branches are fed the tokens the image branch generates (teacher forcing), so VHD at
step t compares A(y_t | y_<t, image, text) with A(y_t | y_<t, text), the paper's definition.
Head outputs are read and changed only through the caching layer
(``workbench.cache.forward_embeds`` with patches on ``blocks.{l}.attn.hook_z``), decoding with
a key-value cache. VHR works layer by layer inside one forward pass: the patch at layer l sees
z computed after layers < l were already reinforced, selects there, and scales there; the
same heads are scaled in both branches so later layers compare like with like."""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from workbench.cache import forward_embeds
from workbench.errors import InputError
from workbench.analyses.vision_heads.vlm.heads import head_divergence, random_select, vhr_select
from workbench.analyses.vision_heads.vlm.model import PairedBatch

MODES = ("none", "vhr", "random", "fixed", "all")


@dataclass
class HeadPolicy:
    """What to do with head outputs while decoding: ``none`` (only measure VHD), ``vhr``
    (amplify the heads VHR selects at each step by ``alpha``), ``random`` (amplify as many
    random heads per layer and step), ``fixed`` (amplify the heads in ``heads``, a bool
    ``[layer head]`` mask, at every step) or ``all`` (every head alike)."""

    mode: str = "none"
    alpha: float = 1.0
    distance: str = "l2"
    seed: int = 0
    heads: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown head policy '{self.mode}'; choose one of {', '.join(MODES)}")
        if not self.alpha > 0:
            raise InputError(f"alpha must be positive, got {self.alpha}")
        if self.mode == "fixed" and (self.heads is None or self.heads.dtype != torch.bool or self.heads.ndim != 2):
            raise InputError("the 'fixed' head policy needs heads: a bool [layer head] mask")


@dataclass
class Generation:
    """Captions and, per decoding step, the head divergences and the reinforced heads.

    ``vhd`` float ``[n step layer head]``, ``selected`` bool ``[n step layer head]``, ``valid``
    bool ``[n step]`` (False after a caption ended); ``token_ids`` per caption."""

    captions: list[str]
    token_ids: list[list[int]]
    vhd: torch.Tensor
    selected: torch.Tensor
    valid: torch.Tensor
    tokens: list[list[str]] = field(default_factory=list)


def _stops(tokenizer: Any, token_id: int) -> bool:
    return token_id == tokenizer.eos_token_id or "." in tokenizer.decode([token_id]) or "\n" in tokenizer.decode([token_id])


@dataclass
class _Decoding:
    """One greedy decoding: the policy it applies, the ``hook_z`` patches (one per layer) and the
    per-step records they fill (``vhd`` and ``selected``, ``[n step layer head]``)."""

    vlm: Any
    policy: HeadPolicy
    n: int  # captions (image rows)
    paired: bool  # the image-free rows run beside them
    vhd: torch.Tensor
    selected: torch.Tensor
    generator: torch.Generator  # the random control's draws
    trace: list | None = None
    t: int = 0  # the step being decoded

    @classmethod
    def start(cls, vlm: Any, n: int, max_new_tokens: int, policy: HeadPolicy, paired: bool,
              trace: list | None) -> _Decoding:
        s = vlm.lm.shape
        # cpu: per-step records, filled by slice copies (a slice copy crosses devices)
        vhd = torch.zeros(n, max_new_tokens, s.n_layers, s.n_heads)
        # cpu: per-step records, filled by slice copies (a slice copy crosses devices)
        selected = torch.zeros(n, max_new_tokens, s.n_layers, s.n_heads, dtype=torch.bool)
        return cls(vlm, policy, n, paired, vhd, selected, torch.Generator().manual_seed(policy.seed), trace)

    @property
    def n_heads(self) -> int:
        return int(self.vhd.shape[-1])

    def patches(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """The ``hook_z`` patches: none when nothing is measured or scaled (unpaired, ``none``/``vhr``)."""
        if not (self.paired or self.policy.mode in ("fixed", "all")):
            return {}
        return {f"blocks.{l}.attn.hook_z": functools.partial(self.patch, l) for l in range(self.vhd.shape[2])}

    def pick(self, layer: int, div: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The heads scaled at ``layer`` and this step, bool ``[n head]``."""
        policy, n = self.policy, self.n
        if policy.mode == "fixed":
            assert policy.heads is not None  # HeadPolicy checks it
            return policy.heads[layer].to(device).expand(n, self.n_heads)
        if policy.mode == "all":
            return torch.ones(n, self.n_heads, dtype=torch.bool, device=device)
        assert div is not None  # generate refuses vhr and random without the image-free rows
        pick = vhr_select(div)
        if policy.mode == "random":
            pick = random_select(pick.sum(-1), self.n_heads, self.generator).to(device)  # drawn by a CPU generator
        return pick

    def patch(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """``hook_z`` at ``layer``, ``[2n q head d_head]`` (paired) or ``[n q head d_head]``: VHD
        recorded at the last position, the picked heads scaled there by alpha in both branches."""
        t, n, policy = self.t, self.n, self.policy
        div = None
        if self.paired:
            div = head_divergence(z[:n, -1], z[n:, -1], policy.distance)  # [n head]
            self.vhd[:, t, layer] = div
        if policy.mode == "none" or policy.alpha == 1.0:
            if self.trace is not None:
                self.trace.append((t, layer, z.detach().clone(), z.detach().clone(),
                                   torch.zeros(n, self.n_heads, dtype=torch.bool, device=z.device)))
            return z
        pick = self.pick(layer, div, z.device)
        self.selected[:, t, layer] = pick
        # cpu: 0-dim constants mix with a mask on any device
        scale = torch.where(pick, torch.tensor(policy.alpha), torch.tensor(1.0)).to(z.dtype)[..., None]
        out = z.clone()
        out[:n, -1] = z[:n, -1] * scale
        if self.paired:
            out[n:, -1] = z[n:, -1] * scale
        if self.trace is not None:
            self.trace.append((t, layer, z.detach().clone(), out.detach().clone(), pick.clone()))
        return out

    def run(self, embeds: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: Any,
            progress: bool) -> Generation:
        """Decode greedily from the prompt rows until every caption stopped or the steps ran out."""
        lm, n, patches = self.vlm.lm, self.n, self.patches()
        max_new_tokens = self.vhd.shape[1]
        token_ids: list[list[int]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool)  # cpu: per-row bookkeeping, read with int()
        valid = torch.zeros(n, max_new_tokens, dtype=torch.bool)  # cpu: per-row bookkeeping, read with int()
        steps = tqdm(range(max_new_tokens), desc=f"decoding ({self.policy.mode})", disable=not progress, leave=False)
        for t in steps:
            self.t = t
            logits, _, past = forward_embeds(lm, embeds, mask, patches=patches, position_ids=pos,
                                             past_key_values=past, use_cache=True)
            valid[:, t] = ~done
            nxt = logits[:n, -1].argmax(-1)
            for i in range(n):
                if not done[i]:
                    token_ids[i].append(int(nxt[i]))
                    if _stops(lm.tokenizer, int(nxt[i])):
                        done[i] = True
            if bool(done.all()):
                break
            embeds = self.vlm.token_embeds(torch.cat([nxt, nxt]) if self.paired else nxt)[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
        steps.close()
        return self.generation(token_ids, valid)

    def generation(self, token_ids: list[list[int]], valid: torch.Tensor) -> Generation:
        """The captions, with the per-step records cut to the steps any caption used."""
        used = int(valid.any(0).sum())
        tok = self.vlm.lm.tokenizer
        return Generation(
            captions=[tok.decode(ids) for ids in token_ids],
            token_ids=token_ids,
            vhd=self.vhd[:, :used],
            selected=self.selected[:, :used],
            valid=valid[:, :used],
            tokens=[[tok.decode([i]) for i in ids] for ids in token_ids],
        )


def generate(vlm: Any, batch: PairedBatch, max_new_tokens: int = 16, policy: HeadPolicy | None = None,
             paired: bool = True, progress: bool = False, trace: list | None = None, prefix: Any = None) -> Generation:
    """Greedy captions for the image rows of ``batch``; ``paired`` also runs the image-free rows
    (needed for VHD and for VHR). A caption ends at a full stop, a newline or end-of-text.
    ``trace``, a list, receives ``(step, layer, z_in, z_out, picked)`` at every patched
    ``hook_z`` (z ``[2n pos head d_head]``): what each intervention saw and wrote. ``prefix``, a
    key-value cache of every prompt position but the last (``prefill``), skips recomputing them:
    no policy changes those positions (patches act at the last position only)."""
    policy = policy or HeadPolicy()
    if policy.mode in ("vhr", "random") and not paired:
        raise InputError("VHR and its random control need the image-free branch; call generate with paired=True")
    rows = slice(None) if paired else slice(0, batch.n)
    embeds, mask, pos = batch.embeds[rows], batch.attention_mask[rows], batch.position_ids[rows]
    past = None
    if prefix is not None:
        embeds, pos, past = embeds[:, -1:], pos[:, -1:], prefix
    decoding = _Decoding.start(vlm, batch.n, max_new_tokens, policy, paired, trace)
    return decoding.run(embeds, mask, pos, past, progress)


def prefill(vlm: Any, batch: PairedBatch, paired: bool = True) -> Any:
    """The key-value cache of every prompt position but the last (None for a one-token prompt)."""
    if batch.embeds.shape[1] < 2:
        return None
    rows = slice(None) if paired else slice(0, batch.n)
    _, _, past = forward_embeds(vlm.lm, batch.embeds[rows, :-1], batch.attention_mask[rows, :-1],
                                position_ids=batch.position_ids[rows, :-1], use_cache=True)
    return past


def concat(parts: list[Generation]) -> Generation:
    """Generations of consecutive chunks as one; the per-step arrays padded to the longest."""
    steps = max(p.vhd.shape[1] for p in parts)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, 0) * (x.ndim - 2) + (0, steps - x.shape[1]))

    return Generation(
        captions=[c for p in parts for c in p.captions],
        token_ids=[c for p in parts for c in p.token_ids],
        vhd=torch.cat([pad(p.vhd) for p in parts]),
        selected=torch.cat([pad(p.selected) for p in parts]),
        valid=torch.cat([pad(p.valid) for p in parts]),
        tokens=[c for p in parts for c in p.tokens],
    )


class Captioner:
    """Captions of a fixed set of images under many head policies: the paired batches and the
    prompt's key-value cache (all positions but the last) are built once per chunk and reused by
    every policy, so each policy pays only for its decoding steps."""

    def __init__(self, vlm: Any, prompt: str, features: Any, chunk: int = 16, max_new_tokens: int = 16,
                 progress: bool = False) -> None:
        self.vlm, self.max_new_tokens, self.progress = vlm, max_new_tokens, progress
        self.batches = [vlm.paired_batch(prompt, features[s:s + chunk]) for s in range(0, len(features), chunk)]
        self.prefixes: dict[tuple[int, bool], Any] = {}

    def __call__(self, policy: HeadPolicy | None = None, paired: bool = True) -> Generation:
        parts = []
        for i, batch in enumerate(self.batches):
            key = (i, paired)
            if key not in self.prefixes:
                with torch.no_grad():
                    self.prefixes[key] = prefill(self.vlm, batch, paired)
            prefix = self.prefixes[key]
            parts.append(generate(self.vlm, batch, self.max_new_tokens, policy, paired=paired, progress=self.progress,
                                  prefix=copy.deepcopy(prefix) if prefix is not None else None))
        return concat(parts)


def generate_chunked(vlm: Any, prompt: str, features: Any, chunk: int = 16, **kwargs: Any) -> Generation:
    """``generate`` over many images in chunks (``features``: ours encoded, ``[n tokens d_vision]``,
    or the images an adapter encodes); the per-step arrays are padded to the longest."""
    return concat([generate(vlm, vlm.paired_batch(prompt, features[start:start + chunk]), **kwargs)
                   for start in range(0, len(features), chunk)])
