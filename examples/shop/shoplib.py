"""What the Python services of the shop share: ports, the HTTP server and
client, the PostgreSQL connection pool and the Redis client.

Not a service: each service is its own script (gateway.py, orders.py, ...),
run as `python3 -u NAME.py`, so the process is named by its script.
"""
import http.client
import json
import os
import queue
import socketserver
import sys
import traceback
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
PORTS = {
    "gateway": 18100,
    "orders": 18101,
    "payments": 18102,
    "pricing": 18103,
    "tax": 18104,
    "inventory": 18105,
    "users": 18106,
    "fraud": 18108,
    "postgres": 18432,
    "redis": 18379,
}
TIMEOUT = 30.0  # seconds, for every outbound HTTP call


def state_dir():
    """The launcher's state directory (env SHOP_DIR): toggle files live there."""
    d = os.environ.get("SHOP_DIR")
    if not d:
        sys.exit(f"{os.path.basename(sys.argv[0])}: SHOP_DIR is not set (the state directory)")
    return d


def toggle(name):
    """True if DIR/name exists; read on every request."""
    return os.path.exists(os.path.join(state_dir(), name))


# --- HTTP server -----------------------------------------------------------


class Server(ThreadingHTTPServer):
    """A thread per connection; the request is read and handled on it."""

    daemon_threads = True
    request_queue_size = 1024  # the listen backlog (the default, 5, drops SYNs under load)

    def server_bind(self):
        # HTTPServer.server_bind resolves the host name (socket.getfqdn): skip
        # it, so a service makes no lookups at all.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive if the client wants it
    disable_nagle_algorithm = True  # headers and body are two writes

    def log_message(self, *args):  # no log line per request
        pass

    def body(self):
        """The request body (read whole, so the connection stays in step)."""
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def json_body(self):
        raw = self.body()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def reply(self, code, value, content_type="application/json"):
        data = value if isinstance(value, bytes) else json.dumps(value, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method, parts):
        """Overridden by each service: handle the request and return True,
        or return False (a 404, with no call). parts: the path split on '/'."""
        return False

    def dispatch(self, method):
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        try:
            if not self.route(method, parts):
                if method != "GET":
                    self.body()
                self.reply(404, {"error": "not found", "path": self.path})
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            try:
                self.reply(500, {"error": "internal error"})
            except OSError:
                pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    # Other methods are 404s too (not 501s).
    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")


def int_part(s):
    """A path segment as a positive int, or None."""
    return int(s) if s.isdigit() and len(s) < 10 and int(s) > 0 else None


def serve(name, handler):
    server = Server((HOST, PORTS[name]), handler)
    print(f"{name}: listening on {HOST}:{PORTS[name]}", file=sys.stderr, flush=True)
    server.serve_forever()


# --- HTTP client -------------------------------------------------------------


def call(service, method, path, value=None):
    """One HTTP call on a new connection (Connection: close).

    Returns (status, body bytes); a connection error is (503, b"").
    """
    headers = {"Connection": "close"}
    data = None
    if value is not None:
        data = json.dumps(value).encode()
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(HOST, PORTS[service], timeout=TIMEOUT)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as e:
        print(f"call {service} {method} {path}: {e}", file=sys.stderr, flush=True)
        return 503, b""
    finally:
        conn.close()


def loads(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


# --- PostgreSQL ----------------------------------------------------------------


class Pool:
    """A few psycopg connections opened at start, lent one request at a time."""

    def __init__(self, size=4):
        import psycopg  # imported here: only the services with a database need it

        self._psycopg = psycopg
        self._idle = queue.Queue()
        for _ in range(size):
            self._idle.put(self._connect())

    def _connect(self):
        return self._psycopg.connect(
            host=HOST,
            port=PORTS["postgres"],
            dbname="shop",
            user="shop",
            # This run's password, from the launcher (SCRAM-SHA-256: it is
            # not sent itself). None: no password (libpq then sends none).
            password=os.environ.get("SHOP_PG_PASSWORD"),
            autocommit=True,
            # The same messages on the wire every time: no SSL/GSS request
            # before the startup message, no server-side prepared statements
            # (psycopg prepares a query after its 5th execution by default).
            sslmode="disable",
            gssencmode="disable",
            prepare_threshold=None,
            connect_timeout=10,
        )

    @contextmanager
    def connection(self):
        conn = self._idle.get()
        try:
            yield conn
        finally:
            if conn.closed or conn.broken:
                try:
                    conn = self._connect()
                except Exception as e:  # the pool keeps its size; the next use retries
                    print(f"postgres: reconnect failed: {e}", file=sys.stderr, flush=True)
            self._idle.put(conn)

    def one(self, sql, params=()):
        with self.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def all(self, sql, params=()):
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()


# --- Redis -------------------------------------------------------------------------


def redis_client():
    """A redis-py client (its connections are opened on first use; each
    authenticates with `HELLO 3 AUTH default <password>`, the launcher's
    password for this run, from SHOP_REDIS_PASSWORD)."""
    import redis

    return redis.Redis(host=HOST, port=PORTS["redis"], socket_timeout=TIMEOUT,
                       password=os.environ.get("SHOP_REDIS_PASSWORD"))
