"""``ModelInfo``: a built model as described by its ``model.json`` (no TensorFlow needed)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

META_FILE = "model.json"


@dataclass
class ModelInfo:
    name: str
    kind: str                       # "classifier" | "detector"
    directory: Path
    onnx_path: Path
    savedmodel_path: Path | None    # loadable SavedModel dir: <directory>/savedmodel/<name>/1
    input_name: str
    input_hw: tuple[int, int]
    normalization: str
    output_names: list[str]
    labels: list[str]
    num_classes: int
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> str:
        return self.meta.get("layout", "NHWC")

    @property
    def savedmodel_base_path(self) -> Path | None:
        """TF Serving ``model_base_path`` (holds the numbered version directories)."""
        return self.savedmodel_path.parent if self.savedmodel_path else None

    @classmethod
    def from_meta(cls, directory: str | os.PathLike, meta: dict) -> "ModelInfo":
        d = Path(directory)
        files = meta.get("files", {})
        sm = files.get("savedmodel")
        return cls(
            name=meta["name"],
            kind=meta["kind"],
            directory=d,
            onnx_path=d / files.get("onnx", "model.onnx"),
            savedmodel_path=(d / sm) if sm else None,
            input_name=meta["input_name"],
            input_hw=(int(meta["input_hw"][0]), int(meta["input_hw"][1])),
            normalization=meta["normalization"],
            output_names=list(meta["output_names"]),
            labels=list(meta["labels"]),
            num_classes=int(meta["num_classes"]),
            meta=meta,
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ModelInfo":
        """Read ``<directory>/model.json``. Paths in it are relative to the directory."""
        d = Path(directory)
        with open(d / META_FILE, encoding="utf-8") as f:
            return cls.from_meta(d, json.load(f))


def write_meta(directory: str | os.PathLike, meta: dict) -> Path:
    path = Path(directory) / META_FILE
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path
