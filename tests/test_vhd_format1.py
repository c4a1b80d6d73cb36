"""A VHD run saved before typed Results (format 1: every number in a ``metrics`` bag, the
tensors flat in ``arrays``, the projector record and head lists as plain dicts, no choice
record) loads into the typed ``VHDResult`` through the migration, with identical tensors and
the same summary. The folder is written here the way the format-1 writer laid it out
(result.json: format_version 1, config, metrics, meta, arrays; arrays.safetensors)."""
from __future__ import annotations

import dataclasses
import json

import torch
from safetensors.torch import save_file

from workbench.analyses.vision_heads.analysis import VHDConfig, VHDResult, run
from workbench.result_fields import plain_json
from workbench.results import load_result

SMALL = dict(n_scenes=2, n_val=2, alphas=(1.5, 2.0), head_sets=("vhr",), random_draws=1, max_new_tokens=2,
             projector_steps=1, projector_n_train=4, image_size=64, batch_size=2, top_k=3)
TENSORS = ("vhd_map", "vhd_map_val", "vhd_steps", "valid", "tvhd", "images", "selected_rate")


def _format1_folder(result: VHDResult, folder, adapter: bool = False):
    """The bag the old ``run`` built, from a typed result: old keys, dicts for records, no ``choice``."""
    metrics = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
               if f.name not in (*TENSORS, "config", "meta", "path", "metrics", "arrays", "intervals", "choice")}
    metrics = plain_json({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in metrics.items()})
    metrics["top_heads"] = [dataclasses.asdict(h) for h in result.top_heads]
    metrics["sweep"] = [dataclasses.asdict(r) for r in result.sweep]
    metrics["vhd"] = result.vhd_map.tolist()
    metrics["intervals"] = {k: iv.to_dict() for k, iv in result.intervals.items()}
    metrics["projector"] = {} if adapter else {"loss_curve": result.loss_curve, "train_seconds": 1.0, "cached": "x"}
    folder.mkdir()
    save_file({k: getattr(result, k).contiguous() for k in TENSORS}, str(folder / "arrays.safetensors"))
    doc = {"format_version": 1, "analysis": "vhd", "config": plain_json(result.config), "metrics": metrics,
           "meta": plain_json(result.meta), "arrays": sorted(TENSORS)}
    (folder / "result.json").write_text(json.dumps(doc))


def test_format1_vhd_run_loads_typed(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    result = run(tiny_llama, VHDConfig(**SMALL), progress=False)
    for adapter in (False, True):
        folder = tmp_path / f"old-{adapter}"
        _format1_folder(result, folder, adapter)
        loaded = load_result(folder)
        assert isinstance(loaded, VHDResult) and loaded.metrics == {} and loaded.arrays == {}
        for k in TENSORS:
            assert torch.equal(getattr(loaded, k), getattr(result, k)), k
        assert loaded.choice is None and loaded.sweep == result.sweep and loaded.top_heads == result.top_heads
        assert (loaded.projector is None) == adapter
        want = result.summary() | {"validation": {**result.summary()["validation"], "choice": {}}}
        assert loaded.summary() | {"run": None} == want | {"run": None}
