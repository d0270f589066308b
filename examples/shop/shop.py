#!/usr/bin/env python3
"""The shop's launcher.

  python3 shop.py up   --dir DIR [--pg-bin PATH]
  python3 shop.py down --dir DIR [--pg-bin PATH]

`up` starts a private PostgreSQL cluster (DIR/pg), Redis and every service,
each its own child process, prints `shop: ready` on stdout once all of them
listen, and then waits: SIGTERM or SIGINT stops everything and exits 0. The
children get SIGTERM (PostgreSQL SIGINT, a fast shutdown) if the launcher
dies. Logs: DIR/logs/NAME.log. Pidfiles: DIR/run/NAME.pid, for `down`,
which stops whatever a launcher left behind.

Only the standard library here (the services need psycopg and redis).
"""
import argparse
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"
PG_PORT = 18432
REDIS_PORT = 18379
START_TIMEOUT = 60.0  # seconds, per service

# Leaves first: a service is started after the services it calls (users
# and orders call each other: users comes first, it calls orders only when
# asked). port None: notifier, ready once subscribed.
SERVICES = [
    ("tax", [sys.executable, "-u", "tax.py"], 18104),
    ("fraud", [sys.executable, "-u", "fraud.py"], 18108),
    ("inventory", ["node", "inventory.js"], 18105),
    ("pricing", ["java", "pricing.java"], 18103),
    ("users", [sys.executable, "-u", "users.py"], 18106),
    ("payments", [sys.executable, "-u", "payments.py"], 18102),
    ("orders", [sys.executable, "-u", "orders.py"], 18101),
    ("notifier", [sys.executable, "-u", "notifier.py"], None),
    ("gateway", [sys.executable, "-u", "gateway.py"], 18100),
]

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def log(msg):
    print(f"shop: {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


class Interrupted(Exception):
    """SIGTERM or SIGINT during start-up: stop, as after it."""


# --- processes --------------------------------------------------------------


def preexec(death_signal, user=None):
    """For the child, between fork and exec: its own process group (a ^C on
    the terminal reaches the launcher only), the user's ids if any, then the
    signal it gets when the launcher dies (set last: a change of ids clears
    it)."""
    parent = os.getpid()

    def run():
        os.setpgid(0, 0)
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        _libc.prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the prctl
            os.kill(os.getpid(), death_signal)

    return run


class Child:
    def __init__(self, name, argv, logs, run, cwd=HERE, env=None, user=None,
                 death_signal=signal.SIGTERM, stop_signal=signal.SIGTERM):
        self.name = name
        self.log_path = os.path.join(logs, f"{name}.log")
        self.stop_signal = stop_signal
        out = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=preexec(death_signal, user),
                close_fds=True,
            )
        except OSError as e:
            raise Failure(f"cannot start {name} ({argv[0]}): {e}")
        finally:
            out.close()
        self.pidfile = os.path.join(run, f"{name}.pid")
        with open(self.pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig=None):
        if self.alive():
            try:
                self.proc.send_signal(sig or self.stop_signal)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop in {timeout:.0f} s: SIGKILL")
            self.proc.kill()
            self.proc.wait()
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass

    def failure(self, what):
        tail = ""
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()[-15:]
            tail = "".join(f"\n    | {line}" for line in lines)
        except OSError:
            pass
        return Failure(f"{self.name} {what}; see its log {self.log_path}{tail}")


# --- ports -------------------------------------------------------------------


def check_free(port, name):
    """Fail fast if anything holds the port (bound or listening, any address
    that covers 127.0.0.1). SO_REUSEADDR: TIME_WAIT leftovers do not count,
    as they do not for the services' own listeners."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
    except OSError as e:
        raise Failure(f"port {port} ({name}) is already in use: {e.strerror}")
    finally:
        s.close()


def listening(port):
    """True if some socket listens on the port, from /proc/net/tcp{,6}:
    no connection is made, so the services see no traffic but their own."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[1].endswith(want):
                        return True
        except OSError:
            pass
    return False


