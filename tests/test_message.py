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


def test_never_pickle():
    msg, _ = _crop_message()
    data = encode_message(msg)
    assert data.startswith(MAGIC)
    assert b"\x80\x04" not in data[:12]  # no pickle protocol marker where the header begins
