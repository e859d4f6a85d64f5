"""A private PostgreSQL 15 (Debian's postgresql-15) for the end-to-end tests: initdb on a directory,
a server on a unix socket only, psql and pgbench against it, all run as the `postgres` user."""
import os
import shutil
import subprocess
import time

PG_BIN = "/usr/lib/postgresql/15/bin"


# The guest's part of the VM tier's database tests: PostgreSQL 15 at the paths Debian's build
# expects (staged into the share by test_vm_db.stage_postgres), its user, and `as_pg` to run as it.
GUEST_SETUP = r'''
mkdir -p /usr/lib/postgresql /usr/share/postgresql /usr/share/zoneinfo
cp -a /share/pg/lib15 /usr/lib/postgresql/15
cp -a /share/pg/share15 /usr/share/postgresql/15
cp -a /share/pg/zoneinfo/. /usr/share/zoneinfo/
echo "postgres:x:70:70:postgres:/tmp:/bin/sh" >> /etc/passwd
echo "postgres:x:70:" >> /etc/group
PGBIN=/usr/lib/postgresql/15/bin
as_pg() { su -s /bin/sh postgres -c "LD_LIBRARY_PATH=$LD_LIBRARY_PATH TZ=UTC $*"; }
# pg_ctl's stop returns once the postmaster has removed its pid file, a moment before the process
# exits, and until then its working directory (the data directory) keeps the filesystem busy: an
# unmount right after failed with EBUSY in CI. So wait for the process too (a zombie has no cwd).
pg_stop() {  # datadir
  pid=$(head -n 1 $1/postmaster.pid 2>/dev/null)
  as_pg $PGBIN/pg_ctl -D $1 -m fast -w -t 300 stop || return $?
  [ -n "$pid" ] || return 0
  i=0; while [ -e /proc/$pid/cwd ]; do i=$((i+1)); [ $i -lt 300 ] || { echo "postmaster $pid still there"; return 1; }; sleep 0.1; done
}
'''


def available():
    return os.path.exists(os.path.join(PG_BIN, "postgres")) and shutil.which("runuser") is not None


def as_postgres(argv, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--"] + argv, **kw)


def open_path_for_postgres(path):
    """Lets the postgres user traverse every directory above `path` (temp dirs are 0700)."""
    parts = os.path.abspath(path).split("/")
    for i in range(2, len(parts)):
        d = "/".join(parts[:i])
        if os.path.isdir(d):
            os.chmod(d, os.stat(d).st_mode | 0o011)


class Server:
    def __init__(self, datadir, port):
        self.datadir = datadir
        self.port = port
        self.sockdir = os.path.join(os.path.dirname(datadir), f"pgsock-{port}")
        self.log = os.path.join(os.path.dirname(datadir), f"pg-{port}.log")

    def initdb(self, waldir=None):
        """initdb; `waldir` puts pg_wal on another directory (another volume), as `initdb --waldir`."""
        for d in [self.datadir] + ([waldir] if waldir else []):
            os.makedirs(d, exist_ok=True)
            open_path_for_postgres(d)
            shutil.chown(d, "postgres", "postgres")
            os.chmod(d, 0o700)
        extra = ["--waldir", waldir] if waldir else []
        as_postgres([f"{PG_BIN}/initdb", "-D", self.datadir, "-A", "trust", "-U", "postgres", "--no-sync", *extra],
                    check=True, capture_output=True)

    def start(self, settings=""):
        open_path_for_postgres(self.datadir)
        os.makedirs(self.sockdir, exist_ok=True)
        shutil.chown(self.sockdir, "postgres", "postgres")
        for path in (self.log,):
            open(path, "a").close()
            shutil.chown(path, "postgres", "postgres")
        opts = f"-k {self.sockdir} -p {self.port} -c listen_addresses='' -c fsync=on -c synchronous_commit=on {settings}"
        as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.datadir, "-l", self.log, "-o", opts, "-w", "-t", "120", "start"],
                    check=True, capture_output=True)

    def stop(self):
        """pg_ctl's stop, then the postmaster's own exit (pg_ctl returns when the pid file is gone,
        a moment before the process that still has the data directory as its cwd)."""
        pid_file = os.path.join(self.datadir, "postmaster.pid")
        if os.path.exists(pid_file):
            with open(pid_file) as f:
                pid = f.readline().strip()
            as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "stop"],
                        check=False, capture_output=True, timeout=120)
            deadline = time.monotonic() + 30
            while pid.isdigit() and os.path.exists(f"/proc/{pid}/cwd") and time.monotonic() < deadline:
                time.sleep(0.05)

    def psql(self, sql):
        out = as_postgres([f"{PG_BIN}/psql", "-h", self.sockdir, "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                           "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def pgbench(self, *args, **kw):
        return as_postgres([f"{PG_BIN}/pgbench", "-h", self.sockdir, "-p", str(self.port), "-U", "postgres", *args,
                            "postgres"], **kw)

    def pgbench_background(self, *args):
        return subprocess.Popen(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pgbench", "-h", self.sockdir, "-p",
                                 str(self.port), "-U", "postgres", *args, "postgres"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def amcheck(self):
        """pg_amcheck over every relation of every database; returns (exit code, output)."""
        out = as_postgres([f"{PG_BIN}/pg_amcheck", "-h", self.sockdir, "-p", str(self.port), "-U", "postgres",
                           "--install-missing", "--all", "--heapallindexed"], capture_output=True, text=True)
        return out.returncode, out.stdout + out.stderr

    def wait_ready(self, seconds=60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = as_postgres([f"{PG_BIN}/pg_isready", "-h", self.sockdir, "-p", str(self.port)], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"postgres on port {self.port} did not become ready:\n{open(self.log).read()[-3000:]}")
