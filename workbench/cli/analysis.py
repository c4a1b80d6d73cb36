"""One command per analysis, built from its spec: the options are the Config's fields
(type, default and help from the field, so defaults live once, in the Config) plus the
common options below, defined once for every command."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
import typing
from typing import Any, List, Literal, Optional

import typer

from ..errors import InputError
from ..checks import check_run_inputs
from ..config_fields import field_shape
from ..spec import AnalysisSpec, config_fields, flag_of
from .common import JSON_OPT, finish, load, number_list, status

Device = Literal["auto", "cpu", "cuda"]
"""Where the model runs.
auto: CUDA when present, else cpu;
cpu: the CPU;
cuda: the first CUDA device (a one-line error without one)."""
DEVICES: tuple[str, ...] = typing.get_args(Device)

DType = Literal["float32", "bfloat16", "float16"]
"""The model's parameter dtype.
float32: full precision (the default, every known answer holds);
bfloat16: half the memory, float32's range;
float16: half the memory, a narrow range (CUDA)."""
DTYPES: tuple[str, ...] = typing.get_args(DType)


@dataclasses.dataclass
class Common:
    """The options every analysis command shares."""

    model: str = "smollm2-135m"
    backend: str = "hf"
    device: Device = "auto"
    dtype: DType = "float32"
    seed: int = 0
    out: Optional[Path] = None
    as_json: bool = False
    ray: Optional[str] = None
    workers: int = 2
    device_map: Optional[str] = None
    remote: bool = False
    compile: bool = False


COMMON_OPTIONS: list[tuple[str, Any, Any]] = [
    ("model", str, typer.Option("smollm2-135m", "--model", "-m", help="registry name, hub id or local folder (see `workbench models`)")),
    ("backend", str, typer.Option("hf", "--backend", help="hf | transformer_lens | nnsight")),
    ("device", str, typer.Option("auto", "--device", help="auto (CUDA when present, else cpu) | cpu | cuda")),
    ("dtype", str, typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16")),
    ("seed", int, typer.Option(0, "--seed", help="random seed (datasets, head draws, initialisation)")),
    ("out", Optional[Path], typer.Option(None, "--out", help="run folder to write (default: runs/<analysis>-<model>-<time>); a new folder or an earlier run")),
    ("as_json", bool, JSON_OPT),
    # "\\[ray]": the backslash keeps rich from reading [ray] as markup and dropping it
    ("ray", Optional[str], typer.Option(None, "--ray", help="spread the sweep over Ray: auto (a local cluster for this run) or a cluster address (needs pip install \"workbench\\[ray]\")")),
    ("workers", int, typer.Option(2, "--workers", help="Ray workers (with --ray); each loads the model once")),
    ("device_map", Optional[str], typer.Option(None, "--device-map", help="split the model over devices with accelerate: auto, or module=device,... / JSON")),
    ("remote", bool, typer.Option(False, "--remote", help="with --backend nnsight: run the traces on NDIF (needs NDIF_API_KEY)")),
    ("compile", bool, typer.Option(False, "--compile", help="run the patching sweeps' repeated suffix forward under torch.compile; pays on sweeps longer than its one-off compile (about a minute)")),
]


def _cli_parameter(f: dataclasses.Field, annotation: Any) -> tuple[inspect.Parameter, Any]:
    """The typer parameter of one Config field (from its ``FieldShape``) and a parser from
    the CLI value to the field's value."""
    shape = field_shape(f, annotation)
    default = shape.default
    flags = [flag_of(f), *f.metadata.get("aliases", ())]
    help_text = f.metadata.get("help", "")
    if shape.choices:
        help_text = f"{help_text} ({' | '.join(map(str, shape.choices))})".strip()
    if shape.kind is tuple:
        if shape.elem is str:  # repeatable option: --prompt a --prompt b
            opt = typer.Option(None, *flags, help=f"{help_text} (repeatable)".strip())
            return _param(f.name, Optional[List[str]], opt), lambda v: tuple(v) if v else default
        shown = ",".join(str(x) for x in default) if default else None
        opt = typer.Option(shown, *flags, help=f"{help_text} (comma-separated)".strip())
        # "" is refused by number_list: an empty list given is not the default
        return _param(f.name, Optional[str], opt), lambda v: number_list(v, flags[0], shape.elem or float) if v is not None else tuple(default or ())
    if shape.kind is bool:
        name = flags[0].removeprefix("--")
        opt = typer.Option(default, f"--{name}/--no-{name}", help=help_text)
        return _param(f.name, bool, opt), lambda v: v
    opt = typer.Option(default, *flags, help=help_text)
    return _param(f.name, Optional[shape.kind] if shape.optional else shape.kind, opt), lambda v: v


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def build_config(spec: AnalysisSpec, values: dict[str, Any]) -> Any:
    """The spec's Config from parsed option values, checked here, before any work, by the
    function the app and every analysis's ``run`` call too."""
    return check_run_inputs(spec, spec.config(**values))


