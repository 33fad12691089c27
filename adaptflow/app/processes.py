"""Processes, ports and files of the local stack's supervisor (`adaptflow.app.stack`): which processes a
service left running (psutil), whether one still runs, stopping them, and the small I/O helpers around that."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

HOST = "127.0.0.1"

#: Popen objects of the processes this interpreter started, so that they can be reaped (no zombies).
CHILDREN: dict[int, subprocess.Popen] = {}


def process_tree(root: int) -> list[int]:
    """`root`, every process in the session it leads, and all their descendants, sorted: what stopping the
    service that `root` runs must end (a worker's flow runs start sessions of their own, but stay descendants)."""
    parents: dict[int, int] = {}
    found = {root}
    for proc in psutil.process_iter(["ppid"]):
        parents[proc.pid] = proc.info["ppid"]
        try:
            if os.getsid(proc.pid) == root:
                found.add(proc.pid)
        except OSError:  # ended since it was listed
            continue
    frontier = list(found)
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return sorted(found)


def start_time(pid: int) -> float | None:
    """When `pid` started (seconds since the epoch, to 10 ms); None when it is gone. With the pid it names
    one process: a pid the system reuses later starts at another time."""
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def alive(pid: int) -> bool:
    """Whether `pid` runs (zombies count as ended, and ours are reaped)."""
    popen = CHILDREN.get(pid)
    if popen is not None and popen.poll() is not None:
        return False
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM the processes (and the groups they lead), SIGKILL what is left after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        living = [pid for pid in pids if alive(pid)]
        if not living:
            return
        for pid in living:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def http_json(url: str, body: dict, headers: dict[str, str] | None = None) -> list | dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
