"""Atomic writes and content hashes: a reader never sees half a file (or folder), and every input can be pinned."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary name in the same folder, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomically(path: Path, record: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def replace_folder_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) to fill a new empty folder beside `path`, then swap it in for `path` and remove the old
    folder. A reader finds either the old folder or the new one, complete, never none: on Linux the swap is a
    single renameat2(RENAME_EXCHANGE); where that is unavailable the old folder is renamed aside just before
    the new one takes its name (a moment without it). If `write` fails, `path` is left as it was and the
    temporary folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        if not _exchange(tmp, path):  # after an exchange `tmp` holds the old folder, removed below
            if path.exists():
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                if old.exists():
                    os.replace(old, path)  # put the old folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


@functools.cache
def _renameat2():
    """glibc's renameat2 (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names of `a` and `b` in one step; False when it could not be done (`b` missing, no renameat2,
    a kernel or file system without RENAME_EXCHANGE)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def update_sha256(digest, path: Path) -> None:
    """Feed the bytes of the file `path` to `digest` (a hashlib object), in 1 MiB chunks."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    update_sha256(digest, path)
    return digest.hexdigest()