def resolve_device(device: str) -> Device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a one-line error."""
    import torch

    if device not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)} (got '{device}')")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but this machine has no CUDA device; use --device cpu or auto")
    return "cuda" if device == "cuda" else "cpu"


def check_common(spec: AnalysisSpec, common: Common) -> None:
    if common.dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)} (got '{common.dtype}')")
    auto = common.device == "auto"
    common.device = resolve_device(common.device)
    if auto and common.device not in spec.devices:  # auto picks among the devices the analysis runs on
        common.device = resolve_device(spec.devices[0])
    if common.device not in spec.devices:
        raise InputError(f"{spec.key} runs on {', '.join(spec.devices)} only; use --device {spec.devices[0]}")
    from ..results import check_run_target

    check_run_target(common.out)
    check_scaling(spec, common)
    if spec.load_target is None and spec.needs_model is not False and not common.remote:
        from ..models import check_source

        check_source(common.model)  # a broken local model folder, before the "loading" line


def check_scaling(spec: AnalysisSpec, common: Common) -> None:
    """--ray / --workers / --device-map / --remote, before any model loads."""
    from ..parallel import ray_module, runs_on_ray

    if common.workers < 1:
        raise InputError(f"--workers must be at least 1 (got {common.workers})")
    if common.ray is not None:
        if not runs_on_ray(spec.run):
            raise InputError(f"{spec.key} does not run on Ray yet (ablation does); drop --ray")
        if common.device_map or common.remote:
            raise InputError("--ray runs the sweep on workers that each load the whole model; drop --device-map/--remote")
        ray_module()
    if common.device_map is not None:
        from ..models import parse_device_map

        parse_device_map(common.device_map)
    if common.remote:
        if common.backend != "nnsight":
            raise InputError("--remote sends nnsight traces to NDIF; add --backend nnsight")
        from ..backends.nnsight import remote_requirements

        remote_requirements()  # the key and the network, before anything loads


def load_common(common: Common) -> Any:
    """The model of --model/--backend/--device/--dtype (and --device-map/--remote when given)."""
    if not common.device_map and not common.remote:
        return load(common.model, common.backend, common.device, common.dtype, common.compile)
    from ..models import load_model

    where = f"device map {common.device_map}" if common.device_map else "NDIF (remote)"
    status(f"loading {common.model} ({common.backend}, {where}, {common.dtype}) ...")
    m = load_model(common.model, backend=common.backend, device=common.device, dtype=common.dtype,
                   device_map=common.device_map, remote=common.remote, compile=common.compile or None)
    status(f"loaded {common.model} in {m.load_seconds:.1f}s: {m.shape.n_layers} layers x {m.shape.n_heads} heads")
    return m


def run_analysis(spec: AnalysisSpec, config: Any, common: Common, progress: bool = True, model: Any = None) -> Any:
    """The one way an analysis runs, for the CLI and the app alike: what it runs on (the spec's
    ``load_target``, else ``model`` or the model of ``common``), the target's checks, the run
    (over Ray when ``common`` asks), the spec's extra files, saved into ``common.out``."""
    if spec.load_target is not None:
        target = spec.load_target(config, common)
    elif spec.wants_model(config):
        target = model if model is not None else load_common(common)
    else:
        target = None
    spec.check_target(config, target)
    from ..parallel import use

    with use(ray=common.ray, workers=common.workers):
        result = spec.run(target, config, progress=progress)
    extra_files = spec.finish(result, config, common) if spec.finish is not None else {}
    if extra_files or result.path is None:
        result.save(common.out, extra_files=extra_files)
    return result


def execute(spec: AnalysisSpec, config: Any, common: Common, progress: bool = True) -> Any:
    """``run_analysis``, then the summary on stdout (a table, or JSON with --json)."""
    result = run_analysis(spec, config, common, progress=progress)
    finish(result, common.out, common.as_json)
    return result


def register_analysis(app: typer.Typer, spec: AnalysisSpec) -> None:
    """Add ``workbench <key>`` (and its aliases, hidden) for one analysis."""
    params: list[inspect.Parameter] = []
    parsers: dict[str, Any] = {}
    has_seed = False
    for f, annotation in config_fields(spec.config):
        if f.name == "seed":
            has_seed = True
            continue
        if not f.metadata.get("cli", True) or not f.init:
            continue
        param, parse = _cli_parameter(f, annotation)
        params.append(param)
        parsers[f.name] = parse
    # a Config may take over a common option by declaring a field with its flag (the atlas's
    # repeatable --model): that field replaces the common option and fills it with its first value
    taken = {flag: f.name for f, _ in config_fields(spec.config) if f.name in parsers
             for flag in (flag_of(f), *f.metadata.get("aliases", ()))}
    common_opts = [(name, ann, opt) for name, ann, opt in COMMON_OPTIONS if not set(opt.param_decls) & set(taken)]
    takeover = {name: taken[opt.param_decls[0]] for name, _, opt in COMMON_OPTIONS if opt.param_decls[0] in taken}
    common_names = {name for name, _, _ in common_opts}
    clash = common_names & set(parsers)
    if clash:
        raise TypeError(f"{spec.config.__name__} fields {sorted(clash)} clash with the common options")
    params += [_param(name, ann, opt) for name, ann, opt in common_opts]

    def command(**kwargs: Any) -> None:
        common = Common(**{name: kwargs.pop(name) for name in common_names})
        values = {name: parsers[name](value) for name, value in kwargs.items()}
        for name, field_name in takeover.items():
            value = values[field_name]
            setattr(common, name, value[0] if isinstance(value, tuple) and value else value)
        if has_seed:
            values["seed"] = common.seed
        config = build_config(spec, values)
        check_common(spec, common)
        status(f"{spec.key}: " + ", ".join(f"{k}={v}" for k, v in values.items() if k in _changed(spec, values)))
        execute(spec, config, common)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = spec.help
    command.__name__ = spec.key
    app.command(name=spec.key, help=spec.help)(command)
    for alias in spec.aliases:
        app.command(name=alias, help=f"same as `workbench {spec.key}`", hidden=True)(command)


def _changed(spec: AnalysisSpec, values: dict[str, Any]) -> set[str]:
    """The options set away from their defaults (the status line names only these)."""
    defaults = spec.config()
    return {k for k, v in values.items() if v is not None and getattr(defaults, k, None) != v}
