#!/usr/bin/env python3
"""Three thread-per-request HTTP services for the thread-rule test
(agent/tests/export.rs), each its own process:
  gateway   :18080  GET /checkout/<id>  -> orders, then inventory
  orders    :18081  GET /orders/<id>    -> inventory
  inventory :18082  GET /stock/<id>

Run one with: threaded_shop.py SERVICE (the test sets OTEL_SERVICE_NAME).
"""
import ctypes
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    # The listen backlog, read when the constructor listens: the default 5
    # drops SYNs when many clients connect at once.
    request_queue_size = 128


PORTS = {"gateway": 18080, "orders": 18081, "inventory": 18082}


def call(service, path):
    conn = http.client.HTTPConnection("127.0.0.1", PORTS[service], timeout=5)
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return body


def handler_for(service):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            item = self.path.rsplit("/", 1)[-1]
            if service == "gateway":
                body = call("orders", f"/orders/{item}") + call("inventory", f"/stock/{item}")
            elif service == "orders":
                body = b"order " + item.encode() + b": " + call("inventory", f"/stock/{item}")
            else:
                body = b"in stock\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


if __name__ == "__main__":
    service = sys.argv[1]
    libc = ctypes.CDLL(None)
    libc.prctl(15, service.encode(), 0, 0, 0)  # PR_SET_NAME
    server = Server(("127.0.0.1", PORTS[service]), handler_for(service))
    print(f"{service} listening on {PORTS[service]}", flush=True)
    server.serve_forever()
