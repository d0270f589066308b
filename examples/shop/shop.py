#!/usr/bin/env python3
"""The shop's launcher.

  python3 shop.py up   --dir DIR [--pg-bin PATH]
  python3 shop.py down --dir DIR [--pg-bin PATH]

`up` starts a private PostgreSQL cluster (DIR/pg), Redis and every service,
each its own child process, prints `shop: ready` on stdout once all of them
listen, and then waits: SIGTERM or SIGINT stops everything and exits 0. The
children get SIGTERM (PostgreSQL SIGINT, a fast shutdown) if the launcher
dies. Logs: DIR/logs/NAME.log. The launcher's own record of what it started
(pid, start time and command line of itself and of each child but
PostgreSQL): DIR/run/shop.json, for `down`, which stops whatever a launcher
left behind, and nothing else.

Safe to run as root in a directory that others can write to (/tmp):

- DIR is made fresh (0755), or, if it exists, must be a real directory (not
  a symbolic link) of the invoking user that nobody else can write to, under
  directories that only root or that user can change (or sticky, as /tmp).
  Everything in DIR is made by the launcher with O_NOFOLLOW (and O_EXCL for
  the files it writes whole); a symbolic link in DIR is refused, never
  followed, and nothing is chowned but what the launcher has just made.
- PostgreSQL: TCP (127.0.0.1) only for user `shop` to database `shop`, with
  SCRAM-SHA-256 and a random password made at each `up`; `shop` owns its
  database and is no superuser. The bootstrap superuser is `postgres`, with
  a random password that is then forgotten, reachable only over the unix
  socket, in a directory of mode 0700 of the cluster's user (the launcher
  sets the database up through it, running psql as that user).
- Redis: a random password (requirepass) made at each `up`, given in a 0600
  config file (removed once Redis listens), run as user `redis` if root.
- The services get the passwords in their environment (SHOP_PG_PASSWORD,
  SHOP_REDIS_PASSWORD); no password is on a command line or in a log.

Only the standard library here (the services need psycopg and redis).
"""
import argparse
import base64
import ctypes
import glob
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import stat
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
# Who gets which password (in its environment).
USES_PG = {"orders", "payments", "users"}
USES_REDIS = {"orders", "users", "notifier"}
PASSWORD_VARS = ("SHOP_PG_PASSWORD", "SHOP_REDIS_PASSWORD")

# DIR ends up in PostgreSQL's and Redis's settings: plain characters only.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@%=:-]*\Z")
STATE = "shop.json"  # in DIR/run

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def log(msg):
    print(f"shop: {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


class Interrupted(Exception):
    """SIGTERM or SIGINT during start-up: stop, as after it."""


# --- files and directories ---------------------------------------------------------


def trusted_realpath(path):
    """The real path of path (absolute), following only symbolic links of
    root or of ours: another user's link could send DIR anywhere."""
    euid = os.geteuid()
    todo = [p for p in path.split("/") if p][::-1]
    cur, hops = "/", 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, part)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            raise Failure(f"{nxt} does not exist")
        if not stat.S_ISLNK(st.st_mode):
            cur = nxt
            continue
        if st.st_uid not in (0, euid):
            raise Failure(f"{nxt} (in --dir's path) is a symbolic link of uid {st.st_uid}, neither root nor us: "
                          "not followed; give --dir without it")
        hops += 1
        if hops > 40:
            raise Failure(f"{path}: too many levels of symbolic links")
        target = os.readlink(nxt)
        if target.startswith("/"):
            cur = "/"
        todo.extend([p for p in target.split("/") if p][::-1])
    return cur


def check_ancestors(path):
    """Each directory from / down to path must be one that only root or we
    can change (or a sticky one, as /tmp): else another user could swap
    DIR for something else after it was checked."""
    euid = os.geteuid()
    p = path
    while True:
        st = os.lstat(p)
        if not stat.S_ISDIR(st.st_mode):
            raise Failure(f"{p} is not a directory")
        if st.st_uid not in (0, euid):
            raise Failure(f"{p} (above --dir) belongs to uid {st.st_uid}, neither root nor us (uid {euid}): "
                          "its owner could swap --dir; choose a directory elsewhere (e.g. under /tmp)")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise Failure(f"{p} (above --dir) is writable by others (mode {st.st_mode & 0o7777:04o}) "
                          "and not sticky: choose a directory elsewhere (e.g. under /tmp)")
        if p == "/":
            return
        p = os.path.dirname(p)


