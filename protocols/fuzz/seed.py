#!/usr/bin/env python3
"""Seeds the `connection` fuzz target's corpus from the recorded fixtures, in
the target's record format: side byte, length byte, bytes (first 255)."""
import base64, glob, json, os

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus", "connection")
os.makedirs(out, exist_ok=True)
for f in glob.glob(os.path.join(here, "..", "tests", "fixtures", "*", "*.jsonl")):
    conns = {}
    for line in open(f):
        v = json.loads(line)
        if v["type"] == "open":
            conns[v["conn_id"]] = (v["role"], bytearray())
        elif v["type"] == "data" and v["conn_id"] in conns:
            role, buf = conns[v["conn_id"]]
            side = 0 if (v["direction"] == "egress") == (role == "client") else 1
            d = base64.b64decode(v["data"])[:255]
            buf += bytes([side, len(d)]) + d
    for i, (_, (_, b)) in enumerate(conns.items()):
        if b:
            open(os.path.join(out, f"{os.path.basename(f)}-{i}"), "wb").write(bytes(b))
print(f"corpus: {len(os.listdir(out))} inputs in {out}")
