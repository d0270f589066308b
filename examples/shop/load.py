#!/usr/bin/env python3
"""Load for the shop: N requests to the gateway, C at a time.

  python3 load.py --requests N --concurrency C [--mix checkout,dashboard,notfound]
                  [--gateway 127.0.0.1:18100] [--seed S] [--progress]

Each request on a new connection (http.client, Connection: close). The mix
is a fixed cycle of 10 (6 POST /checkout, 3 GET /dashboard/{user}, 1 GET
/nothing/here, a 404 on purpose): request i is the cycle's i % 10th,
restricted to the operations of --mix. The users (1..20) come from a
random generator seeded with --seed, drawn in request order.

At the end, one JSON line on stdout:
  {"requests": N, "failed": F, "elapsed_s": T, "rps": R,
   "counts": {"checkout": {"200": 600}, "dashboard": {"200": 300}, "notfound": {"404": 100}}}
A request failed if its status is not the expected one (checkout 200,
dashboard 200, notfound 404); a connection error counts as status "error".
Exits 0 even if some failed: the failures are data.
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time

# The cycle: checkouts spread between the dashboards, the 404 last.
CYCLE = ["checkout", "dashboard", "checkout", "checkout", "dashboard",
         "checkout", "checkout", "dashboard", "checkout", "notfound"]
EXPECTED = {"checkout": 200, "dashboard": 200, "notfound": 404}


def request(host, port, op, user, timeout):
    if op == "checkout":
        method, path, body = "POST", "/checkout", json.dumps({"user": user, "items": 12}).encode()
    elif op == "dashboard":
        method, path, body = "GET", f"/dashboard/{user}", None
    else:
        method, path, body = "GET", "/nothing/here", None
    headers = {"Connection": "close"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    except Exception:  # connection refused, reset, timeout, bad response
        return "error"
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description="Send requests to the shop's gateway.")
    p.add_argument("--requests", type=int, required=True, help="requests in all")
    p.add_argument("--concurrency", type=int, required=True, help="requests at a time")
    p.add_argument("--mix", default="checkout,dashboard,notfound",
                   help="operations to send, of checkout, dashboard, notfound")
    p.add_argument("--gateway", default="127.0.0.1:18100", help="HOST:PORT")
    p.add_argument("--seed", type=int, default=1, help="seed of the users drawn")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--progress", action="store_true", help="a progress line on stderr each second")
    args = p.parse_args()

    ops = [o.strip() for o in args.mix.split(",") if o.strip()]
    unknown = [o for o in ops if o not in EXPECTED]
    if unknown or not ops:
        p.error(f"--mix: unknown operation(s) {unknown}; known: {', '.join(EXPECTED)}")
    if args.requests < 0 or args.concurrency < 1:
        p.error("--requests >= 0 and --concurrency >= 1")
    host, _, port = args.gateway.rpartition(":")
    cycle = [o for o in CYCLE if o in ops]
    rng = random.Random(args.seed)
    plan = [(cycle[i % len(cycle)], rng.randint(1, 20)) for i in range(args.requests)]

    lock = threading.Lock()
    state = {"next": 0, "done": 0, "failed": 0}
    counts = {}
    finished = threading.Event()
    if not plan:
        finished.set()

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= len(plan):
                    return
                state["next"] = i + 1
            op, user = plan[i]
            status = request(host, int(port), op, user, args.timeout)
            with lock:
                per_op = counts.setdefault(op, {})
                per_op[status] = per_op.get(status, 0) + 1
                state["done"] += 1
                if status != str(EXPECTED[op]):
                    state["failed"] += 1
                if state["done"] == len(plan):
                    finished.set()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(args.concurrency, max(1, args.requests)))]
    for t in threads:
        t.start()

    def progress():
        with lock:
            done, failed = state["done"], state["failed"]
        print(f"load: {done}/{args.requests} sent, {failed} failed", file=sys.stderr, flush=True)

    next_tick = started + 1.0
    while not finished.wait(timeout=max(0.0, next_tick - time.monotonic())):
        next_tick += 1.0
        if args.progress:
            progress()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if args.progress:
        progress()
    print(json.dumps({
        "requests": args.requests,
        "failed": state["failed"],
        "elapsed_s": round(elapsed, 3),
        "rps": round(args.requests / elapsed, 1) if elapsed > 0 else None,
        "counts": {op: dict(sorted(c.items())) for op, c in sorted(counts.items())},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
