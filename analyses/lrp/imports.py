"""The one place that imports ``zennit`` and ``lxt`` for the LRP analysis, working around two
import-time problems of the installed versions without touching site-packages.

* zennit 0.5.1 runs ``from . import torchvision`` in its ``__init__``, and that module imports
  ``torchvision.models.resnet`` (for its ResNet canonizers). torchvision is not importable beside
  this torch. ``import_zennit`` registers stub modules ``torchvision``, ``torchvision.models`` and
  ``torchvision.models.resnet`` (with placeholder ``Bottleneck`` / ``BasicBlock`` classes) for the
  duration of zennit's import only, then removes them again, so nothing else in the process ever
  sees a fake torchvision. The workbench never uses zennit's torchvision canonizers.
* lxt 2.1's ``lxt.efficient`` package ``__init__`` imports its whole model-patch map, which imports
  ``transformers.modeling_attn_mask_utils`` (removed in transformers 5) and torchvision. The rules
  themselves (``lxt/efficient/rules.py``, ``lxt/efficient/patches.py``) import neither.
  ``import_lxt`` loads just those two files, by installing a bare package object for
  ``lxt.efficient`` (pointing at the real folder) while they import, then removing it. Its
  process-wide monkey patching (class-level ``forward`` replacement) is not used: the workbench
  applies lxt's forward functions per instance, on a private copy of the model.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import lru_cache
from pathlib import Path

from workbench.errors import ModelNotAvailable


class _StubModule(types.ModuleType):
    """A placeholder module registered only while zennit or lxt imports, marked so that a check
    can tell it from the real one."""

    __workbench_stub__ = True


def _stub(name: str, **attrs: object) -> types.ModuleType:
    mod = _StubModule(name)
    mod.__dict__.update(attrs)
    return mod


@lru_cache(maxsize=1)
def import_zennit() -> types.ModuleType:
    """``zennit`` with its submodules loaded (attribution, composites, rules, core, layer, types)."""
    if "zennit" in sys.modules:
        return sys.modules["zennit"]
    torchvision_ok = False
    try:
        torchvision_ok = importlib.util.find_spec("torchvision") is not None
        if torchvision_ok:
            import torchvision.models.resnet  # noqa: F401
    except Exception:  # a broken torchvision build raises anything at import
        torchvision_ok = False
    installed: list[str] = []
    saved: dict[str, types.ModuleType] = {k: sys.modules[k] for k in ("torchvision", "torchvision.models", "torchvision.models.resnet") if k in sys.modules}
    if not torchvision_ok:
        class Bottleneck:  # placeholders: zennit only subclasses-checks against them
            pass

        class BasicBlock:
            pass

        resnet = _stub("torchvision.models.resnet", Bottleneck=Bottleneck, BasicBlock=BasicBlock)
        models = _stub("torchvision.models", resnet=resnet)
        tv = _stub("torchvision", models=models)
        for mod in (tv, models, resnet):
            sys.modules[mod.__name__] = mod
            installed.append(mod.__name__)
    try:
        import zennit
        import zennit.attribution  # noqa: F401
        import zennit.composites  # noqa: F401
        import zennit.core  # noqa: F401
        import zennit.layer  # noqa: F401
        import zennit.rules  # noqa: F401
    except ImportError as exc:
        raise ModelNotAvailable(f"CNN LRP needs zennit ({exc}); run: pip install 'zennit>=0.5'") from None
    finally:
        for name in installed:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return zennit


@lru_cache(maxsize=1)
def import_lxt() -> tuple[types.ModuleType, types.ModuleType]:
    """lxt's AttnLRP rule functions: (``lxt.efficient.rules``, ``lxt.efficient.patches``)."""
    try:
        import lxt.efficient.patches as patches
        import lxt.efficient.rules as rules

        return rules, patches
    except ImportError:
        pass
    spec = importlib.util.find_spec("lxt")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable("AttnLRP needs lxt; run: pip install 'lxt>=2.0'")
    folder = Path(list(spec.submodule_search_locations)[0]) / "efficient"
    if not (folder / "rules.py").is_file() or not (folder / "patches.py").is_file():
        raise ModelNotAvailable(f"this lxt has no efficient/rules.py and patches.py ({folder}); run: pip install 'lxt>=2.0,<3'")
    import lxt

    previous = sys.modules.get("lxt.efficient")
    bare = _stub("lxt.efficient", __path__=[str(folder)], __package__="lxt.efficient")
    sys.modules["lxt.efficient"] = bare
    try:
        rules = importlib.import_module("lxt.efficient.rules")
        patches = importlib.import_module("lxt.efficient.patches")
    finally:
        if previous is not None:
            sys.modules["lxt.efficient"] = previous
        else:
            sys.modules.pop("lxt.efficient", None)
        if getattr(lxt, "efficient", None) is bare:
            delattr(lxt, "efficient")
    return rules, patches
