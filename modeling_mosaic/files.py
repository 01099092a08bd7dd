"""Permissions of what the tools write atomically: a temporary file or folder beside the target, then a rename."""

from __future__ import annotations

import os


def ordinary_mode(path: str | os.PathLike, directory: bool = False) -> int:
    """The permission bits of `path` if it exists, else those open() (os.mkdir for a folder) gives a new one:
    mkstemp's 0600 and mkdtemp's 0700 would otherwise pass to the target through the rename."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0o022)  # only setting the umask reads it
        os.umask(umask)
        return (0o777 if directory else 0o666) & ~umask
