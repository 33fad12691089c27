"""The production stack on one machine, natively on 127.0.0.1: what `make stack` starts and the
stack test runs against. No Docker: each piece is the real server, or a stand-in that speaks the
same protocol.

- PostgreSQL: a throwaway cluster (initdb, pg_ctl) with the databases `prefect` and `mlflow`;
  its password comes from `$ADAPTFLOW_STACK_PG_PASSWORD` or is generated, kept in the state
  folder (mode 0600) and handed to the servers through their environment, never on a command line.
- S3: moto's server standing in for MinIO, with one bucket.
- The Prefect server on PostgreSQL, behind its basic authentication, and a process work pool with one worker.
- The MLflow tracking server on PostgreSQL, with MLflow's `basic-auth` app (users in a SQLite file in the
  state folder), serving artifacts by proxy into `s3://<bucket>/mlartifacts`.
- Credentials: the Prefect auth string and the MLflow admin password are generated at each start (random),
  kept in the state folder (mode 0600) and in `env`, which clients `source`; the worker gets them the
  same way, from its environment. Nothing on the loopback ports answers without them (but `/health`).
- The project's DVC remote: `s3://<bucket>/dvc`, made the project's default in `.dvc/config.local`
  (the committed `.dvc/config` keeps its local folder as the default once the stack stops).

`start` (`adaptflow stack up`) picks free loopback ports, waits until each service answers, and writes into the state
folder (default `.stack/`) one log per service, `state.json` (what it started: what `stop` reads)
and `env` (export lines for clients: `source .stack/env`). The services' temp folder (`TMPDIR`: the
worker's per-run folders, the flows' own) is `tmp/` in the state folder too. A start that fails
midway stops what it had started and names the failing service with the end of its log. `stop`
ends every process it started, process groups and children included, checks that none is left,
and deletes the cluster and the temp folder.
The stack is ephemeral: moto keeps objects in memory, so the cluster goes with them.

    adaptflow stack up [--state-dir .stack] [--project .]     (make stack)
    adaptflow stack status
    adaptflow stack down                                      (make stack-down)

Which processes a service left, and stopping them, is `adaptflow.app.processes` (psutil). This module stays
one file (about 600 lines) on purpose: `start` calls each service's starter and `stop` through this module's
names, so a test or a benchmark replaces one service (a broken MLflow) and sees the whole start fail and clean up.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adaptflow import env
from adaptflow.app.processes import (
    CHILDREN, HOST, alive, free_port, http_json, http_ok, port_open, process_tree, start_time, tail, terminate, write_private,
)

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(".stack")
BUCKET = "adaptflow"
POOL = "adaptflow-process"
DVC_REMOTE = "stack"
PG_USER = "adaptflow"
DATABASES = ("prefect", "mlflow")
#: moto accepts any credentials; clients still need some, and no real account is ever touched.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "adaptflow-local", "AWS_SECRET_ACCESS_KEY": "adaptflow-local-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}
#: The Prefect user name in the auth string and the MLflow admin user the stack creates.
STACK_USER = "adaptflow"
#: Secret files in the state folder (mode 0600), generated at each start; `stop` deletes them.
SECRET_FILES = ("pg-password", "prefect-auth", "mlflow-password", "mlflow-flask-key")
#: The order services start in; `stop` goes backwards (the worker first, PostgreSQL last).
SERVICES = ("s3", "postgres", "prefect", "mlflow", "worker")
#: The services that listen on a port (the worker only polls the Prefect API).
LISTENING = ("s3", "postgres", "prefect", "mlflow")
BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """The stack could not start or stop; the message names the service and quotes its log.
    After a failed start, `stopped` lists the processes that start had started and stop ended."""

    stopped: list[Proc] = []


class ServiceFailed(StackError):
    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service, self.reason = service, reason


@dataclass
class Proc:
    """One started process: its pid leads its own session and process group."""

    name: str
    pid: int
    log: str
    port: int | None = None
    started: float | None = None  # its start time (processes.start_time): a reused pid is not this process

    def running(self) -> bool:
        return alive(self.pid) and (self.started is None or start_time(self.pid) == self.started)


@dataclass
class Stack:
    """A started (or partly started) stack; `state.json` is this, serialized."""

    state_dir: Path
    project: Path
    bucket: str = BUCKET
    pool: str = POOL
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    pg_cluster: str | None = None  # the cluster's folder, deleted by stop
    pg_as_postgres: bool = False  # running as root: PostgreSQL runs as the `postgres` user
    dvc_remote: str | None = None  # the remote start added to the project's .dvc/config.local
    started: bool = False

    # --- what clients use ---------------------------------------------------------------------

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.ports['prefect']}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs}

    def secret(self, name: str) -> str:
        """One of the stack's generated secrets (SECRET_FILES)."""
        return (self.state_dir / name).read_text()

    def prefect_auth_header(self) -> dict[str, str]:
        """The header Prefect's server asks for (basic authentication with the auth string)."""
        import base64

        return {"Authorization": "Basic " + base64.b64encode(self.secret("prefect-auth").encode()).decode()}

    def client_env(self) -> dict[str, str]:
        """The variables that point Prefect, MLflow, boto3 and DVC clients at this stack, with their credentials."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_API_AUTH_STRING": self.secret("prefect-auth"),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": STACK_USER,
            "MLFLOW_TRACKING_PASSWORD": self.secret("mlflow-password"),
            **S3_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.s3_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_EC2_METADATA_DISABLED": "true",  # no credential lookups on 169.254.169.254
            "ADAPTFLOW_STACK_BUCKET": self.bucket,
            "ADAPTFLOW_STACK_POOL": self.pool,
            "ADAPTFLOW_STACK_DVC_REMOTE": f"{DVC_REMOTE} s3://{self.bucket}/dvc",
            "ADAPTFLOW_ROOT": str(self.project),
        }

    def stop(self) -> list[Proc]:
        return stop(self.state_dir)

    # --- state file -----------------------------------------------------------------------------

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def temp(self) -> Path:
        """The services' temp folder, so that what they leave behind goes with the stack."""
        return self.state_dir / "tmp"

    def save(self) -> None:
        data = asdict(self) | {"state_dir": str(self.state_dir), "project": str(self.project)}
        write_private(self.state_dir / "state.json", json.dumps(data, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Stack | None:
        path = state_dir / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["procs"] = [Proc(**p) for p in data["procs"]]
        return cls(**{**data, "state_dir": Path(data["state_dir"]), "project": Path(data["project"])})


# ---------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------


def start(state_dir: Path = DEFAULT_STATE_DIR, project: Path | None = None, *, bucket: str = BUCKET, pool: str = POOL,
          mlflow_workers: int = 1, timeout: float = 240) -> Stack:
    """Start the whole stack and return it once every service answers; `stop(state_dir)` ends it.

    `project` (default: the current project) is where the worker runs flows and whose DVC remote
    is pointed at the bucket. On any failure, what was started is stopped and a StackError names
    the service and quotes the end of its log.

    `mlflow_workers` stays 1: uvicorn (0.54) with `--workers N > 1` binds the listening socket
    itself and loses TCP_NODELAY, which adds ~40 ms to every request on a kept-alive connection
    (uvicorn issue #3149; measured here: log_metric 58 ms with 2 workers, 16 ms with 1).
    """
    state_dir = state_dir.resolve()
    project = (project or env.project_root()).resolve()
    previous = Stack.load(state_dir)
    if previous is not None:
        if any(p.running() for p in previous.procs):
            raise StackError(f"a stack is already running from {state_dir} ({', '.join(previous.pids)}); stop it first "
                             f"({stop_command(state_dir)})")
        stop(state_dir)  # leftovers of a stack that died: clean them up
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    stack = Stack(state_dir, project, bucket=bucket, pool=pool)
    for folder in (stack.logs, stack.temp):  # each start's logs only: a failure quotes its own
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    for name in LISTENING:
        stack.ports[name] = free_port()
    stack.save()
    write_private(state_dir / "prefect-auth", f"{STACK_USER}:{secrets.token_urlsafe(24)}")
    write_private(state_dir / "mlflow-password", secrets.token_urlsafe(24))
    write_private(state_dir / "mlflow-flask-key", secrets.token_urlsafe(32))
    current = "s3"
    try:
        started = time.monotonic()
        _spawn(stack, "s3", [str(BIN / "moto_server"), "-H", HOST, "-p", str(stack.ports["s3"])], _service_env(stack))
        current = "postgres"
        password = _start_postgres(stack, timeout)
        current = "s3"
        _wait(stack, "s3", lambda: _create_bucket(stack), timeout)
        current = "prefect"  # the two servers migrate their schemas at the same time
        _start_prefect(stack, password)
        _start_mlflow(stack, mlflow_workers)
        _wait(stack, "prefect", lambda: http_ok(f"{stack.prefect_api_url}/health"), timeout)
        current = "mlflow"
        _wait(stack, "mlflow", lambda: http_ok(f"{stack.mlflow_url}/health"), timeout)
        current = "worker"
        _start_worker(stack, timeout)
        current = "dvc remote"
        _configure_dvc(stack)
        stack.started = True
        stack.save()
        _write_env_file(stack)
        log.info("stack ready in %.0fs: Prefect %s, MLflow %s, S3 %s", time.monotonic() - started,
                 stack.prefect_api_url, stack.mlflow_url, stack.s3_url)
        return stack
    except BaseException as exc:
        service = exc.service if isinstance(exc, ServiceFailed) else current
        reason = exc.reason if isinstance(exc, ServiceFailed) else f"{type(exc).__name__}: {exc}"
        stopped: list[Proc] = []
        try:
            stopped = stop(state_dir)
        except StackError as stop_exc:
            reason += f"\n(and stopping what had started failed too: {stop_exc})"
        if not isinstance(exc, Exception):
            raise
        logfile = stack.logs / f"{service}.log"
        last_lines = tail(logfile)
        error = StackError(f"the stack did not start: {service} failed: {reason}\n"
                           + (f"--- last lines of {logfile} ---\n{last_lines}" if last_lines else f"(no log at {logfile})"))
        error.stopped = stopped
        raise error from exc


def _service_env(stack: Stack) -> dict[str, str]:
    """The environment of every service: offline, and not pointed at any other stack."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "PG")) and k != "ADAPTFLOW_ROOT"}
    return base | env.OFFLINE_DEFAULTS | env.LOG_DEFAULTS | {"PYTHONUNBUFFERED": "1", "TMPDIR": str(stack.temp)}


def _spawn(stack: Stack, name: str, cmd: list[str], environ: dict[str, str], cwd: Path | None = None) -> Proc:
    logfile = stack.logs / f"{name}.log"
    with logfile.open("ab") as out:
        popen = subprocess.Popen(cmd, env=environ, cwd=cwd or stack.state_dir, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    CHILDREN[popen.pid] = popen
    proc = Proc(name, popen.pid, str(logfile), stack.ports.get(name), start_time(popen.pid))
    stack.procs.append(proc)
    stack.save()
    log.info("started %s (pid %d): %s", name, popen.pid, " ".join(cmd[:3]))
    return proc


def _wait(stack: Stack, name: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` until it is true; fail as soon as any started process has exited, naming it."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if check():
                return
        except (FileNotFoundError, PermissionError):  # a missing program never appears by waiting
            raise
        except Exception as exc:  # not up yet: connection refused, 503, missing table...
            last = f"{type(exc).__name__}: {exc}"
        for proc in stack.procs:
            if not proc.running():
                code = CHILDREN[proc.pid].returncode if proc.pid in CHILDREN else None
                raise ServiceFailed(proc.name, f"exited (pid {proc.pid}{f', code {code}' if code is not None else ''}) "
                                               f"before the stack was ready")
        if time.monotonic() > deadline:
            raise ServiceFailed(name, f"not ready after {timeout:.0f}s{f'; last check: {last}' if last else ''}")
        time.sleep(0.5)


# --- PostgreSQL ----------------------------------------------------------------------------------


def pg_bindir() -> Path:
    """PostgreSQL's programs: `$ADAPTFLOW_PG_BIN`, else `pg_ctl` on PATH, else the newest Debian install."""
    if os.environ.get("ADAPTFLOW_PG_BIN"):
        return Path(os.environ["ADAPTFLOW_PG_BIN"])
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "pg_isready").exists():  # resolves Debian's symlinks
        return Path(found).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not installed:
        raise ServiceFailed("postgres", "no PostgreSQL found: install it (Debian: postgresql) or set ADAPTFLOW_PG_BIN")
    return installed[-1].parent


def _pg_cmd(stack: Stack, program: str, *args: str) -> list[str]:
    cmd = [str(pg_bindir() / program), *args]
    return ["runuser", "-u", "postgres", "--", *cmd] if stack.pg_as_postgres else cmd


def _start_postgres(stack: Stack, timeout: float) -> str:
    """initdb a cluster, start it on the loopback port, create the databases; returns the password."""
    import psycopg2

    password = os.environ.get("ADAPTFLOW_STACK_PG_PASSWORD") or secrets.token_urlsafe(24)
    write_private(stack.state_dir / "pg-password", password)
    logfile = stack.logs / "postgres.log"
    # initdb refuses root: as root the cluster belongs to the `postgres` user, in a folder of its own
    # (project folders owned by root are often closed to other users).
    stack.pg_as_postgres = os.geteuid() == 0
    if stack.pg_as_postgres:
        cluster = Path(tempfile.mkdtemp(prefix="adaptflow-pg-"))
        shutil.chown(cluster, "postgres", "postgres")
    else:
        cluster = stack.state_dir / "postgres"
        cluster.mkdir(mode=0o700)
    stack.pg_cluster = str(cluster)
    stack.save()
    pwfile = cluster / "pwfile"
    write_private(pwfile, password)
    if stack.pg_as_postgres:
        shutil.chown(pwfile, "postgres", "postgres")
    with logfile.open("ab") as out:
        try:
            initdb = subprocess.run(_pg_cmd(stack, "initdb", "-D", str(cluster / "data"), "-U", PG_USER, f"--pwfile={pwfile}",
                                            "-A", "scram-sha-256", "-E", "UTF8", "--no-instructions"),
                                    cwd=cluster, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        finally:
            pwfile.unlink(missing_ok=True)
        if initdb.returncode != 0:
            raise ServiceFailed("postgres", f"initdb exited with {initdb.returncode}")
        # No unix socket: TCP on loopback only. pg_ctl -w returns once the server accepts connections;
        # the server inherits this log file as its stdout.
        options = f"-p {stack.ports['postgres']} -h {HOST} -k ''"
        pg_ctl = subprocess.run(_pg_cmd(stack, "pg_ctl", "start", "-D", str(cluster / "data"), "-w", "-t", str(int(timeout)),
                                        "-o", options), cwd=cluster, stdout=out, stderr=subprocess.STDOUT, timeout=timeout + 10)
    pid_file = cluster / "data" / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        stack.procs.append(Proc("postgres", pid, str(logfile), stack.ports["postgres"], start_time(pid)))
        stack.save()
    if pg_ctl.returncode != 0:
        raise ServiceFailed("postgres", f"pg_ctl start exited with {pg_ctl.returncode}")
    _wait(stack, "postgres", lambda: subprocess.run(
        [str(pg_bindir() / "pg_isready"), "-q", "-h", HOST, "-p", str(stack.ports["postgres"])]).returncode == 0, timeout)
    db = psycopg2.connect(host=HOST, port=stack.ports["postgres"], user=PG_USER, password=password, dbname="postgres")
    try:
        db.autocommit = True
        with db.cursor() as cursor:
            for name in DATABASES:
                cursor.execute(f"CREATE DATABASE {name}")
    finally:
        db.close()
    log.info("postgres ready on %s:%d (databases %s)", HOST, stack.ports["postgres"], ", ".join(DATABASES))
    return password


# --- S3 --------------------------------------------------------------------------------------------


def s3_client(stack: Stack):  # noqa: ANN201 - a boto3 S3 client
    import boto3

    return boto3.client("s3", endpoint_url=stack.s3_url, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])


def _create_bucket(stack: Stack) -> bool:
    s3 = s3_client(stack)
    if stack.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=stack.bucket)
    return True


