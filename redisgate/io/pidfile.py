"""The pid file: written by `serve`, read by `reload`, and never trusted blindly.

A pid file outlives a killed process (SIGKILL, OOM, power loss), and its number is later reused
by some unrelated process. So:

* `owner(path)` reads the pid and says whether that pid is a running redisgate (its
  ``/proc/<pid>/cmdline`` names ``redisgate``), a stale number, or unreadable;
* `claim(path)` (serve) refuses a pid file whose process is a live redisgate, and otherwise
  replaces it (0644, written to a temporary file and renamed: a planted symlink is not followed);
* `release(path)` removes it only if it still holds this process's pid;
* `reload` signals only a pid `owner` calls live.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import FileProblem, read_regular_file, write_private


class PidFileError(Exception):
    """The pid file cannot be used; str() says why and names the file."""


@dataclass(frozen=True)
class PidOwner:
    pid: int | None             # None: the file does not exist
    live: bool                  # the pid runs a redisgate process


def is_redisgate(pid: int) -> bool:
    """Whether `pid` is a running process whose command line names redisgate."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    for arg in cmdline.split(b"\0"):
        base = os.path.basename(arg.decode("utf-8", "replace"))
        if base == "redisgate" or base.startswith(("redisgate.", "redisgate-")):
            return True
    return False


def owner(path: str | os.PathLike) -> PidOwner:
    """The pid in `path` and whether it is a live redisgate. Raises PidFileError if the file
    exists but is unreadable or does not hold a pid."""
    try:
        data, _ = read_regular_file(path, 64)
    except FileProblem as e:
        if not os.path.lexists(path):
            return PidOwner(None, False)
        raise PidFileError(f"pid file {path}: {e}") from None
    text = data.decode("ascii", "replace").strip()
    if not text.isdigit() or not 0 < int(text) <= 4194304:      # Linux's PID_MAX_LIMIT
        raise PidFileError(f"pid file {path}: does not hold a process id")
    pid = int(text)
    return PidOwner(pid, pid != os.getpid() and is_redisgate(pid))


def claim(path: str | os.PathLike) -> None:
    """Write this process's pid to `path`, unless a live redisgate holds it (PidFileError)."""
    try:
        current = owner(path)
    except PidFileError:
        current = PidOwner(None, False)     # garbage in the file: replace it
    if current.live:
        raise PidFileError(f"pid file {path}: redisgate (pid {current.pid}) is running; "
                           "stop it first or use another pid_file")
    try:
        write_private(path, f"{os.getpid()}\n".encode(), mode=0o644)
    except OSError as e:
        raise PidFileError(f"pid file {path}: cannot write: {e.strerror}") from None


def release(path: str | os.PathLike) -> None:
    """Remove `path` if it still names this process."""
    try:
        if owner(path).pid == os.getpid():
            os.unlink(path)
    except (PidFileError, OSError):
        pass
