"""The built-in analyses: one line per analysis package, each exporting ``SPEC`` (or
``SPECS``). The core finds this list through the ``workbench.analyses`` entry point in
``pyproject.toml`` and never imports ``analyses/`` itself. Adding an analysis is one
folder plus one line here."""

PACKAGES = [
    "analyses.ablation",
    "analyses.circuits",
    "analyses.icl",
    "analyses.lrp",
    "analyses.vision_heads",
    "analyses.induction",
    "analyses.retrieval",
    "analyses.sinks",
    "analyses.atlas",
]
