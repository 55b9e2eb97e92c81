"""What each public model is: kind, input size, normalisation, labels. No TensorFlow here.

The builder (``build.py``) turns a ``ModelSpec`` into a Keras model; the cache (``cache.py``)
uses the spec to name and describe what it built; the serving side reads the same facts back
from ``model.json``.
"""
from __future__ import annotations

from dataclasses import dataclass

# Bump when the builder changes what it produces (architecture, init, export): it is part of
# the cache key, so old cached builds are not reused.
BUILDER_VERSION = "1"

ONNX_OPSET = 17
INPUT_NAME = "input"
CLASSIFIER_OUTPUTS = ("probs",)
DETECTOR_OUTPUTS = ("boxes", "scores")

FLOWER_LABELS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
IMAGENET_PLACEHOLDER_LABELS = tuple(f"class_{i}" for i in range(1000))
DETECTOR_LABELS = ("object",)

# SSD detector: MobileNetV2 backbone width and the grid of each feature map (6 anchors per cell).
SSD_ALPHA = 1.0
SSD_FEATURE_SIZES = (20, 10, 5, 3, 2, 1)
SSD_ANCHORS_PER_CELL = 6
SSD_NUM_ANCHORS = sum(s * s for s in SSD_FEATURE_SIZES) * SSD_ANCHORS_PER_CELL  # 3234


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str                 # "classifier" | "detector"
    input_hw: tuple[int, int]
    normalization: str        # see normalization.NORMALIZATIONS
    labels: tuple[str, ...]
    keras_app: str | None = None   # keras.applications constructor, if any

    @property
    def output_names(self) -> tuple[str, ...]:
        return DETECTOR_OUTPUTS if self.kind == "detector" else CLASSIFIER_OUTPUTS

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def arch(self) -> dict:
        """What shapes the built network (part of the cache key)."""
        a = {"kind": self.kind, "input_hw": list(self.input_hw), "num_classes": self.num_classes,
             "keras_app": self.keras_app, "normalization": self.normalization}
        if self.kind == "detector":
            a.update(alpha=SSD_ALPHA, feature_sizes=list(SSD_FEATURE_SIZES),
                     anchors_per_cell=SSD_ANCHORS_PER_CELL)
        return a


SPECS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("resnet50", "classifier", (224, 224), "caffe", IMAGENET_PLACEHOLDER_LABELS, "ResNet50"),
    ModelSpec("mobilenetv2", "classifier", (224, 224), "tf", IMAGENET_PLACEHOLDER_LABELS, "MobileNetV2"),
    ModelSpec("inceptionv3", "classifier", (299, 299), "tf", IMAGENET_PLACEHOLDER_LABELS, "InceptionV3"),
    ModelSpec("efficientnetb0", "classifier", (224, 224), "raw", IMAGENET_PLACEHOLDER_LABELS,
              "EfficientNetB0"),
    ModelSpec("custom_cnn", "classifier", (150, 150), "unit", FLOWER_LABELS),
    ModelSpec("ssd_mobilenetv2", "detector", (320, 320), "tf", DETECTOR_LABELS),
)}

MODEL_NAMES: tuple[str, ...] = tuple(SPECS)


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}") from None