def open_dir(name, what, dir_fd=None):
    """An fd of the directory name (relative to dir_fd), refused if it is a
    symbolic link or not a directory; O_NOFOLLOW enforces what lstat saw."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Failure(f"{what} does not exist")
    if stat.S_ISLNK(st.st_mode):
        raise Failure(f"{what} is a symbolic link: refusing it (not followed); remove it or give another --dir")
    if not stat.S_ISDIR(st.st_mode):
        raise Failure(f"{what} is not a directory: refusing it")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        raise Failure(f"cannot open {what}: {e.strerror}")
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise Failure(f"{what} changed while being checked: refusing it")
    return fd


def open_state_dir(arg, create, traversers=()):
    """DIR, checked (and made if create and it does not exist): returns its
    real path and an fd. traversers: users (other than us) that must reach
    into it (PostgreSQL's, Redis's): DIR gets o+x for them."""
    d = os.path.abspath(arg)
    if not SAFE_PATH.match(d) or d == "/":
        raise Failure(f"--dir {arg}: use a path of letters, digits and . _ - + @ % = : only")
    parent, name = os.path.split(d)
    parent = trusted_realpath(parent)
    d = os.path.join(parent, name)
    if not SAFE_PATH.match(d):
        raise Failure(f"--dir {arg} is {d}: use a path of letters, digits and . _ - + @ % = : only")
    check_ancestors(parent)
    created = False
    if create:
        try:
            os.mkdir(d, 0o700)  # never follows a link: EEXIST if anything is there
            created = True
        except FileExistsError:
            pass
    fd = open_dir(d, f"--dir {d}")
    st = os.fstat(fd)
    euid = os.geteuid()
    try:
        if created:
            os.fchmod(fd, 0o755)
        else:
            if st.st_uid != euid:
                raise Failure(f"--dir {d} exists and belongs to uid {st.st_uid}, not to us (uid {euid}): "
                              "refusing it (someone else could have prepared it); remove it or give another --dir")
            if st.st_mode & 0o022:
                raise Failure(f"--dir {d} exists and is writable by group or others (mode "
                              f"{st.st_mode & 0o7777:04o}): refusing it; remove it or give another --dir")
            if traversers and st.st_mode & 0o011 != 0o011:
                os.fchmod(fd, (st.st_mode & 0o7777) | 0o011)  # ours, checked: PostgreSQL and Redis go through it
    except BaseException:
        os.close(fd)
        raise
    return d, fd


def subdir(dfd, d, name, mode, owner=None):
    """DIR/name, a directory of owner (a pwd entry; None: us) with at most
    mode: made (and then, only then, chowned) if missing; if it exists it
    must already be so, else refused. Returns its path."""
    path = os.path.join(d, name)
    uid, gid = (owner.pw_uid, owner.pw_gid) if owner else (os.geteuid(), os.getegid())
    try:
        os.mkdir(name, 0o700, dir_fd=dfd)
        created = True
    except FileExistsError:
        created = False
    fd = open_dir(name, path, dir_fd=dfd)
    try:
        st = os.fstat(fd)
        if created:
            os.fchmod(fd, mode)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)  # what we just made, by its fd
        else:
            who = owner.pw_name if owner else f"uid {uid}"
            if st.st_uid != uid:
                raise Failure(f"{path} exists and belongs to uid {st.st_uid}, not to {who}: refusing it; "
                              "remove it or give another --dir")
            if st.st_mode & 0o777 & ~mode:
                raise Failure(f"{path} exists with mode {st.st_mode & 0o7777:04o}, more open than "
                              f"{mode:04o}: refusing it; remove it or give another --dir")
    finally:
        os.close(fd)
    return path


def new_file(d, name, data, mode, owner=None):
    """DIR/name written whole by us, fresh: whatever had the name is removed
    first (a link itself, never its target), then O_CREAT|O_EXCL|O_NOFOLLOW.
    owner: chowned to it by the fd. Returns its path."""
    path = os.path.join(d, name)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise Failure(f"cannot replace {path}: {e.strerror}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return path


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_log(logs, name):
    """DIR/logs/name.log for appending: never through a link, ours, a file."""
    path = os.path.join(logs, f"{name}.log")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise Failure(f"cannot open {path}: {e.strerror}")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise Failure(f"{path} is not a file of ours: refusing it")
    return fd


# --- process identity -------------------------------------------------------------------


def proc_start(pid):
    """Field 22 of /proc/PID/stat (the start time, in clock ticks since
    boot); None if there is no such process or it is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2:].split()  # from field 3 on
    except (OSError, ValueError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def proc_cmdline(pid):
    """/proc/PID/cmdline as a list of str (a rewritten process title, as
    Redis's, padded with NULs: the padding dropped); None if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    args = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]
    while args and args[-1] == "":
        args.pop()
    return args


def identity(pid, argv):
    return {"pid": pid, "start": proc_start(pid), "cmdlines": [list(argv)]}


def same_process(rec):
    """The process at rec's pid is still the one recorded: same start time
    and a command line recorded for it."""
    start = proc_start(rec["pid"])
    return start is not None and start == rec["start"] and proc_cmdline(rec["pid"]) in rec["cmdlines"]


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


def clean_env(**extra):
    """The launcher's environment without passwords (or libpq's settings), plus extra."""
    env = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARS and not k.startswith("PG")}
    env.update(extra)
    return env


class Child:
    def __init__(self, name, argv, logs, cwd=HERE, env=None, user=None,
                 death_signal=signal.SIGTERM, stop_signal=signal.SIGTERM):
        self.name = name
        self.log_path = os.path.join(logs, f"{name}.log")
        self.stop_signal = stop_signal
        out = open_log(logs, name)
        try:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env if env is not None else clean_env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec(death_signal, user), close_fds=True,
            )
        except OSError as e:
            raise Failure(f"cannot start {name} ({argv[0]}): {e}")
        finally:
            os.close(out)
        # Popen returns once the child has exec'd: its command line is argv.
        self.record = identity(self.proc.pid, argv)

    def seen(self):
        """Adds the command line it shows now (Redis rewrites its title)."""
        line = proc_cmdline(self.proc.pid)
        if line is not None and line not in self.record["cmdlines"]:
            self.record["cmdlines"].append(line)

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig=None):
        # Our own child, not reaped yet: its pid cannot have been reused.
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

    def failure(self, what):
        tail = ""
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()[-15:]
            tail = "".join(f"\n    | {line}" for line in lines)
        except OSError:
            pass
        return Failure(f"{self.name} {what}; see its log {self.log_path}{tail}")


def write_state(run, launcher, children):
    """DIR/run/shop.json: what this launcher started, for `down`. Written
    fresh (O_EXCL|O_NOFOLLOW) and renamed over the last one."""
    state = {"launcher": launcher, "children": {c.name: c.record for c in children}}
    tmp = f"{STATE}.{os.getpid()}.tmp"
    new_file(run, tmp, json.dumps(state, indent=1).encode(), 0o644)
    os.replace(os.path.join(run, tmp), os.path.join(run, STATE))


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


# --- users ---------------------------------------------------------------------------


def pg_user():
    """PostgreSQL refuses to run as root: as root, run it as user postgres."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise Failure("running as root, and there is no user 'postgres' to run PostgreSQL as")


