"""Token and head relevance on the language model: AttnLRP (lxt's rules), gradient x input and
attention rollout, for one explained scalar per prompt (a logit or a logit difference).

AttnLRP (Achtibat et al., ICML 2024) in lxt's Gradient*Input form: with its rules in place,
``x * d(target)/dx`` at any layer is that layer's relevance. The rules (lxt 2.1,
``lxt/efficient/patches.py``):

* RMSNorm / LayerNorm: identity rule (the normaliser is a constant in the backward pass);
* gated MLP: identity rule on the activation, uniform rule (relevance halved) on the product;
* attention: uniform rule on the two matmuls (q and k relevance / 4, v / 2); the softmax is
  explained by its own Gradient*Input (the paper's softmax rule).

lxt applies these by replacing class ``forward``s process-wide, which would change the gradients
of every other analysis running beside this one. Here they are applied per instance on a private
deep copy of the Hugging Face module (one per loaded model, kept while the model lives), whose
attention runs under its own implementation name ``workbench_attnlrp``: the workbench attention
(hook points included) with lxt's attention wrapper. The shared model is never touched.

Head relevance: relevance at ``blocks.{l}.attn.hook_z`` ([batch pos head d_head]) summed over
positions and d_head: ``[layer head]``. Because W_O has no bias, the heads of a layer add up to
the relevance of that layer's attention output.

Conservation: with the explained scalar seeded as gradient 1, the token relevances sum to the
scalar up to what the softmax rule does not conserve (its bias term keeps a share for itself).
Two numbers, not to be confused: ``conservation_error`` is an accounting identity,
``|sum(R) + absorbed - target| / |target|`` with ``absorbed`` measured at the softmax hooks and
added back (it checks the bookkeeping, ~1e-6); ``token_conservation_error`` is conservation
proper, ``|sum(R) - target| / |target|``, the tokens alone, and equals the absorbed share's size.
"""
from __future__ import annotations

import types
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from workbench.cache import Tokens, forward, run_with_cache
from workbench.errors import InputError
from workbench.hooks import unhooked_copy
from workbench.names import act_name

from workbench.analyses.lrp.imports import import_lxt

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from workbench.models import Model

ATTNLRP_IMPL = "workbench_attnlrp"
TargetFn = Callable[[torch.Tensor], torch.Tensor]  # [vocab] logits at the last position -> scalar

_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, PreTrainedModel]" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------- the LRP copy
def _attnlrp_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """The workbench attention under lxt's uniform rule for the q.k and pattern.v matmuls."""
    from workbench.hooks import workbench_attention

    rules, _ = import_lxt()
    query = rules.divide_gradient(query, 4)
    key = rules.divide_gradient(key, 4)
    value = rules.divide_gradient(value, 2)
    kwargs["dropout"] = 0.0
    return workbench_attention(module, query, key, value, attention_mask, *args, **kwargs)


def _register_impl() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTNLRP_IMPL, _attnlrp_attention)
    AttentionMaskInterface.register(ATTNLRP_IMPL, eager_mask)


def _gpt2_mlp_forward(self, hidden_states):
    """lxt's GPT-2 MLP rule (identity rule on the activation), per instance."""
    rules, _ = import_lxt()
    h = self.c_fc(hidden_states)
    h = rules.identity_rule_implicit(self.act, h)
    return self.c_proj(h)


def _bind_forward(module: torch.nn.Module, forward: Callable[..., Any]) -> None:
    """Replace ``module``'s forward by ``forward`` bound to it: this instance only, not its class."""
    module.forward = types.MethodType(forward, module)


def _apply_rules(hf: torch.nn.Module) -> int:
    """Bind lxt's rule forwards to the norm and MLP instances of ``hf``; returns how many."""
    _, patches = import_lxt()
    n = 0
    for module in hf.modules():
        cls = type(module).__name__
        if cls.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            _bind_forward(module, patches.rms_norm_forward)
        elif isinstance(module, torch.nn.LayerNorm):
            _bind_forward(module, patches.layer_norm_forward)
        elif all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            _bind_forward(module, patches.gated_mlp_forward)
        elif cls == "GPT2MLP":
            _bind_forward(module, _gpt2_mlp_forward)
        elif isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        else:
            continue
        n += 1
    return n


