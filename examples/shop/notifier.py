"""notifier: subscribes to the Redis channel order-events and counts the
messages (orders publishes one per paid order). No HTTP, no other calls.

Prints the count to stderr when it changed, at most every 5 s, and at exit.
Once subscribed it creates DIR/run/notifier.ready (the launcher waits for it).
"""
import os
import signal
import sys
import time

from shoplib import redis_client, state_dir

CHANNEL = "order-events"
count = 0


def stop(signum, frame):
    print(f"notifier: {count} messages (exit)", file=sys.stderr, flush=True)
    sys.exit(0)


def main():
    global count
    ready = os.path.join(state_dir(), "run", "notifier.ready")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pubsub = redis_client().pubsub()
    pubsub.subscribe(CHANNEL)
    printed, last = 0, time.monotonic()
    while True:
        message = pubsub.get_message(timeout=1.0)
        if message is not None:
            if message["type"] == "subscribe":
                os.makedirs(os.path.dirname(ready), exist_ok=True)
                open(ready, "w").close()
                print(f"notifier: subscribed to {CHANNEL}", file=sys.stderr, flush=True)
            elif message["type"] == "message":
                count += 1
        now = time.monotonic()
        if count != printed and now - last >= 5:
            print(f"notifier: {count} messages", file=sys.stderr, flush=True)
            printed, last = count, now


if __name__ == "__main__":
    main()
