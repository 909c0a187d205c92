#!/usr/bin/env python3
"""Writes tests/data/python_values.json: state values as LangBot's Python
store writes them (json.dumps, ", " and ": " separators, ensure_ascii on and
off), each with the value Python meant, in a typed form that does not depend
on a JSON parser: floats as their IEEE-754 bits, integers as decimal text.

Deterministic (fixed seed): rerunning it rewrites the same file.
    python3 scripts/make-python-value-vectors.py
"""
import json
import math
import random
import struct
from pathlib import Path

rng = random.Random(20261125)


def bits(f):
    return "%016x" % struct.unpack("<Q", struct.pack("<d", f))[0]


def awkward_float():
    pick = rng.randrange(10)
    if pick == 0:  # any finite bit pattern, subnormals included
        while True:
            f = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
            if math.isfinite(f):
                return f
    if pick == 1:
        return rng.choice([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308,
                           1.7976931348623157e308, -1.7976931348623157e308,
                           sum([0.1] * 10), 0.1 + 0.2, 1.602176634e-19, 1e16, 1e22,
                           1e-7, 1.0, -1.0, 2.0 ** 53, 2.0 ** 53 + 2, 123456789.0])
    if pick == 2:  # decimals of 15-17 significant digits
        digits = rng.randrange(15, 18)
        return float("%.*e" % (digits - 1, rng.uniform(-1, 1) * 10 ** rng.randrange(-30, 30)))
    if pick == 3:  # near powers of ten, where repr switches notation
        return rng.choice([1, -1]) * 10.0 ** rng.randrange(-6, 18) * rng.choice([1, 1 - 2 ** -52, 1 + 2 ** -52])
    if pick == 4:
        return rng.random()
    if pick == 5:
        return rng.uniform(-1e6, 1e6)
    if pick == 6:  # integral floats
        return float(rng.randrange(-10 ** 6, 10 ** 6))
    if pick == 7:
        return math.ldexp(rng.random(), rng.randrange(-1074, 1024))
    if pick == 8:
        return struct.unpack("<d", struct.pack("<Q", rng.getrandbits(52)))[0]  # subnormal
    return rng.gauss(0, 1e-5)


def extreme_int():
    return rng.choice([
        0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, 2 ** 63, 2 ** 53 + 1, -(2 ** 53) - 1,
        rng.randrange(-(2 ** 63), 2 ** 63), rng.randrange(0, 2 ** 64), rng.randrange(-1000, 1000),
    ])


ALPHABETS = [
    (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x2FF), (0x400, 0x4FF), (0x4E00, 0x4FFF),
    (0x1F300, 0x1F64F), (0x10000, 0x10FFFF), (0xE000, 0xFFFD),
]


def text(max_len=12):
    out = []
    for _ in range(rng.randrange(max_len + 1)):
        lo, hi = rng.choice(ALPHABETS)
        c = rng.randrange(lo, hi + 1)
        if 0xD800 <= c <= 0xDFFF:  # lone surrogates: not text Rust can hold
            c = 0xFFFD
        out.append(chr(c))
    if rng.random() < 0.2:
        out.append(rng.choice(['"', "\\", "/", "\u2028", "\x7f", "'"]))
    return "".join(out)


def value(depth=0):
    kinds = ["float", "int", "bool", "null", "str"]
    if depth < 5:
        kinds += ["list", "dict"] * 2
    kind = rng.choice(kinds)
    if kind == "float":
        return awkward_float()
    if kind == "int":
        return extreme_int()
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "str":
        return text(rng.choice([4, 12, 200]))
    if kind == "list":
        return [value(depth + 1) for _ in range(rng.randrange(5))]
    return {text(8): value(depth + 1) for _ in range(rng.randrange(5))}


def typed(v):
    """The value Python means, in a form any reader can check exactly."""
    if v is None:
        return {"t": "null"}
    if isinstance(v, bool):
        return {"t": "bool", "v": v}
    if isinstance(v, int):
        return {"t": "int", "v": str(v)}
    if isinstance(v, float):
        return {"t": "float", "bits": bits(v)}
    if isinstance(v, str):
        return {"t": "str", "v": v}
    if isinstance(v, list):
        return {"t": "list", "v": [typed(i) for i in v]}
    return {"t": "dict", "v": [[k, typed(i)] for k, i in v.items()]}


def deep(depth, kind, leaf):
    v = leaf
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    return v


cases = []
for i in range(600):
    v = value()
    if i % 7 == 0:  # scalars alone too
        v = rng.choice([awkward_float, extreme_int])()
    ensure_ascii = i % 2 == 0
    cases.append({"text": json.dumps(v, ensure_ascii=ensure_ascii), "ensure_ascii": ensure_ascii,
                  "value": typed(v)})
# Deep nesting, as deep as Python's own json writes and reads by default.
for depth in [1, 127, 128, 129, 200, 500, 900, 990]:
    for kind in ["list", "dict"]:
        leaf = awkward_float()
        cases.append({"text": json.dumps(deep(depth, kind, leaf)), "ensure_ascii": True,
                      "value": {"t": "deep", "kind": kind, "depth": depth, "leaf": typed(leaf)}})

out = Path(__file__).resolve().parent.parent / "tests/data/python_values.json"
out.write_text(json.dumps({"generator": "scripts/make-python-value-vectors.py", "cases": cases},
                          ensure_ascii=True, indent=1) + "\n")
print(f"{len(cases)} cases -> {out}")
