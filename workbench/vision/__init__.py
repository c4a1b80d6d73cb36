"""Vision models and images: EfficientNet-Lite0 (ImageNet) and the photographs that ship with
scikit-image / scikit-learn. Used by the LRP saliency analysis and as a frozen vision encoder."""
from .efficientnet import EfficientNetLite0, load_efficientnet_lite0, weights_path
from .images import (
    PHOTOS,
    SHIPPED,
    imagenet_class_names,
    load_image,
    preprocess,
    read_image_file,
    shipped_image,
    top_classes,
)

__all__ = [
    "EfficientNetLite0", "load_efficientnet_lite0", "weights_path", "PHOTOS", "SHIPPED",
    "imagenet_class_names", "load_image", "preprocess", "read_image_file", "shipped_image", "top_classes",
]
