"""Atomic writes: a file or folder appears whole under its name or not at all.

Everything the package writes for the user (exports, evaluation.json, the
config record, figures, images) goes through here: it is written under a
hidden temporary name in the destination folder and renamed into place, so
a crash leaves either the old version or the new one. `tempfile` creates
its files 0600 and folders 0700; they get the permissions an ordinary
`open` or `os.makedirs` would give under the process's umask instead.
"""

import contextlib
import fcntl
import json
import os
import tempfile


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def temp_file(path: str, suffix: str = ""):
    """Yields a temporary path next to `path`; on success it replaces `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix,
                               prefix="." + os.path.basename(path) + ".")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str):
    with temp_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(obj, path: str, **dump_kwargs):
    with temp_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, **dump_kwargs)


def write_bytes(path: str, data: bytes):
    with temp_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def temp_dir(path: str) -> str:
    """A new empty folder next to `path`, to be filled and then published
    with `replace_dir`-style renames (its permissions are set already)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".tmp-",
                           dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def check_folder(path: str, name: str = "workdir"):
    """Raises a ValueError naming `name` unless `path` is a folder, or can
    be made one (its nearest existing parent is a folder)."""
    if not path:
        raise ValueError(f"`{name}` must name a folder (made if missing). "
                         f"Received: {name}={path!r}")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"`{name}` must be a folder (made if missing); "
                         f"{existing!r} is a file. Received: {name}={path!r}")


class InUse(RuntimeError):
    """Another process holds the folder (`exclusive`)."""


@contextlib.contextmanager
def exclusive(folder: str, name: str = "workdir"):
    """Holds `folder` for this process (a lock on `folder`/.lock, which
    records its holder's pid) while the block runs; raises `InUse` at once
    if another process holds it. The operating system drops the lock when
    its holder exits, however it exits."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise InUse(
                f"`{name}` {folder!r} is in use by another run (process "
                f"{holder}, holding {path}): wait for it to end, or give "
                f"another {name}.") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