def attnlrp_model(model: Model) -> PreTrainedModel:
    """The private AttnLRP copy of ``model.hf`` (built once per model, ~1 s and one more copy of
    the weights in memory). Llama-family and GPT-2 models are supported."""
    if model.adapter.name not in ("llama", "qwen2", "gpt2"):  # the LRP rules cover these families' modules
        raise InputError(f"AttnLRP supports Llama-family and GPT-2 models; '{model.name}' is {model.adapter.name}")
    lrp = _COPIES.get(model.hf)
    if lrp is None:
        from transformers import PreTrainedModel

        _register_impl()
        copied = unhooked_copy(model.hf)
        # a deep copy of a Hugging Face model (the Llama, Qwen2 and GPT-2 families checked above) is one
        assert isinstance(copied, PreTrainedModel), f"model.hf is a {type(copied).__name__}"
        lrp = copied
        lrp.config._attn_implementation = ATTNLRP_IMPL
        if hasattr(lrp, "set_attn_implementation"):
            lrp.set_attn_implementation(ATTNLRP_IMPL)
        _apply_rules(lrp)
        lrp.eval()
        for p in lrp.parameters():
            p.requires_grad_(False)
        _COPIES[model.hf] = lrp
    return lrp


def _attention_modules(hf: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in hf.modules() if hasattr(m, "wb_hooks") and hasattr(m.wb_hooks, "hook_z")]


# ---------------------------------------------------------------------------- explanations
@dataclass
class Explanation:
    """One prompt's explanation: token relevance [pos], head relevance [layer head], the explained
    value, and the conservation check. For AttnLRP, ``softmax_absorbed`` is the relevance the
    softmax rule keeps for itself (its bias term, by design of the rule: the paper's Eq. 13), so
    ``sum(relevance) + softmax_absorbed == target_value`` up to float error
    (``conservation_error``); ``token_conservation_error`` compares the tokens alone."""

    relevance: torch.Tensor
    head_relevance: torch.Tensor | None
    target_value: float
    conservation_error: float
    softmax_absorbed: float = 0.0
    token_conservation_error: float = 0.0


def attnlrp(model: Model, ids: torch.Tensor, target: TargetFn) -> Explanation:
    """AttnLRP relevance of every token of ``ids`` ([pos], one prompt, no padding) for
    ``target(logits at the last position)``, and of every head (relevance at hook_z)."""
    lrp = attnlrp_model(model)
    ids = ids.reshape(1, -1).to(model.device)
    store: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for layer, attn in enumerate(_attention_modules(lrp)):
        for short in ("hook_z", "hook_attn_scores", "hook_pattern"):
            def keep(m, i, o, key=(short, layer)):
                o.retain_grad()
                store[key] = o
            handles.append(getattr(attn.wb_hooks, short).register_forward_hook(keep))
    try:
        with torch.enable_grad():
            emb = lrp.get_input_embeddings()(ids).detach().requires_grad_(True)
            out = lrp(inputs_embeds=emb, attention_mask=torch.ones_like(ids), use_cache=False)
            value = target(out.logits[0, -1].float())
            value.backward()
    finally:
        for h in handles:
            h.remove()
    relevance = (emb * emb.grad).sum(-1)[0].detach().float()
    layers = sorted(l for kind, l in store if kind == "hook_z")
    heads = torch.stack([_relevance(store["hook_z", l]).sum((0, 1, 3)) for l in layers]).float()
    # lxt divides the q, k gradients by 4 and v by 2 *below* the softmax, so gradient x input at
    # the pattern and at the scores is twice their relevance under the uniform rule.
    absorbed = sum(
        float(_relevance(store["hook_pattern", l]).sum() - _safe_relevance(store["hook_attn_scores", l]).sum()) / 2
        for l in layers
    )
    v = float(value.detach())
    total = float(relevance.sum())
    return Explanation(relevance, heads, v, _conservation(total + absorbed, v), absorbed, _conservation(total, v))


def _grad(act: torch.Tensor) -> torch.Tensor:
    """The gradient a hooked activation retained (``retain_grad`` in ``attnlrp``'s forward hook)."""
    grad = act.grad
    assert grad is not None, "an activation kept for relevance retains its gradient, and the backward pass reaches it"
    return grad


def _relevance(act: torch.Tensor) -> torch.Tensor:
    return (act * _grad(act)).detach()


def _safe_relevance(scores: torch.Tensor) -> torch.Tensor:
    """Gradient x input at the masked scores: masked entries (very negative, zero gradient) give 0."""
    grad = _grad(scores)
    return torch.where(grad == 0, torch.zeros_like(grad), scores * grad).detach()


def _conservation(total: float, value: float) -> float:
    return abs(total - value) / max(abs(value), 1e-6)