def redis_user():
    """As root, Redis runs as user redis if there is one (else as us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("redis")
    except KeyError:
        return None


def can_write(user, path):
    """Whether user (another) can reach and write path (all of DIR's parents traversable)."""
    if user is None:
        return True
    res = subprocess.run(["test", "-w", path], env=clean_env(), stdin=subprocess.DEVNULL,
                         preexec_fn=preexec(signal.SIGTERM, user))
    return res.returncode == 0


def run_as(user, argv, logs, log_name, env=None, input=None):
    out = open_log(logs, log_name)
    try:
        res = subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec(signal.SIGTERM, user),
                             env=env if env is not None else user_env(user))
    finally:
        os.close(out)
    return res.returncode


def user_env(user, **extra):
    env = clean_env(**extra)
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return env


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


def scram_verifier(password, iterations=4096):
    """The SCRAM-SHA-256 verifier PostgreSQL stores for password (RFC 5802,
    as libpq's PQencryptPasswordConn makes it): set with ALTER ROLE, so the
    password itself never reaches the server, its logs or a command line.
    (A token_urlsafe password is ASCII: SASLprep leaves it as is.)"""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def init_pg(d, data, pg_bin, user, logs):
    """initdb, if DIR/pg holds no cluster yet: bootstrap superuser postgres
    (password: random, from a 0600 file removed right after, then
    forgotten), scram-sha-256 on TCP, trust on the unix socket (its
    directory is 0700, the cluster user's)."""
    if os.path.exists(os.path.join(data, "PG_VERSION")):
        return False
    pwfile = new_file(d, "initdb.pw", (secrets.token_urlsafe(32) + "\n").encode(), 0o600, user)
    try:
        code = run_as(user, [os.path.join(pg_bin, "initdb"), "-D", data, "-U", "postgres", "--pwfile", pwfile,
                             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-locale",
                             "--no-sync", "--no-instructions"], logs, "initdb")
    finally:
        remove(pwfile)
    if code != 0:
        raise Failure(f"initdb failed (code {code}); see {os.path.join(logs, 'initdb.log')}")
    return True


