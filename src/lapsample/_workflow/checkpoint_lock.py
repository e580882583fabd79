"""The file system side of checkpoints: a path checked before anything compiles,
and a lock file beside the checkpoint, so that one run at a time writes it."""

import contextlib
import errno
import json
import os
import socket
import tempfile
import warnings


def check_path(path) -> str:
    """Refuse, before anything compiles, a checkpoint path that cannot be written:
    empty, a directory, in a directory that does not exist or cannot be written to
    (read-only file system, no permission)."""
    path = os.fspath(path)
    if path == "":
        raise ValueError(
            '`checkpoint` is an empty path: give a file name such as "run.lsmp", '
            "or `None` for no checkpoint."
        )
    if os.path.isdir(path):
        raise IsADirectoryError(
            errno.EISDIR,
            f"`checkpoint={path!r}` is a directory: give a file inside it, such as "
            f"{os.path.join(path, 'run.lsmp')!r}.",
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT,
            f"The directory {directory} of `checkpoint={path!r}` does not exist: "
            f"create it first (`os.makedirs({directory!r})`) or choose another path.",
        )
    try:  # the only reliable test of writability: write.
        fd, probe = tempfile.mkstemp(prefix=".lapsample-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(
            e.errno,
            f"The checkpoint cannot be written in {directory}: {e.strerror or e}. "
            "Choose a `checkpoint` path in a directory you can write to (not on a "
            "read-only file system).",
        ) from None
    return path


# --------------------------------------------------------------------------------
# One writer per checkpoint: a lock file beside it.
# --------------------------------------------------------------------------------


def _process_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: assume the owner still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _lock_owner(lock: str) -> dict | None:
    try:
        with open(lock) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _acquire(lock: str, path: str) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if (
                owner is not None
                and owner.get("host") == me["host"]
                and not _process_alive(owner.get("pid"))
            ):
                # A lock left by a process of this host that no longer runs (killed):
                # move it aside atomically (one taker wins), then try again.
                try:
                    stale = f"{lock}.stale-{me['pid']}"
                    os.replace(lock, stale)
                    os.unlink(stale)
                except FileNotFoundError:
                    continue
                warnings.warn(
                    f"Took over the lock {lock} of process {owner.get('pid')}, which "
                    "no longer runs (it was probably killed).",
                    stacklevel=4,
                )
                continue
            who = (
                f"process {owner.get('pid')} on {owner.get('host')}"
                if owner is not None
                else "another process"
            )
            raise FileExistsError(
                errno.EEXIST,
                f"Another run is writing the checkpoint {path}: {who} holds its lock "
                f"{lock}. Two runs writing one file would overwrite each other's "
                "draws. Wait for that run to finish or choose another `checkpoint` "
                f"path; if no such run is alive (e.g. it ran on another host and was "
                f"killed), delete {lock}.",
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise FileExistsError(errno.EEXIST, f"Could not take the lock {lock}.")


@contextlib.contextmanager
def locked(path: str):
    """Hold `path + ".lock"` (created exclusively, holding this process's id and
    host) while a run writes the checkpoint `path`; removed on the way out, also on
    an exception or `KeyboardInterrupt`. A lock whose process no longer runs on this
    host is taken over with a warning; any other is refused with a
    `FileExistsError`."""
    lock = path + ".lock"
    _acquire(lock, path)
    try:
        yield
    finally:
        owner = _lock_owner(lock)
        if owner is not None and owner.get("pid") == os.getpid():
            try:
                os.unlink(lock)
            except OSError:
                pass
