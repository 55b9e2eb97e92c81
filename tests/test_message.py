import numpy as np
import pytest

from brokers.message import MAGIC, MalformedMessage, Message, decode_message, encode_message


def _crop_message():
    crop = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    return Message(request_id="abc", kind="crop", index=2, k=4, shape=crop.shape, dtype="uint8",
                   produce_ns=123, extra={"trace": "t1"}, payload=crop.tobytes()), crop


def test_round_trip_keeps_every_field_and_the_tensor():
    msg, crop = _crop_message()
    out = decode_message(encode_message(msg))
    assert out == msg
    back = np.frombuffer(out.payload, dtype=out.dtype).reshape(out.shape)
    np.testing.assert_array_equal(back, crop)


@pytest.mark.parametrize("mangle, reason", [
    (lambda b: b"", "too short"),
    (lambda b: b"XYZ" + b[3:], "bad magic"),
    (lambda b: b[:3] + bytes([9]) + b[4:], "unknown message version 9"),
    (lambda b: b[:4] + (10**6).to_bytes(4, "big") + b[8:], "header length"),
    (lambda b: b[:8] + b"{" * 5 + b[13:], "bad header"),
    (lambda b: b[:-1], "payload is"),
])
def test_malformed_messages_say_why(mangle, reason):
    msg, _ = _crop_message()
    with pytest.raises(MalformedMessage, match=reason):
        decode_message(mangle(encode_message(msg)))


class _RecordingBroker:
    """Wraps the real memory broker and keeps every payload published on ``crops``."""

    def __init__(self):
        from brokers.memory import MemoryBroker

        self.inner, self.crops = MemoryBroker(), []

    def publish(self, topic, payload, *a, **kw):
        if topic == "crops":
            self.crops.append(bytes(payload))
        return self.inner.publish(topic, payload, *a, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_never_pickle_real_crop_messages(tiny_detector, tiny_classifier, photo_jpeg):
    """The crops the real pipeline publishes for a real photo: Overhead prefix + a JSON header +
    the raw pixels and nothing else, readable by decode_message alone; a pickle is refused."""
    import ast
    import json
    import pickle
    import struct
    from pathlib import Path

    from pipelines.pipeline import TwoStagePipeline
    from pipelines.preprocess import get_preprocessor, inspect_image
    from pipelines.spans import SpanRecorder

    broker = _RecordingBroker()
    pre = get_preprocessor("opencv", reduced="off")   # crops cut from the full 427x640 decode
    p = TwoStagePipeline(tiny_detector, tiny_classifier, pre, broker=broker, recorder=SpanRecorder(),
                         score_threshold=0.0, k=4).start()
    try:
        out = p.process("req-wire", photo_jpeg, inspect_image(photo_jpeg, 10**8, 10**8))
    finally:
        p.stop()
    assert out["k"] == 4 and len(broker.crops) == 4
    img, _ = pre.decode(photo_jpeg, tiny_detector.input_hw)
    for i, wire in enumerate(broker.crops):
        assert len(wire) > 10_000, len(wire)          # a real crop of a 427x640 photo, not a toy
        magic, version, hlen = struct.unpack_from(">3sBI", wire)
        assert (magic, version) == (MAGIC, 1) and not wire.startswith(b"\x80")   # no pickle PROTO
        head = json.loads(wire[8:8 + hlen].decode("utf-8"))      # the header is plain JSON
        assert set(head) == {"v", "rid", "kind", "i", "k", "shape", "dtype", "t", "x"}
        assert (head["rid"], head["kind"], head["i"], head["k"], head["dtype"]) == \
            ("req-wire", "crop", i, 4, "uint8")
        h, w, c = head["shape"]
        assert c == 3 and len(wire) == 8 + hlen + h * w * c   # nothing after the raw pixels
        msg = decode_message(wire)
        crop = np.frombuffer(msg.payload, np.uint8).reshape(msg.shape)
        x1, y1, x2, y2 = out["detections"][i]["box"]
        # the pixels are the photo's own: the crop is the decoded image at the detection's box
        np.testing.assert_array_equal(crop, img[y1:y2, x1:x2])
        # a pickled message is refused by the decoder (never unpickled)
        with pytest.raises(MalformedMessage, match="magic|short"):
            decode_message(pickle.dumps(msg))
    # and no module on the wire path can unpickle: pickle/marshal/dill are not imported there
    root = Path(__file__).resolve().parent.parent
    for pkg in ("brokers", "pipelines"):
        for f in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad = [n for n in names if n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal")]
                assert not bad, f"{f.relative_to(root)} imports {bad}"