# --- Prefect and MLflow ------------------------------------------------------------------------------


def _start_prefect(stack: Stack, password: str) -> None:
    from urllib.parse import quote

    url = f"postgresql+asyncpg://{PG_USER}:{quote(password, safe='')}@{HOST}:{stack.ports['postgres']}/prefect"
    environ = _service_env(stack) | {
        "PREFECT_HOME": str(stack.state_dir / "prefect-server"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": url,  # in the environment only, never on a command line
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": stack.prefect_api_url,
        # Every API call but GET /api/health needs `Authorization: Basic base64(<auth string>)`.
        "PREFECT_SERVER_API_AUTH_STRING": stack.secret("prefect-auth"),
    }
    _spawn(stack, "prefect", [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(stack.ports["prefect"])], environ)


def _start_mlflow(stack: Stack, workers: int) -> None:
    environ = _service_env(stack) | S3_CREDENTIALS | {
        # libpq reads PGPASSWORD: the store URI carries no password, so no command line or log shows it.
        # The driver is named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, not psycopg2.
        "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{PG_USER}@{HOST}:{stack.ports['postgres']}/mlflow",
        "PGPASSWORD": (stack.state_dir / "pg-password").read_text(),
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_url,
        "AWS_EC2_METADATA_DISABLED": "true",
        # MLflow's basic-auth app: its settings file, and the admin it creates on first start.
        "MLFLOW_AUTH_CONFIG_PATH": str(_write_mlflow_auth_config(stack)),
        "MLFLOW_AUTH_ADMIN_USERNAME": STACK_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": stack.secret("mlflow-password"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": stack.secret("mlflow-flask-key"),
    } | env.MLFLOW_SERVER_DEFAULTS
    _spawn(stack, "mlflow", [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(stack.ports["mlflow"]),
                             "--workers", str(workers), "--serve-artifacts",
                             "--artifacts-destination", f"s3://{stack.bucket}/mlartifacts"], environ)


def _write_mlflow_auth_config(stack: Stack) -> Path:
    """MLflow's basic-auth settings: users in a SQLite file of the state folder, and users other than
    the admin may read (the admin's password comes from the environment, not from this file)."""
    path = stack.state_dir / "mlflow-auth.ini"
    write_private(path, "[mlflow]\ndefault_permission = READ\n"
                         f"database_uri = sqlite:///{stack.state_dir / 'mlflow-auth.db'}\n"
                         "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def _start_worker(stack: Stack, timeout: float) -> None:
    """The process work pool and one worker polling it, running flows in the project folder."""
    environ = _service_env(stack) | stack.client_env() | {"PREFECT_HOME": str(stack.state_dir / "prefect-worker")}
    with (stack.logs / "worker.log").open("ab") as out:
        created = subprocess.run([str(BIN / "prefect"), "work-pool", "create", stack.pool, "--type", "process", "--overwrite"],
                                 env=environ, cwd=stack.project, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if created.returncode != 0:
        raise ServiceFailed("worker", f"`prefect work-pool create {stack.pool}` exited with {created.returncode}")
    _spawn(stack, "worker", [str(BIN / "prefect"), "worker", "start", "--pool", stack.pool, "--type", "process",
                             "--name", f"{stack.pool}-local"], environ, cwd=stack.project)

    def online() -> bool:
        workers = http_json(f"{stack.prefect_api_url}/work_pools/{stack.pool}/workers/filter", {}, stack.prefect_auth_header())
        return any(w.get("status") == "ONLINE" for w in workers)

    _wait(stack, "worker", online, timeout)


# --- DVC -------------------------------------------------------------------------------------------


def _configure_dvc(stack: Stack) -> None:
    """Make `s3://<bucket>/dvc` the project's default remote, in `.dvc/config.local` (never committed)."""
    if not (stack.project / ".dvc").is_dir():
        log.warning("%s is not a DVC project: no DVC remote configured", stack.project)
        return
    stack.dvc_remote = DVC_REMOTE
    stack.save()
    _dvc(stack, "remote", "add", "--local", "--default", "--force", DVC_REMOTE, f"s3://{stack.bucket}/dvc")
    _dvc(stack, "remote", "modify", "--local", DVC_REMOTE, "endpointurl", stack.s3_url)


def _dvc(stack: Stack, *args: str) -> None:
    environ = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=stack.project, env=environ, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"`dvc {' '.join(args)}` failed in {stack.project}: {(result.stderr or result.stdout).strip()}")


# --- the env file ------------------------------------------------------------------------------------


def _write_env_file(stack: Stack) -> None:
    lines = [
        "# The adaptflow local stack (adaptflow stack up). `source` this file, then run flows as usual.",
        f"# Prefect UI {stack.prefect_api_url.removesuffix('/api')}   MLflow UI {stack.mlflow_url}   S3 (moto) {stack.s3_url}",
        f"# DVC: remote '{DVC_REMOTE}' (s3://{stack.bucket}/dvc) is the default in {stack.project}/.dvc/config.local until `stop`.",
        f"# Deploy to the worker: prefect deploy --all (prefect.yaml, work pool {stack.pool}).",
    ]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in stack.client_env().items()]
    lines += ["# This environment's tools (adaptflow, prefect, mlflow, dvc) come first on PATH.",
              f'export PATH={shlex.quote(str(BIN))}:"$PATH"']
    write_private(stack.state_dir / "env", "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# stop and status
# ---------------------------------------------------------------------------------------------


def stop(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 30) -> list[Proc]:
    """Stop every process the stack in `state_dir` started and check none is left; returns them.

    Works after a partial start: it stops whatever `state.json` lists. Raises StackError naming
    the processes that survived SIGKILL.
    """
    state_dir = state_dir.resolve()
    stack = Stack.load(state_dir)
    if stack is None:
        return []
    pid_file = Path(stack.pg_cluster or "/nonexistent") / "data" / "postmaster.pid"
    if pid_file.exists() and "postgres" not in stack.pids:  # started, but start failed before noting it
        pid = int(pid_file.read_text().split()[0])
        stack.procs.insert(0, Proc("postgres", pid, str(stack.logs / "postgres.log"), None, start_time(pid)))
    # Every process of every service, children included, before anything is signalled: a flow run
    # the worker started in a session of its own must not be orphaned out of sight. A service whose
    # pid now belongs to another process (the stack died long ago) has nothing left to stop.
    trees = {p.name: process_tree(p.pid) if p.running() else [] for p in stack.procs}
    stopped = []
    for proc in reversed(stack.procs):
        if proc.name == "postgres" and stack.pg_cluster and proc.running():
            subprocess.run(_pg_cmd(stack, "pg_ctl", "stop", "-D", str(Path(stack.pg_cluster) / "data"), "-m", "fast", "-w",
                                   "-t", str(int(timeout))), cwd=stack.pg_cluster, capture_output=True, timeout=timeout + 10)
        terminate(trees[proc.name], timeout)
        stopped.append(proc)
        log.info("stopped %s (pid %d)", proc.name, proc.pid)
    left = [f"{name}: pid {pid}" for name, tree in trees.items() for pid in tree if alive(pid)]
    if left:
        raise StackError(f"processes of the stack survived SIGKILL: {', '.join(left)}")
    if stack.dvc_remote:
        try:
            _dvc(stack, "remote", "remove", "--local", stack.dvc_remote)
        except StackError as exc:
            log.warning("could not remove the DVC remote: %s", exc)
    if stack.pg_cluster:
        shutil.rmtree(stack.pg_cluster, ignore_errors=True)
    shutil.rmtree(stack.temp, ignore_errors=True)
    for name in ("state.json", "env", "mlflow-auth.ini", "mlflow-auth.db", *SECRET_FILES):
        (state_dir / name).unlink(missing_ok=True)
    return stopped


def stop_command(state_dir: Path) -> str:
    """The command that stops the stack in `state_dir`, runnable from any shell."""
    return f"{shlex.quote(sys.executable)} -m adaptflow stack down --state-dir {shlex.quote(str(state_dir))}"


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, dict]:
    """Each started service: pid, port, whether its process lives and whether it answers."""
    stack = Stack.load(state_dir.resolve())
    if stack is None:
        return {}
    checks: dict[str, Callable[[], bool]] = {
        "prefect": lambda: http_ok(f"{stack.prefect_api_url}/health"),
        "mlflow": lambda: http_ok(f"{stack.mlflow_url}/health"),
        "s3": lambda: stack.bucket in {b["Name"] for b in s3_client(stack).list_buckets().get("Buckets", [])},
        "postgres": lambda: port_open(stack.ports["postgres"]),
        "worker": lambda: any(w.get("status") == "ONLINE" for w in
                              http_json(f"{stack.prefect_api_url}/work_pools/{stack.pool}/workers/filter", {},
                                         stack.prefect_auth_header())),
    }
    out = {}
    for proc in stack.procs:
        alive = proc.running()
        try:
            healthy = alive and checks[proc.name]()
        except Exception:
            healthy = False
        out[proc.name] = {"pid": proc.pid, "port": proc.port, "alive": alive, "healthy": bool(healthy), "log": proc.log}
    return out


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


#: The older verbs of `python -m adaptflow.app.stack`, kept working.
_VERBS = {"start": "up", "stop": "down"}


def command_line(args: list[str]) -> list[str]:
    """The `adaptflow` command line of `python -m adaptflow.app.stack start|stop|status ...`: `adaptflow stack up|down|status ...`."""
    return ["adaptflow", "stack", *([_VERBS.get(args[0], args[0]), *args[1:]] if args else [])]


if __name__ == "__main__":  # run as a script, this file is the module __main__: the command line imports adaptflow.app.stack
    from adaptflow.app.cli import main

    sys.argv = command_line(sys.argv[1:])
    main()