def pg_argv(pg_bin, data, sock, hba):
    """The postmaster's command line: the shop's settings as -c options (the
    launcher writes nothing into the cluster's directory, which is
    PostgreSQL's user's), pg_hba.conf the launcher's own, DIR/pg_hba.conf."""
    settings = {
        "listen_addresses": HOST,
        "port": str(PG_PORT),
        "unix_socket_directories": sock,
        "unix_socket_permissions": "0700",
        "hba_file": hba,
        "password_encryption": "scram-sha-256",
        "max_connections": "100",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    argv = [os.path.join(pg_bin, "postgres"), "-D", data]
    for k, v in settings.items():
        argv += ["-c", f"{k}={v}"]
    return argv


# Who may connect: the shop's services over TCP as shop, with the password;
# the launcher (psql, as the cluster's user) over the 0700 socket directory.
PG_HBA = """\
# shop.py: made at each `up`.
local all  all                 trust
host  shop shop 127.0.0.1/32   scram-sha-256
host  all  all  0.0.0.0/0      reject
host  all  all  ::/0           reject
"""


def psql(pg_bin, sock, user, script=None, command=None):
    """psql over the unix socket, as the cluster's user, as role postgres;
    the script on stdin (never on the command line)."""
    exe = os.path.join(pg_bin, "psql")
    if not os.path.exists(exe):
        exe = shutil.which("psql") or "psql"
    argv = [exe, "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h", sock, "-p", str(PG_PORT),
            "-U", "postgres", "-d", "postgres"]
    if command is not None:
        argv += ["-tA", "-c", command]
    return subprocess.run(argv, input=script if script is not None else "", capture_output=True, text=True,
                          env=user_env(user, PGCLIENTENCODING="UTF8"), preexec_fn=preexec(signal.SIGTERM, user))


def setup_db(pg_bin, sock, user, password):
    """Role shop (login, no superuser) with this `up`'s password, database
    shop owned by it, schema.sql loaded as shop. Over the unix socket: the
    shop's own set-up is not TCP traffic."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:  # the socket exists a little before connections are accepted
        res = psql(pg_bin, sock, user, command="SELECT 1")
        if res.returncode == 0:
            break
        if 'role "postgres" does not exist' in res.stderr:
            raise Failure("DIR/pg was made by an older shop.py (whose superuser was shop): remove DIR/pg")
        if time.monotonic() > deadline:
            raise Failure(f"psql cannot connect: {res.stderr.strip()}")
        if STOP:
            raise Interrupted()
        time.sleep(0.1)
    verifier = scram_verifier(password)
    with open(os.path.join(HERE, "schema.sql"), encoding="utf-8") as f:
        schema = f.read()
    script = (
        # Neither statement nor verifier in the server's log, even on an error.
        "SET log_statement = 'none';\n"
        "SET log_min_error_statement = 'panic';\n"
        "SELECT 'CREATE ROLE shop' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop') \\gexec\n"
        "ALTER ROLE shop WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
        f"PASSWORD '{verifier}';\n"
        "SELECT 'CREATE DATABASE shop OWNER shop' "
        "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'shop') \\gexec\n"
        "\\connect shop\n"
        "SET ROLE shop;\n" + schema
    )
    res = psql(pg_bin, sock, user, script=script)
    if res.returncode != 0:
        err = res.stderr.replace(verifier, "***").strip()
        raise Failure(f"setting up database shop failed: {err} "
                      "(if DIR/pg was made by an older shop.py, remove DIR/pg)")


def pg_stop(pg_bin, data, user, logs):
    """pg_ctl stop, as the cluster's user: it signals the postmaster of
    postmaster.pid, with that user's rights only."""
    return run_as(user, [os.path.join(pg_bin, "pg_ctl"), "stop", "-D", data, "-m", "fast", "-w", "-t", "30"],
                  logs, "postgres")


# --- Redis ------------------------------------------------------------------------------


def redis_conf(rdir, password):
    return (
        "# shop.py: made at each `up` (0600), removed once Redis listens.\n"
        f"port {REDIS_PORT}\n"
        f"bind {HOST}\n"
        "protected-mode yes\n"
        'save ""\n'
        "appendonly no\n"
        f'dir "{rdir}"\n'
        f'requirepass "{password}"\n'
    ).encode()


# --- up -------------------------------------------------------------------------

STOP = None


def on_signal(signum, frame):
    global STOP
    STOP = signum


def up(args):
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
    pg_as, redis_as = pg_user(), redis_user()

    d, dfd = open_state_dir(args.dir, create=True, traversers=[u for u in (pg_as, redis_as) if u])
    layout = [("logs", 0o755, None), ("run", 0o755, None), ("pg", 0o700, pg_as), ("pgsock", 0o700, pg_as),
              ("redis", 0o700, redis_as)]
    try:
        # What exists already is checked first, all of it: a refusal makes nothing.
        for name, mode, owner in layout:
            if os.path.lexists(os.path.join(d, name)):
                subdir(dfd, d, name, mode, owner)
        logs, run, data, sock, rdir = (subdir(dfd, d, name, mode, owner) for name, mode, owner in layout)
    finally:
        os.close(dfd)
    if not can_write(pg_as, sock):
        raise Failure(f"user postgres cannot reach {sock}: give a --dir that it can traverse (e.g. under /tmp)")
    if not can_write(redis_as, rdir):
        raise Failure(f"user redis cannot reach {rdir}: give a --dir that it can traverse (e.g. under /tmp)")

    launcher = identity(os.getpid(), proc_cmdline(os.getpid()))
    write_state(run, launcher, [])
    for entry in os.listdir(run):
        if entry.endswith(".ready"):
            remove(os.path.join(run, entry))

    # This run's passwords: in memory, the 0600 Redis config, the services'
    # environment; PostgreSQL gets a SCRAM verifier.
    pg_password = secrets.token_urlsafe(32)
    redis_password = secrets.token_urlsafe(32)

    started = time.monotonic()
    children = []
    pg = None
    conf = None
    try:
        t = time.monotonic()
        if init_pg(d, data, pg_bin, pg_as, logs):
            log(f"initdb in {time.monotonic() - t:.1f} s")
        hba = new_file(d, "pg_hba.conf", PG_HBA.encode(), 0o644)
        pg = Child("postgres", pg_argv(pg_bin, data, sock, hba), logs, cwd=data, user=pg_as,
                   env=user_env(pg_as), death_signal=signal.SIGINT, stop_signal=signal.SIGINT)
        conf = new_file(d, "redis.conf", redis_conf(rdir, redis_password), 0o600, redis_as)
        redis = Child("redis", ["redis-server", conf], logs, cwd=rdir, user=redis_as, env=user_env(redis_as))
        children.append(redis)
        write_state(run, launcher, children)
        wait_until(pg, lambda: listening(PG_PORT), f"listen on {PG_PORT}")
        setup_db(pg_bin, sock, pg_as, pg_password)
        wait_until(redis, lambda: listening(REDIS_PORT), f"listen on {REDIS_PORT}")
        remove(conf)  # read: the password is in Redis's memory now
        redis.seen()
        write_state(run, launcher, children)
        log(f"postgres and redis up in {time.monotonic() - t:.1f} s")

        base = clean_env(SHOP_DIR=d, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        # All started in order at once (Java takes seconds to start: the
        # rest start meanwhile), then waited for in the same order.
        pending = []
        for name, argv, port in SERVICES:
            env = dict(base)
            if name in USES_PG:
                env["SHOP_PG_PASSWORD"] = pg_password
            if name in USES_REDIS:
                env["SHOP_REDIS_PASSWORD"] = redis_password
            child = Child(name, argv, logs, env=env)
            children.append(child)
            pending.append((child, port, time.monotonic()))
        write_state(run, launcher, children)
        for child, port, t in pending:
            if port is None:
                ready_file = os.path.join(run, f"{child.name}.ready")
                wait_until(child, lambda: os.path.lexists(ready_file), "subscribe")
            else:
                wait_until(child, lambda: listening(port), f"listen on {port}")
            child.seen()
            log(f"{child.name} up in {time.monotonic() - t:.1f} s")
        write_state(run, launcher, children)
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
        if conf is not None:
            remove(conf)
        stop_all(children, pg, pg_bin, data, pg_as, logs)
        for entry in os.listdir(run):
            if entry.endswith(".ready"):
                remove(os.path.join(run, entry))
        remove(os.path.join(run, STATE))
    return code


def stop_all(children, pg, pg_bin, data, pg_as, logs):
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
            pg_stop(pg_bin, data, pg_as, logs)
        pg.wait(30)  # our own child: a SIGKILL past that is to it


# --- down ----------------------------------------------------------------------


def pidfd_open(pid):
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    except (AttributeError, OSError):
        return None  # no pidfd here: plain kill(2), after the same checks


def send(pidfd, pid, sig):
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def gone_within(pidfd, rec, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if pidfd is not None:
            p = select.poll()
            p.register(pidfd, select.POLLIN)
            if p.poll(100):  # readable once the process has exited
                return True
        else:
            time.sleep(0.1)
        if not same_process(rec):
            return True
        if time.monotonic() > deadline:
            return False


def stop_recorded(name, rec, sig, timeout):
    """Stops the process recorded as rec, if it still is the one the
    launcher started (same start time and command line), checked again
    before a SIGKILL. With a pidfd, held from before the first check, the
    signals cannot reach another process that took the pid since."""
    if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int) or rec["pid"] <= 1:
        return False
    pid = rec["pid"]
    pidfd = pidfd_open(pid)
    if pidfd == -1:
        return False
    try:
        if not same_process(rec):
            return False
        send(pidfd, pid, sig)
        if not gone_within(pidfd, rec, timeout):
            if same_process(rec):
                log(f"{name} ({pid}) did not stop in {timeout:.0f} s: SIGKILL")
                send(pidfd, pid, signal.SIGKILL)
                gone_within(pidfd, rec, 5)
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def read_state(run):
    """DIR/run/shop.json, if it is a file of ours that only we can write."""
    path = os.path.join(run, STATE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Failure(f"cannot open {path}: {e.strerror} (a link? refused)")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise Failure(f"{path} is not a file of ours that only we can write: ignoring it, stopping nothing")
        try:
            return json.loads(f.read())
        except ValueError:
            raise Failure(f"{path} is not JSON: stopping nothing")


def down(args):
    d, dfd = open_state_dir(args.dir, create=False)  # ours, only ours to write, else refused
    try:
        # Each checked as `up` checks it (never made here: refused if missing).
        has = lambda name: os.path.lexists(os.path.join(d, name))  # noqa: E731
        run = subdir(dfd, d, "run", 0o755) if has("run") else None
        logs = subdir(dfd, d, "logs", 0o755) if has("logs") else None
        pg_as = pg_user()
        data = subdir(dfd, d, "pg", 0o700, pg_as) if has("pg") else None
    finally:
        os.close(dfd)
    stopped = []

    state = read_state(run) if run else None
    if state:
        launcher = state.get("launcher")
        # The launcher first: it stops its children itself.
        if stop_recorded("shop", launcher, signal.SIGTERM, 90):
            stopped.append(f"shop ({launcher['pid']})")
        children = state.get("children") or {}
        order = [n for n, _, _ in reversed(SERVICES)] + ["redis"]
        for name in order:
            rec = children.get(name)
            if rec and stop_recorded(name, rec, signal.SIGTERM, 10):
                stopped.append(f"{name} ({rec['pid']})")
        remove(os.path.join(run, STATE))
    if run:
        for entry in os.listdir(run):
            if entry.endswith(".ready"):
                remove(os.path.join(run, entry))
        remove(os.path.join(d, "redis.conf"))
    # PostgreSQL: never by a pid from its postmaster.pid (its user can write
    # that file), only by pg_ctl run as its user.
    if data and os.path.lexists(os.path.join(data, "postmaster.pid")):
        pg_bin = find_pg_bin(args.pg_bin)
        if logs:
            code = pg_stop(pg_bin, data, pg_as, logs)
        else:
            code = subprocess.run([os.path.join(pg_bin, "pg_ctl"), "stop", "-D", data, "-m", "fast", "-w",
                                   "-t", "30"], stdin=subprocess.DEVNULL, env=user_env(pg_as),
                                  preexec_fn=preexec(signal.SIGTERM, pg_as)).returncode
        if code == 0:
            stopped.append("postgres (pg_ctl stop)")
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
