"""Bad input to the vision-language model gives one clear line, never a torch traceback: an
image of the wrong shape or channel count, a corrupt image file, a prompt without the image
placeholder; and the CLI fails on them before loading any model."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.errors import InputError
from workbench.analyses.vision_heads.vlm.model import prepare_images, split_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((64, 64, 2)), "1, 3 or 4 channels"),
    (np.zeros((64, 64, 5)), "1, 3 or 4 channels"),
    (np.zeros((2, 64, 64, 3)), "images must be|an image must be"),
    (np.zeros(64), "images must be"),
    (torch.zeros(1, 4, 64, 64), r"\[n 3 height width\]"),
    (torch.zeros(64, 64), r"\[n 3 height width\]"),
    (np.zeros((8, 8, 3)), "too small"),
    ([], "images must be"),
    ("chelsea", "images must be"),
])
def test_bad_image_shapes(bad, match):
    with pytest.raises(InputError, match=match):
        prepare_images(bad, 64)


def test_good_images_become_network_input():
    out = prepare_images([np.zeros((40, 50)), np.ones((64, 64, 4), dtype=np.uint8) * 255, torch.rand(3, 70, 70)], 64)
    assert out.shape == (3, 3, 64, 64)
    assert torch.allclose(out[1], torch.ones_like(out[1]))  # white, normalised (x - 0.5) / 0.5


@pytest.mark.parametrize("prompt, match", [
    ("A photo of", "has no image placeholder"),
    ("<image> and <image>", "has 2 image placeholder"),
    ("<image>", "only the image placeholder"),
])
def test_prompt_needs_one_placeholder(prompt, match):
    with pytest.raises(InputError, match=match):
        split_prompt(prompt)
    assert split_prompt("Look: <image> A photo of") == ("Look: ", " A photo of")


def test_corrupt_image_file(tmp_path):
    from workbench.vision.images import load_image

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(str(bad))


def test_cli_bad_inputs_fail_fast(tmp_path):
    """One line on stderr, exit code 2, no traceback, no run folder written."""
    from typer.testing import CliRunner

    from workbench.cli import app, register_analyses

    register_analyses()

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    cases = [
        (["--prompt", "A photo of"], "image placeholder"),
        (["--image", str(bad)], "not a readable image"),
        (["--image", str(tmp_path / "missing.png")], "does not exist"),
        (["--alphas", "two"], "--alphas"),
        (["--distance", "manhattan"], "distance"),
        (["--n-scenes", "0"], "n_scenes"),
    ]
    runner = CliRunner()
    for args, match in cases:
        res = runner.invoke(app, ["vhd", "--model", "no-such-model", "--out", str(tmp_path / "never"), *args])
        assert isinstance(res.exception, InputError), (args, res.exception)
        assert match in str(res.exception) and "\n" not in str(res.exception)
    assert not (tmp_path / "never").exists()


def test_cli_prints_one_line(tmp_path):
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "workbench"), "vhd", "--prompt", "no placeholder"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "image placeholder" in proc.stderr
    assert "Traceback" not in proc.stderr
