"""Model loading: one ``load_model`` call for the embedded model, hub models, local
folders and tiny random models, returning a ``Model`` that knows its tokenizer, its
shape and its backend. Where the weights come from is ``model_sources``; dtypes, devices
and device maps are ``model_devices``; the backends are ``workbench.backends``.

Every model gets the workbench hook points installed (``workbench.hooks``), so the
canonical TransformerLens names (``blocks.{l}.attn.hook_z`` ...) mean the same place
on every backend.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .backends import BACKENDS, backend_for
from .errors import InputError
from .model_checks import check_loaded
from .model_devices import (DEVICE_MAP_HELP, DTYPES, _check_device, _check_dtype, _dispatch, compile_wanted, main_device,
                            parse_device_map)
from .model_sources import (DEFAULT_MODEL, EMBEDDED_GGUF, EMBEDDED_WHEEL, INSTALL_EMBEDDED, MODELS, ModelSpec, _resolve,
                            available_models, check_source, embedded_gguf_path)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__all__ = ["BACKENDS", "DEFAULT_MODEL", "DEVICE_MAP_HELP", "DTYPES", "EMBEDDED_GGUF", "EMBEDDED_WHEEL", "INSTALL_EMBEDDED",
           "MODELS", "Model", "ModelShape", "ModelSpec", "available_models", "check_source", "compile_wanted",
           "embedded_gguf_path", "load_model", "main_device", "parse_device_map", "shape_of"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes every per-head analysis needs. Per-head quantities are per *query* head;
    ``n_kv_heads`` < ``n_heads`` means grouped-query attention."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    d_vocab: int


@dataclass
class Model:
    """A loaded model: the Hugging Face module, its tokenizer, the backend wrapper and its shape."""

    name: str
    hf: Any
    tokenizer: Any
    shape: ModelShape
    backend: str = "hf"
    wrapper: Any = None
    arch: str = "llama"  # the architecture family: ``adapter.name`` (see ``workbench.adapters``)
    source: str = ""
    hook_points: dict[str, Any] = field(default_factory=dict, repr=False)
    load_seconds: float = 0.0
    load_args: dict[str, Any] = field(default_factory=dict, repr=False)  # load_model keywords that load it again
    device_map: dict[str, Any] | None = None  # accelerate's map (module -> device) when split over devices
    remote: bool | str = False  # nnsight backend: True sends traces to NDIF, "local" simulates that path here
    compile: bool = False  # run the patching engine's repeated suffix forward under torch.compile (--compile)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first parameter's device, or for a model split by a device map
        the map's main device (accelerate's rule: the first device that is not cpu or disk)."""
        if self.remote is True:  # the weights are on NDIF; inputs are made here
            return torch.device("cpu")
        if self.device_map:
            return main_device(self.device_map)
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_points)

    @property
    def adapter(self) -> Any:
        """The architecture adapter (``workbench.adapters.Adapter``): where the layers, attention,
        norms and MLP are; ask it instead of testing ``arch``."""
        from .adapters import adapter_for

        return adapter_for(self.hf)

    def with_backend(self, backend: str) -> "Model":
        """The same weights behind another backend (no reload)."""
        return _attach_backend(
            Model(self.name, self.hf, self.tokenizer, self.shape, arch=self.arch, source=self.source,
                  hook_points=self.hook_points, load_seconds=self.load_seconds,
                  load_args={**self.load_args, "backend": backend} if self.load_args else {},
                  device_map=self.device_map, compile=self.compile),
            backend,
        )

    def to_tokens(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (right padding), on the model's device."""
        from .tokens import tokenize

        return tokenize(self, prompts)

    def token_id(self, text: str) -> int:
        """The id of ``text`` when it is exactly one token; otherwise a one-line error."""
        from .tokens import single_token_id

        return single_token_id(self.tokenizer, text)


def _n_ctx(cfg: Any) -> int:
    """The context length: Llama-style ``max_position_embeddings``, GPT-2's ``n_positions``, else 2048."""
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)


