#!/usr/bin/env python3
"""Decode a Godwit conformist-service checkpoint (.gwck) to JSON, without Rust.

Usage: decode_checkpoint.py FILE            -> JSON on stdout
       decode_checkpoint.py --selftest      -> checks the decoder on a built-in sample

Follows the format in docs/SDK.md ("Checkpoint file" and "State encoding"): a 32-byte
header, a JSON description holding the schema of the payload, then the payload. Uses only
the Python standard library.
"""
import json
import struct
import sys
import zlib

MAGIC = b"GODWITCK"
PRIMS = {
    "u8": ("<B", 1), "u16": ("<H", 2), "u32": ("<I", 4), "u64": ("<Q", 8),
    "i8": ("<b", 1), "i16": ("<h", 2), "i32": ("<i", 4), "i64": ("<q", 8),
    "f32": ("<f", 4), "f64": ("<d", 8),
}


class DecodeError(Exception):
    pass


class Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n):
        if n > len(self.buf) - self.pos:
            raise DecodeError(f"truncated: {n} bytes wanted at offset {self.pos}")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt, n):
        return struct.unpack(fmt, self.take(n))[0]


def decode(schema, r):
    if isinstance(schema, str):
        if schema == "unit":
            return None
        if schema == "bool":
            b = r.unpack("<B", 1)
            if b > 1:
                raise DecodeError(f"bool byte {b}")
            return b == 1
        if schema == "string":
            return r.take(r.unpack("<Q", 8)).decode("utf-8")
        if schema in ("u128", "i128"):
            return int.from_bytes(r.take(16), "little", signed=schema == "i128")
        if schema in PRIMS:
            return r.unpack(*PRIMS[schema])
        raise DecodeError(f"unknown type {schema}")
    if "option" in schema:
        m = r.unpack("<B", 1)
        return None if m == 0 else decode(schema["option"], r)
    if "list" in schema:
        n = r.unpack("<Q", 8)
        if schema["list"] == "u8":
            return r.take(n).hex()
        return [decode(schema["list"], r) for _ in range(n)]
    if "map" in schema:
        k, v = schema["map"]
        n = r.unpack("<Q", 8)
        pairs = [(decode(k, r), decode(v, r)) for _ in range(n)]
        if isinstance(k, str):
            return {str(a): b for a, b in pairs}
        return [[a, b] for a, b in pairs]
    if "tuple" in schema:
        return [decode(t, r) for t in schema["tuple"]]
    if "struct" in schema:
        return decode_fields(schema["fields"], r)
    if "enum" in schema:
        tag = r.unpack("<I", 4)
        for v in schema["variants"]:
            if v["tag"] == tag:
                return {v["name"]: decode_fields(v["fields"], r)}
        raise DecodeError(f"unknown variant tag {tag} of {schema['enum']}")
    raise DecodeError(f"bad schema {schema}")


def decode_fields(fields, r):
    by_tag = {f["tag"]: f for f in fields}
    out = {}
    for _ in range(r.unpack("<I", 4)):
        tag = r.unpack("<I", 4)
        body = r.take(r.unpack("<Q", 8))
        f = by_tag.get(tag)
        if f is None:
            out[f"#{tag}"] = body.hex()  # a field this schema does not know
            continue
        sub = Reader(body)
        out[f["name"]] = decode(f["type"], sub)
        if sub.pos != len(body):
            raise DecodeError(f"field {f['name']}: {len(body) - sub.pos} trailing bytes")
    return out


def decode_file(data):
    if len(data) < 32:
        raise DecodeError("shorter than the header")
    magic, version, _flags, dlen, plen, crc, _ = struct.unpack("<8sHHIQII", data[:32])
    if magic != MAGIC:
        raise DecodeError("bad magic")
    if version != 1:
        raise DecodeError(f"format version {version} not supported")
    desc, payload = data[32:32 + dlen], data[32 + dlen:32 + dlen + plen]
    if len(payload) != plen:
        raise DecodeError("truncated payload")
    if zlib.crc32(desc + payload) & 0xFFFFFFFF != crc:
        raise DecodeError("CRC mismatch: corrupted checkpoint")
    header = json.loads(desc)
    r = Reader(payload)
    body = decode(header["schema"], r)
    # Operations in flight: decode their arguments and stage with the method schemas.
    for op in body.get("ops", []):
        m = header.get("methods", {}).get(op["method"])
        if m:
            op["args"] = decode(m["args"], Reader(bytes.fromhex(op["args"])))
            if m.get("stage"):
                op["stage"] = decode(m["stage"], Reader(bytes.fromhex(op["stage"])))
    header.pop("schema")
    header.pop("methods", None)
    return {"header": header, "checkpoint": body}


def selftest():
    schema = {"struct": "Checkpoint", "fields": [
        {"name": "state", "tag": 1, "default": False,
         "type": {"map": ["u64", {"struct": "A", "fields": [{"name": "b", "tag": 1, "default": False, "type": "i64"}]}]}}]}
    acct = struct.pack("<IIQq", 1, 1, 8, -5)
    state = struct.pack("<Q", 1) + struct.pack("<Q", 7) + acct
    payload = struct.pack("<IIQ", 1, 1, len(state)) + state
    desc = json.dumps({"format": 1, "service": "t", "uuid": "u", "seq": 1, "created_unix_ms": 0, "schema": schema}).encode()
    head = struct.pack("<8sHHIQII", MAGIC, 1, 0, len(desc), len(payload), zlib.crc32(desc + payload), 0)
    out = decode_file(head + desc + payload)
    assert out["checkpoint"]["state"] == {"7": {"b": -5}}, out
    try:
        decode_file(head + desc + payload[:-1] + b"\x00")
        raise AssertionError("corruption not detected")
    except DecodeError:
        pass
    print("selftest ok")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "--selftest":
        selftest()
        return 0
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    try:
        print(json.dumps(decode_file(data), indent=1))
    except DecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
