#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets to seeds/<target>/.

The input layouts are documented in src/fuzzing.rs. Run from anywhere:
    python3 fuzz/make-seeds.py
"""
import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"0123456789abcdef0123456789abcdef-test"  # fuzzing::SECRET
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(b0, payload, long_form=None):
    """A masked client frame with first byte b0."""
    n = len(payload)
    if long_form == 127 or n > 0xFFFF:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    elif long_form == 126 or n > 125:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | n])
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def ws_input(max_message, seed, stream):
    return struct.pack("<HH", max_message, seed) + stream


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(header, claims, secret=SECRET):
    signed = b64(header) + "." + b64(claims)
    sig = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64(sig)


def structured(key, alg, flags, room, jti, exp, nbf=None, iat=None):
    """Mode 2 of token_check; times are offsets from the current time."""
    out = bytes([2, key, alg, flags])
    for s in (room, jti):
        out += bytes([len(s)]) + s
    for t in (exp, nbf, iat):
        out += b"\x00" if t is None else b"\x02" + struct.pack("<h", t)
    return out


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


write("ws_frames", "text", ws_input(1024, 1, frame(0x81, "héllo".encode())))
write(
    "ws_frames",
    "fragments-around-ping",
    ws_input(
        1024,
        7,
        frame(0x01, "h\xc3".encode("latin-1"))
        + frame(0x89, b"p")
        + frame(0x00, b"\xa9l")
        + frame(0x80, b"lo"),
    ),
)
write("ws_frames", "binary-16bit-length", ws_input(1024, 3, frame(0x82, bytes(range(200)))))
write("ws_frames", "binary-64bit-length", ws_input(0xFFFF, 9, frame(0x82, b"abc", 127)))
write(
    "ws_frames",
    "close-and-pong",
    ws_input(64, 5, frame(0x8A, b"") + frame(0x88, struct.pack(">H", 1000) + b"bye")),
)
write("ws_frames", "too-large", ws_input(16, 2, frame(0x81, b"x" * 40)))
write("ws_frames", "partial", ws_input(1024, 4, frame(0x81, b"hello")[:-2]))

header = json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode()
claims = json.dumps(
    {"room": "room1", "exp": 1767225600, "jti": "j1", "iat": 1767222000},
    separators=(",", ":"),
).encode()
# Signed with the secret but long expired: takes the path up to the time checks.
write("token_check", "raw-token", b"\x00" + token(header, claims).encode())
write("token_check", "raw-json", b"\x01\x00" + header + b"\x00" + claims)
# Valid whenever it runs: exp 600 s ahead, iat now.
write("token_check", "valid", structured(0, 0, 1, b"room1", b"j1", 600, iat=0))
write("token_check", "valid-previous-secret", structured(1, 0, 0, b"r-_9", b"jti-2", 60, nbf=-10))
write("token_check", "alg-none", structured(3, 3, 1, b"room1", b"j1", 600))
write("token_check", "wrong-secret", structured(2, 0, 1, b"room1", b"j1", 600))