def shape_of(hf_model: Any) -> ModelShape:
    """Read the shape from a Hugging Face config (Llama, GPT-2, GPT-NeoX and kin)."""
    cfg = hf_model.config
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return ModelShape(
        n_layers=getattr(cfg, "num_hidden_layers", None) or cfg.n_layer,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        d_head=getattr(cfg, "head_dim", None) or d_model // n_heads,
        d_model=d_model,
        n_ctx=_n_ctx(cfg),
        d_vocab=cfg.vocab_size,
    )


def load_model(
    name: str = DEFAULT_MODEL,
    backend: str = "hf",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    remote: bool | str = False,
    offload_dir: str | os.PathLike | None = None,
    compile: bool | None = None,
) -> Model:
    """Load a model by registry name, hub id or local folder, behind one backend:
    ``hf`` (plain PyTorch hooks, fastest), ``transformer_lens`` (TransformerBridge) or
    ``nnsight`` (LanguageModel). All three expose the same canonical hook names.

    ``device_map``: split the model over devices with accelerate (``"auto"``, or an explicit
    map ``{module: device}`` as a dict, JSON text or ``module=device,...``; devices are
    ``cuda:N``, ``cpu`` or ``disk``); ``device`` is then not used. ``remote`` (nnsight backend
    only): True sends every trace to NDIF (see ``workbench.backends.nnsight``), "local" runs
    the same serialised traces here. ``compile``: the patching engine's repeated suffix forward
    runs under ``torch.compile`` (None: the ``WORKBENCH_COMPILE`` environment variable, 1 or 0)."""
    from .hooks import install_hook_points

    compile = compile_wanted(compile)
    backend_for(backend)  # an unknown name is one line before anything loads
    dtype = _check_dtype(dtype)
    device = _check_device(device)
    if remote:
        if backend != "nnsight":
            raise InputError("--remote sends nnsight traces to NDIF; add --backend nnsight")
        if device_map is not None:
            raise InputError("--remote runs the model on NDIF, where --device-map means nothing; drop one of them")
        if remote is True:
            return _load_remote(name, dtype)
    parsed_map = parse_device_map(device_map) if device_map is not None else None
    spec = _resolve(name)
    start = time.perf_counter()
    hf, tok = spec.loader(dtype)
    check_loaded(hf, tok, name)  # tokenizer within the vocabulary, finite weights
    if parsed_map is not None:
        hf, used_map = _dispatch(hf.eval(), parsed_map, dtype, offload_dir)
    else:
        hf, used_map = hf.to(device).eval(), None
    for p in hf.parameters():
        p.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    arch, hook_points = install_hook_points(hf)
    model = Model(name=name, hf=hf, tokenizer=tok, shape=shape_of(hf), arch=arch, source=spec.description,
                  hook_points=hook_points, device_map=used_map, remote=remote, compile=compile)
    model.load_args = {"name": name, "backend": backend, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                       "device_map": device_map, "remote": remote, "compile": compile}
    model = _attach_backend(model, backend)
    model.load_seconds = time.perf_counter() - start
    return model


def _load_remote(name: str, dtype: torch.dtype) -> Model:
    """A ``Model`` whose traces run on NDIF (the weights stay there; see ``backends.nnsight``)."""
    from .backends.nnsight import load_remote
    from .hooks import install_hook_points

    hub_id = MODELS[name].hub_id if name in MODELS else name
    if not hub_id or "/" not in hub_id or name.startswith(("/", ".", "~")):
        raise InputError(f"--remote runs hub models that NDIF hosts (an id like 'meta-llama/Llama-3.1-8B'); "
                         f"'{name}' is not one")
    start = time.perf_counter()
    lm, hf, tok = load_remote(hub_id, dtype)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    arch, hook_points = install_hook_points(hf)
    model = Model(name=name, hf=hf, tokenizer=tok, shape=shape_of(hf), backend="nnsight", wrapper=lm, arch=arch,
                  source=f"{hub_id} on NDIF", hook_points=hook_points, remote=True)
    model.load_args = {"name": name, "backend": "nnsight", "remote": True, "dtype": str(dtype).removeprefix("torch.")}
    model.load_seconds = time.perf_counter() - start
    return model


def _attach_backend(model: Model, backend: str) -> Model:
    """``model`` behind ``backend`` (its wrapper built once)."""
    model.backend = backend_for(backend).name
    if model.load_args:
        model.load_args["backend"] = backend
    model.wrapper = backend_for(backend).wrap(model)
    return model