def wait_until(child, ready, what):
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if not child.alive():
            raise child.failure(f"exited with code {child.proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise child.failure(f"did not {what} in {START_TIMEOUT:.0f} s")
        if STOP:
            raise Interrupted()
        time.sleep(0.05)


# --- PostgreSQL -------------------------------------------------------------------


def find_pg_bin(given):
    if given:
        if not os.path.exists(os.path.join(given, "postgres")):
            raise Failure(f"--pg-bin {given}: no postgres there")
        return given
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if versions:
        return os.path.dirname(versions[-1])
    raise Failure("no PostgreSQL binaries found (pg_ctl not on PATH): give --pg-bin")


def pg_user():
    """PostgreSQL refuses to run as root: as root, run it as user postgres."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise Failure("running as root, and there is no user 'postgres' to run PostgreSQL as")


def run_as(user, argv, log_path, env=None):
    with open(log_path, "ab") as out:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             preexec_fn=preexec(signal.SIGTERM, user), env=env)
    return res.returncode


def pg_dirs(d):
    return os.path.join(d, "pg"), os.path.join(d, "pgsock")


def init_pg(d, pg_bin, user, logs):
    data, sock = pg_dirs(d)
    for path in (data, sock):
        os.makedirs(path, mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    if user is not None:
        probe = subprocess.run(["test", "-w", sock], preexec_fn=preexec(signal.SIGTERM, user))
        if probe.returncode != 0:
            raise Failure(f"user postgres cannot reach {sock}: give a --dir that it can traverse (e.g. under /tmp)")
    if os.path.exists(os.path.join(data, "PG_VERSION")):
        return False
    code = run_as(user, [os.path.join(pg_bin, "initdb"), "-D", data, "-U", "shop", "-A", "trust",
                         "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"],
                  os.path.join(logs, "initdb.log"))
    if code != 0:
        raise Failure(f"initdb failed (code {code}); see {os.path.join(logs, 'initdb.log')}")
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(
            "\n# shop.py\n"
            f"listen_addresses = '{HOST}'\n"
            f"port = {PG_PORT}\n"
            f"unix_socket_directories = '{sock}'\n"
            "max_connections = 100\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
        )
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    return True


def psql(pg_bin, d, db, *args):
    _, sock = pg_dirs(d)
    exe = os.path.join(pg_bin, "psql")
    if not os.path.exists(exe):
        exe = shutil.which("psql") or "psql"
    env = dict(os.environ, PGCLIENTENCODING="UTF8")
    # The unix socket: the shop's own set-up is not TCP traffic.
    return subprocess.run([exe, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", sock, "-p", str(PG_PORT),
                           "-U", "shop", "-d", db, *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)


def load_schema(pg_bin, d):
    deadline = time.monotonic() + START_TIMEOUT
    while True:  # the socket exists a little before connections are accepted
        res = psql(pg_bin, d, "postgres", "-tA", "-c", "SELECT 1 FROM pg_database WHERE datname = 'shop'")
        if res.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise Failure(f"psql cannot connect: {res.stderr.strip()}")
        time.sleep(0.1)
    if res.stdout.strip() != "1":
        res = psql(pg_bin, d, "postgres", "-c", "CREATE DATABASE shop OWNER shop")
        if res.returncode != 0:
            raise Failure(f"CREATE DATABASE shop failed: {res.stderr.strip()}")
    res = psql(pg_bin, d, "shop", "-f", os.path.join(HERE, "schema.sql"))
    if res.returncode != 0:
        raise Failure(f"loading schema.sql failed: {res.stderr.strip()}")


def pg_stop(pg_bin, d, user, logs):
    data, _ = pg_dirs(d)
    return run_as(user, [os.path.join(pg_bin, "pg_ctl"), "stop", "-D", data, "-m", "fast", "-w", "-t", "30"],
                  os.path.join(logs, "postgres.log"))


# --- up -------------------------------------------------------------------------

STOP = None


def on_signal(signum, frame):
    global STOP
    STOP = signum


def up(args):
    d = os.path.abspath(args.dir)
    logs, run = os.path.join(d, "logs"), os.path.join(d, "run")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Fail fast, before anything is written or started.
    ports = [("postgres", PG_PORT), ("redis", REDIS_PORT)] + [(n, p) for n, _, p in SERVICES if p]
    for name, port in ports:
        check_free(port, name)
    for tool in ("node", "java", "redis-server"):
        if shutil.which(tool) is None:
            raise Failure(f"{tool} is not on PATH")
    pg_bin = find_pg_bin(args.pg_bin)
    user = pg_user()

    for path in (d, logs, run):
        os.makedirs(path, exist_ok=True)
    os.chmod(d, os.stat(d).st_mode | 0o711)  # PostgreSQL (another user, as root) goes through it
    with open(os.path.join(run, "shop.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    for stale in glob.glob(os.path.join(run, "*.ready")):
        os.unlink(stale)

    started = time.monotonic()
    children = []
    pg = None
    try:
        t = time.monotonic()
        fresh = init_pg(d, pg_bin, user, logs)
        if fresh:
            log(f"initdb in {time.monotonic() - t:.1f} s")
        data, _ = pg_dirs(d)
        pg = Child("postgres", [os.path.join(pg_bin, "postgres"), "-D", data], logs, run, cwd=d, user=user,
                   death_signal=signal.SIGINT, stop_signal=signal.SIGINT)
        redis = Child("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", HOST, "--save", "",
                                "--appendonly", "no", "--dir", d], logs, run, cwd=d)
        children.append(redis)
        wait_until(pg, lambda: listening(PG_PORT), f"listen on {PG_PORT}")
        load_schema(pg_bin, d)
        wait_until(redis, lambda: listening(REDIS_PORT), f"listen on {REDIS_PORT}")
        log(f"postgres and redis up in {time.monotonic() - t:.1f} s")

        env = dict(os.environ, SHOP_DIR=d, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        # All started in order at once (Java takes seconds to start: the
        # rest start meanwhile), then waited for in the same order.
        pending = []
        for name, argv, port in SERVICES:
            child = Child(name, argv, logs, run, env=env)
            children.append(child)
            pending.append((child, port, time.monotonic()))
        for child, port, t in pending:
            if port is None:
                ready_file = os.path.join(run, f"{child.name}.ready")
                wait_until(child, lambda: os.path.exists(ready_file), "subscribe")
            else:
                wait_until(child, lambda: listening(port), f"listen on {port}")
            log(f"{child.name} up in {time.monotonic() - t:.1f} s")
        log(f"all up in {time.monotonic() - started:.1f} s")
        print("shop: ready", flush=True)

        while STOP is None:
            for c in [pg] + children:
                if c.proc.returncode is None and not c.alive():
                    log(f"{c.name} exited with code {c.proc.returncode}; see {c.log_path}")
            time.sleep(0.2)
        log(f"signal {signal.Signals(STOP).name}: stopping")
    except Failure as e:
        log(f"error: {e}")
        code = 1
    except Interrupted:
        log(f"signal {signal.Signals(STOP).name} during start-up: stopping")
        code = 0
    else:
        code = 0
    finally:
        stop_all(children, pg, pg_bin, d, user, logs)
        try:
            os.unlink(os.path.join(run, "shop.pid"))
        except FileNotFoundError:
            pass
    return code


def stop_all(children, pg, pg_bin, d, user, logs):
    services = [c for c in children if c.name != "redis"]
    for c in reversed(services):  # the front door first
        c.signal()
    for c in reversed(services):
        c.wait(10)
    for c in children:
        if c.name == "redis":
            c.signal()
            c.wait(10)
    if pg is not None:
        if pg.alive():
            pg_stop(pg_bin, d, user, logs)
        pg.wait(30)
    for stale in glob.glob(os.path.join(d, "run", "*.ready")):
        os.unlink(stale)


# --- down ----------------------------------------------------------------------


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kill_and_wait(pid, sig, timeout):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cmdline(pid) in (None, ""):  # gone (or a zombie)
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def down(args):
    d = os.path.abspath(args.dir)
    run = os.path.join(d, "run")
    # Only processes whose command line is still what was started.
    expect = {"shop": "shop.py", "postgres": "postgres", "redis": "redis-server"}
    for name, argv, _ in SERVICES:
        expect[name] = argv[-1]
    order = ["shop"] + [n for n, _, _ in reversed(SERVICES)] + ["redis", "postgres"]
    stopped = []
    for name in order:
        path = os.path.join(run, f"{name}.pid")
        pid = read_pid(path)
        if name == "postgres":
            pid = pid or read_pid(os.path.join(d, "pg", "postmaster.pid"))
        if pid is not None:
            line = cmdline(pid)
            if line and expect[name] in line:
                sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
                kill_and_wait(pid, sig, 30 if name in ("shop", "postgres") else 10)
                stopped.append(f"{name} ({pid})")
        if os.path.exists(path):
            os.unlink(path)
    for stale in glob.glob(os.path.join(run, "*.ready")):
        os.unlink(stale)
    log("stopped " + (", ".join(stopped) if stopped else "nothing (nothing was running)"))
    return 0


def main():
    p = argparse.ArgumentParser(description="Start or stop the shop example.")
    p.add_argument("command", choices=["up", "down"])
    p.add_argument("--dir", required=True, help="state directory (PostgreSQL data, logs, pidfiles, toggles)")
    p.add_argument("--pg-bin", help="directory of the PostgreSQL binaries (default: from PATH)")
    args = p.parse_args()
    try:
        return up(args) if args.command == "up" else down(args)
    except Failure as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
