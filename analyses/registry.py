"""The built-in analyses: one line per analysis package, each exporting ``SPEC`` (or
``SPECS``). The core finds this list through the ``workbench.analyses`` entry point in
``pyproject.toml`` and never imports ``analyses/`` itself. Adding an analysis is one
folder plus one line here."""

PACKAGES = [
    "workbench.analyses.ablation",
    "workbench.analyses.circuits",
    "workbench.analyses.icl",
    "workbench.analyses.lrp",
    "workbench.analyses.vision_heads",
    "workbench.analyses.induction",
    "workbench.analyses.retrieval",
    "workbench.analyses.sinks",
    "workbench.analyses.qk",
    "workbench.analyses.atlas",
]