def gradient_x_input(model: Model, ids: torch.Tensor, target: TargetFn) -> Explanation:
    """Plain gradient times input at the token embeddings (``hook_embed``), through the caching
    layer on the shared model; head relevance is gradient x input at ``hook_z``."""
    ids = ids.reshape(1, -1).to(model.device)
    held: list[torch.Tensor] = []

    def leaf(act: torch.Tensor) -> torch.Tensor:
        e = act.detach().requires_grad_(True)
        held.append(e)
        return e

    names = [act_name("z", l) for l in range(model.shape.n_layers)]
    logits, store = forward(model, Tokens(ids, torch.ones_like(ids)), names, {"hook_embed": leaf}, grad=True)
    value = target(logits[0, -1].float())
    zs = [store[n] for n in names]
    grads = torch.autograd.grad(value, [held[0], *zs], allow_unused=True)
    emb_grad, z_grads = grads[0], grads[1:]
    relevance = (held[0] * emb_grad).sum(-1)[0].detach().float()
    heads = torch.stack([
        (z * g).sum((0, 1, 3)) if g is not None else torch.zeros(model.shape.n_heads, device=z.device)
        for z, g in zip(zs, z_grads)
    ]).detach().float()
    v = float(value.detach())
    c = _conservation(float(relevance.sum()), v)
    return Explanation(relevance, heads, v, c, 0.0, c)


def attention_rollout(model: Model, ids: torch.Tensor, residual_weight: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) from the last position: per layer the head-mean
    pattern mixed with the identity for the residual stream, rows renormalised, multiplied
    through the layers. Returns [pos], non-negative, summing to 1 (no target: rollout is
    class-agnostic)."""
    ids = ids.reshape(1, -1).to(model.device)
    names = [act_name("pattern", l) for l in range(model.shape.n_layers)]
    _, cache = run_with_cache(model, Tokens(ids, torch.ones_like(ids)), names, return_logits=False)
    n = ids.shape[1]
    eye = torch.eye(n, device=ids.device)
    rollout = eye.clone()
    for name in names:
        a = cache[name][0].float().mean(0)  # [q k]
        a = residual_weight * eye + (1 - residual_weight) * a
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    return rollout[-1]


# ---------------------------------------------------------------------------- faithfulness
def deletion_orders(relevance: torch.Tensor) -> list[int]:
    """Positions to delete, most relevant first; the last position (where the prediction is read)
    is never deleted."""
    return torch.argsort(relevance[:-1], descending=True, stable=True).tolist()


def deletion_curves(model: Model | None, ids: torch.Tensor, orders: dict[str, list[int]], target: TargetFn,
                    max_steps: int, batch: int = 64,
                    scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """For each named order, the explained value after deleting the first k positions from the
    prompt (tokens removed, the rest shifted together), k = 0..max_steps: ``{name: [steps+1]}``.
    Identical variants (k = 0 of every order, shared prefixes) run once; all run as right-padded
    batches through the caching layer. ``scorer(tokens [B T], mask [B T]) -> [B vocab]`` logits at
    each row's last real position replaces the model (a planted function in the tests; ``model``
    may then be None)."""
    ids = ids.reshape(-1).cpu()
    pad = 0
    if model is not None and model.tokenizer.pad_token_id is not None:
        pad = model.tokenizer.pad_token_id
    if scorer is None:
        def scorer(tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            assert model is not None, "deletion_curves needs a model where no scorer is given"
            with torch.no_grad():
                logits, _ = forward(model, Tokens(tok.to(model.device), mask.to(model.device)))
            return logits[torch.arange(len(tok), device=logits.device), mask.sum(1).to(logits.device) - 1]
    index: dict[tuple[int, ...], int] = {}
    seqs: list[torch.Tensor] = []
    where: list[tuple[str, int, int]] = []
    for name, order in orders.items():
        for k in range(max_steps + 1):
            drop = frozenset(order[:k])
            keep = tuple(i for i in range(len(ids)) if i not in drop)
            if keep not in index:
                index[keep] = len(seqs)
                seqs.append(ids[list(keep)])
            where.append((name, k, index[keep]))
    values = torch.empty(len(seqs))  # cpu: a result array, filled with floats
    for start in range(0, len(seqs), batch):
        chunk = seqs[start:start + batch]
        width = max(len(v) for v in chunk)
        # cpu: padded from Python lists, moved to the model's device below
        tok = torch.full((len(chunk), width), pad, dtype=torch.long)
        # cpu: padded from Python lists, moved to the model's device below
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, seq in enumerate(chunk):
            tok[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        last = scorer(tok, mask)
        for r in range(len(chunk)):
            values[start + r] = float(target(last[r].float()))
    # cpu: result curves, filled with floats
    out: dict[str, torch.Tensor] = {name: torch.empty(max_steps + 1) for name in orders}
    for name, k, j in where:
        out[name][k] = values[j]
    return out


def aopc(curve: torch.Tensor) -> float:
    """Area over the perturbation curve (Samek et al. 2017): mean over k = 0..K of
    (f(x) - f(x with its k most relevant inputs deleted)); NaN entries (past a prompt's length)
    are left out."""
    curve = curve[~torch.isnan(curve)]
    if len(curve) == 0:
        return float("nan")
    return float((curve[0] - curve).mean())
