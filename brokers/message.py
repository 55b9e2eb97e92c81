"""The wire format shared by all brokers: a small versioned header plus raw bytes.

Layout: ``b"OVH"`` + version byte + big-endian uint32 header length + UTF-8 JSON header + payload.
The header names the request, the crop, the tensor's shape and dtype (or ``"jpeg"``), the produce
timestamp and an optional trace context / span list. Never pickle: a message from an untrusted
stream must not be able to run code.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

MAGIC = b"OVH"
VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
_PREFIX = struct.Struct(">3sBI")


class MalformedMessage(ValueError):
    """The bytes are not a message this version understands; the reason says why."""


@dataclass(slots=True)
class Message:
    request_id: str
    kind: str                    # "crop" (gateway -> worker) or "result" (worker -> gateway)
    index: int = 0               # crop index within the request
    k: int = 1                   # number of crops of the request
    shape: tuple = ()            # tensor shape, () for non-tensor payloads
    dtype: str = "uint8"         # numpy dtype name, or "jpeg" / "json"
    produce_ns: int = 0
    extra: dict = field(default_factory=dict)   # trace context, results, spans
    payload: bytes = b""

    def header(self) -> dict:
        return {"v": VERSION, "rid": self.request_id, "kind": self.kind, "i": self.index,
                "k": self.k, "shape": list(self.shape), "dtype": self.dtype,
                "t": self.produce_ns, "x": self.extra}


def encode_message(msg: Message) -> bytes:
    head = json.dumps(msg.header(), separators=(",", ":")).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"message header is {len(head)} bytes, over {MAX_HEADER_BYTES}")
    return _PREFIX.pack(MAGIC, VERSION, len(head)) + head + msg.payload


def decode_message(data: bytes) -> Message:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < _PREFIX.size:
        raise MalformedMessage("too short for an Overhead message header")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessage("bad magic: not an Overhead message")
    if version != VERSION:
        raise MalformedMessage(f"unknown message version {version} (this build reads {VERSION})")
    if hlen > MAX_HEADER_BYTES or _PREFIX.size + hlen > len(data):
        raise MalformedMessage(f"header length {hlen} runs past the message ({len(data)} bytes)")
    try:
        h = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + hlen]))
        msg = Message(request_id=str(h["rid"]), kind=str(h["kind"]), index=int(h["i"]),
                      k=int(h["k"]), shape=tuple(int(s) for s in h["shape"]), dtype=str(h["dtype"]),
                      produce_ns=int(h["t"]), extra=dict(h.get("x") or {}),
                      payload=bytes(data[_PREFIX.size + hlen:]))
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedMessage(f"bad header: {exc}") from exc
    if msg.dtype not in ("jpeg", "json") and msg.shape:
        import numpy as np

        try:
            want = int(np.prod(msg.shape)) * np.dtype(msg.dtype).itemsize
        except TypeError as exc:
            raise MalformedMessage(f"unknown dtype {msg.dtype!r}") from exc
        if want != len(msg.payload):
            raise MalformedMessage(f"payload is {len(msg.payload)} bytes, shape {msg.shape} "
                                   f"{msg.dtype} needs {want}")
    return msg
