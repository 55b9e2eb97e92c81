"""Detector post-processing: score threshold, NMS, top-k boxes, pixel boxes and crops.

Boxes from the detector are normalised ``(ymin, xmin, ymax, xmax)`` in [0, 1] relative to the
image it saw. Because they are normalised they map onto the decoded image (possibly DCT-reduced)
and onto the original image alike: crops are cut from the decoded image, reported boxes are in
pixels of the ORIGINAL image. Order is deterministic: score descending, ties by anchor index.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(ymin,xmin,ymax,xmax)`` box with each of ``boxes`` [N,4] (0 where union is 0)."""
    y1 = np.maximum(box[0], boxes[:, 0])
    x1 = np.maximum(box[1], boxes[:, 1])
    y2 = np.minimum(box[2], boxes[:, 2])
    x2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    out = np.zeros(len(boxes), dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS: indices kept, score descending (stable: ties keep anchor order).

    A box is suppressed when its IoU with a kept box is ``> iou_threshold`` (as cv2.dnn.NMSBoxes).
    ``max_keep`` stops after that many boxes (same result as truncating the full NMS output).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    if max_keep is not None and max_keep <= 0:
        return np.zeros(0, dtype=np.int64)
    while order.size:
        i = int(order[0])
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = order[1:]
        if not rest.size:
            break
        order = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def canonical_boxes(boxes: np.ndarray) -> np.ndarray:
    """Clip to [0,1] and order each box's corners (ymin<=ymax, xmin<=xmax)."""
    b = np.clip(np.nan_to_num(np.asarray(boxes, dtype=np.float64), nan=0.0), 0.0, 1.0)
    return np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                     np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], axis=1)


def select_boxes(boxes: np.ndarray, scores: np.ndarray, score_threshold: float,
                 iou_threshold: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Threshold, NMS, top-k. Returns ``(boxes_norm [m,4], scores [m])`` with m <= k."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if k <= 0 or not len(scores):
        return np.zeros((0, 4)), np.zeros(0)
    idx = np.flatnonzero(np.nan_to_num(scores, nan=-np.inf) >= score_threshold)
    if not idx.size:
        return np.zeros((0, 4)), np.zeros(0)
    cand = canonical_boxes(boxes[idx])
    keep = nms(cand, scores[idx], iou_threshold, max_keep=k)
    return cand[keep], scores[idx][keep]


def to_pixels(boxes_norm: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Normalised ``(ymin,xmin,ymax,xmax)`` -> integer ``(x1,y1,x2,y2)`` in an ``hw`` image.

    Outward rounding (floor / ceil), clipped to the image, at least one pixel wide and high."""
    h, w = int(hw[0]), int(hw[1])
    b = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)
    eps = 1e-6  # 0.55 * 100 is 55.000000000000007: do not grow a box by a pixel for that
    x1 = np.clip(np.floor(b[:, 1] * w + eps), 0, w - 1)
    y1 = np.clip(np.floor(b[:, 0] * h + eps), 0, h - 1)
    x2 = np.clip(np.maximum(np.ceil(b[:, 3] * w - eps), x1 + 1), 1, w)
    y2 = np.clip(np.maximum(np.ceil(b[:, 2] * h - eps), y1 + 1), 1, h)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)


def crop_pixels(img: np.ndarray, box_norm) -> np.ndarray:
    """The region of ``img`` (HxWx3) under one normalised box, using ``to_pixels``'s rounding."""
    x1, y1, x2, y2 = to_pixels(np.asarray(box_norm)[None], img.shape[:2])[0]
    return img[y1:y2, x1:x2]


def make_crops(img: np.ndarray, boxes_norm: np.ndarray) -> list[np.ndarray]:
    """Crops of the decoded image via ``pipelines.preprocess.crop`` (contiguous uint8)."""
    try:
        from pipelines.preprocess import crop
    except ImportError:  # preprocess not installed in this tree: same rounding, local slicing
        crop = crop_pixels
    return [np.ascontiguousarray(crop(img, tuple(float(v) for v in b))) for b in boxes_norm]


@dataclass(slots=True)
class Postprocessed:
    boxes_norm: np.ndarray          # [m,4] (ymin,xmin,ymax,xmax) in [0,1]
    scores: np.ndarray              # [m] detector scores, descending
    boxes_px: np.ndarray            # [m,4] int (x1,y1,x2,y2) in pixels of the ORIGINAL image
    crops: list = field(default_factory=list)   # m uint8 crops of the decoded image

    def __len__(self) -> int:
        return len(self.scores)


def postprocess(boxes: np.ndarray, scores: np.ndarray, decoded: np.ndarray,
                original_hw: tuple[int, int], score_threshold: float, iou_threshold: float,
                k: int) -> Postprocessed:
    """Detector outputs for one image -> top-k boxes, original-pixel boxes and decoded crops."""
    sel, sc = select_boxes(boxes, scores, score_threshold, iou_threshold, k)
    return Postprocessed(sel, sc, to_pixels(sel, original_hw), make_crops(decoded, sel))
