import numpy as np
import pytest

from pipelines.postprocess import (canonical_boxes, crop_pixels, make_crops, nms, postprocess,
                                   select_boxes, to_pixels)


def _iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _brute_force_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(_iou(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept


def _random_boxes(rng, n):
    yx = rng.random((n, 2)) * 0.8
    hw = rng.random((n, 2)) * 0.3 + 0.01
    return np.concatenate([yx, np.clip(yx + hw, 0, 1)], axis=1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.9])
def test_nms_matches_brute_force(seed, thr):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 60)
    scores = rng.random(60)
    scores[5] = scores[6] = scores[7]  # ties resolve by index
    assert nms(boxes, scores, thr).tolist() == _brute_force_nms(boxes, scores, thr)


def test_nms_agrees_with_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(42)
    boxes = _random_boxes(rng, 200)
    scores = rng.random(200)
    xywh = [[b[1], b[0], b[3] - b[1], b[2] - b[0]] for b in boxes]
    ref = np.asarray(cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, 0.5)).reshape(-1)
    assert nms(boxes, scores, 0.5).tolist() == ref.tolist()


def test_top_k_is_a_prefix_of_full_nms_and_k_zero_is_empty():
    rng = np.random.default_rng(1)
    boxes, scores = _random_boxes(rng, 100), rng.random(100)
    full = nms(boxes, scores, 0.5)
    for k in (1, 3, 4, 10):
        assert nms(boxes, scores, 0.5, max_keep=k).tolist() == full[:k].tolist()
    sel, sc = select_boxes(boxes, scores, 0.0, 0.5, 0)
    assert sel.shape == (0, 4) and sc.shape == (0,)


def test_select_thresholds_orders_and_canonicalises():
    boxes = np.array([[0.5, 0.5, 0.1, 0.1],      # corners swapped
                      [0.0, 0.0, 0.2, 0.2],
                      [0.0, 0.0, 0.21, 0.2],     # overlaps box 1 heavily
                      [0.7, 0.7, 1.3, 0.9]])     # runs off the image
    scores = np.array([0.6, 0.9, 0.8, 0.2])
    sel, sc = select_boxes(boxes, scores, score_threshold=0.3, iou_threshold=0.5, k=4)
    assert sc.tolist() == [0.9, 0.6]
    np.testing.assert_allclose(sel, [[0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.5, 0.5]])
    sel, sc = select_boxes(boxes, scores, score_threshold=0.1, iou_threshold=0.5, k=4)
    np.testing.assert_allclose(sel[-1], [0.7, 0.7, 1.0, 0.9])
    assert select_boxes(boxes, np.full(4, np.nan), 0.1, 0.5, 4)[0].shape == (0, 4)
    np.testing.assert_allclose(canonical_boxes(boxes[:1]), [[0.1, 0.1, 0.5, 0.5]])


def test_pixels_round_outward_and_stay_inside():
    px = to_pixels(np.array([[0.1, 0.25, 0.55, 0.5], [0.0, 0.0, 0.0, 0.0], [0.99, 0.99, 1.0, 1.0]]),
                   (100, 200))
    assert px.tolist() == [[50, 10, 100, 55], [0, 0, 1, 1], [198, 99, 200, 100]]


def test_postprocess_boxes_on_original_and_crops_from_reduced_decode():
    rng = np.random.default_rng(0)
    original_hw = (400, 600)
    decoded = rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)  # 1/4 DCT-reduced decode
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 0.95]])
    scores = np.array([0.4, 0.9])
    out = postprocess(boxes, scores, decoded, original_hw, 0.3, 0.5, k=4)
    assert len(out) == 2 and out.scores.tolist() == [0.9, 0.4]
    assert out.boxes_px.tolist() == [[300, 200, 570, 360], [120, 40, 360, 200]]
    assert [c.shape for c in out.crops] == [(40, 68, 3), (40, 60, 3)]
    np.testing.assert_array_equal(out.crops[1], decoded[10:50, 30:90])
    assert all(c.dtype == np.uint8 and c.flags.c_contiguous for c in out.crops)


def test_make_crops_uses_the_same_rounding_as_to_pixels():
    img = np.arange(50 * 80 * 3, dtype=np.uint8).reshape(50, 80, 3)
    boxes = np.array([[0.13, 0.27, 0.61, 0.83]])
    (c,) = make_crops(img, boxes)
    np.testing.assert_array_equal(c, crop_pixels(img, boxes[0]))
