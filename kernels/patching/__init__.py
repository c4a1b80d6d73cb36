"""GPU kernels beside their PyTorch references (same signatures); ``workbench.kernels.patching.dispatch`` picks one.

- ``patch_mix.py``: Triton kernels for batched activation patching (fused masked mix of
  clean/corrupt head outputs with the output projection; masked edge sum).
- ``reference.py``: the PyTorch references (the CPU path, and what the tests compare against).
"""
