"""The GPU kernels, imported as ``workbench.kernels.<name>``; their code lives in the
checkout's top-level ``kernels/`` folder (``pyproject.toml`` maps ``kernels/<name>`` here).

One import root: a top-level ``kernels`` package would shadow PyPI's ``kernels``, which
transformers imports (issue 23)."""
