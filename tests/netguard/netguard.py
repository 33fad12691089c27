"""Refuse connections beyond loopback, in the test process and in every Python process it starts.

The test process installs it from conftest. Child processes (training in a process of its own,
DVC, Prefect servers, torchrun workers) find `sitecustomize.py` beside this file through
PYTHONPATH and install it too; they append each refused address to the file named by
`$ADAPTFLOW_TEST_NETWORK_LOG`, which the test process checks after every test.
"""

from __future__ import annotations

import ipaddress
import os
import socket

LOG_VARIABLE = "ADAPTFLOW_TEST_NETWORK_LOG"
_real_connect = socket.socket.connect
attempts: list[str] = []


def is_local(address: object) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not is_local(address):
        attempts.append(repr(address))
        log = os.environ.get(LOG_VARIABLE)
        if log:
            with open(log, "a") as f:
                f.write(f"pid {os.getpid()}: {address!r}\n")
        raise ConnectionRefusedError(f"test network guard: connection to {address!r} refused (only loopback is allowed)")
    return _real_connect(self, address)


def refused() -> list[str]:
    """Every refused address so far: this process's, then its children's."""
    log = os.environ.get(LOG_VARIABLE)
    children = open(log).read().splitlines() if log and os.path.exists(log) else []
    return attempts + children


def reset() -> None:
    attempts.clear()
    log = os.environ.get(LOG_VARIABLE)
    if log and os.path.exists(log):
        os.unlink(log)


def install() -> None:
    socket.socket.connect = _guarded_connect


def uninstall() -> None:
    socket.socket.connect = _real_connect
