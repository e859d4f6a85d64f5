"""A private MariaDB (Debian's mariadb-server, InnoDB) and sysbench for the VM tier's commit stream:
a data directory made here once, with conformance/mariadb_stream.lua's table and seed rows, that the
guest copies onto each volume."""
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
SHARE = "/usr/share/mysql"
STREAM = os.path.join(HERE, "mariadb_stream.lua")
# The server's options everywhere: a small redo log and buffer pool, and a durable commit
# (innodb_flush_log_at_trx_commit=1: the redo log is flushed at each commit).
SERVER_OPTIONS = ["--no-defaults", "--skip-networking", "--user=root", "--innodb-log-file-size=32M",
                  "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=1"]


def available():
    return all(os.path.exists(p) for p in (MARIADBD, INSTALL_DB)) and shutil.which("sysbench") is not None


def sysbench_argv(socket, *args):
    return ["sysbench", STREAM, "--db-driver=mysql", f"--mysql-socket={socket}", "--mysql-user=root",
            "--mysql-db=sb", *args]


@contextlib.contextmanager
def server(datadir, work):
    """A server on `datadir`, its socket, log and pid file in `work`; yields the socket's path. The
    server is stopped when the block ends, on failure too."""
    socket = os.path.join(work, "sock")
    proc = subprocess.Popen([MARIADBD, *SERVER_OPTIONS, f"--datadir={datadir}", f"--socket={socket}",
                             f"--log-error={work}/err.log", f"--pid-file={work}/pid", f"--lc-messages-dir={SHARE}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd did not start: {open(work + '/err.log').read()[-2000:]}")
            time.sleep(0.1)
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_datadir(datadir, seed=2000):
    """A fresh data directory with the database `sb` and the stream's table holding `seed` rows.
    The server it starts here is stopped before this returns, on failure too."""
    subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={datadir}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db", "--innodb-log-file-size=32M"],
                   check=True, capture_output=True, timeout=300)
    work = tempfile.mkdtemp(prefix="swell-mdb-")
    try:
        with server(datadir, work) as socket:
            subprocess.run(["mariadb", f"--socket={socket}", "-uroot", "-e", "CREATE DATABASE sb"],
                           check=True, capture_output=True, timeout=60)
            subprocess.run(sysbench_argv(socket, f"--seed={seed}", "prepare"), check=True, capture_output=True,
                           timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stage(share):
    """share/mariadb: the data directory, the server's messages and character sets, and the stream."""
    root = os.path.join(share, "mariadb")
    os.makedirs(os.path.join(root, "share"))
    make_datadir(os.path.join(root, "data"))
    for name in ("english", "charsets"):
        shutil.copytree(os.path.join(SHARE, name), os.path.join(root, "share", name))
    shutil.copy2(STREAM, os.path.join(root, "stream.lua"))


def commits(text):
    """[(start ms, end ms)] from the stream's commit log."""
    return [tuple(float(x) for x in line.split()) for line in text.splitlines() if line.strip()]


def longest(spans):
    return max((end - start for start, end in spans), default=0.0)


def overlapping(spans, windows):
    """The commits that were in flight during any of the windows [(start, end)]."""
    return [(s, e) for s, e in spans if any(s < we and e > ws for ws, we in windows)]


def idle_seconds(spans, start, end):
    """The whole seconds in [start, end) in which no commit ended."""
    ends = [e for _, e in spans]
    out = 0
    t = start
    while t + 1000 <= end:
        if not any(t <= e < t + 1000 for e in ends):
            out += 1
        t += 1000
    return out
