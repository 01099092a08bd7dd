"""Permissions of what the tools write: a temporary file or folder beside the target renamed over it, or weights
that safetensors writes 0600 whatever the umask."""

from __future__ import annotations

import os


def new_file_mode(directory: bool = False) -> int:
    """The permission bits open() (os.mkdir for a folder) gives a new file here: 0666 (0777) less the umask."""
    umask = os.umask(0o022)  # only setting the umask reads it
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def ordinary_mode(path: str | os.PathLike, directory: bool = False) -> int:
    """The permission bits of `path` if it exists, else `new_file_mode`'s: mkstemp's 0600 and mkdtemp's 0700 would
    otherwise pass to the target through the rename."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return new_file_mode(directory)


def readable_weights(folder: str | os.PathLike) -> None:
    """Give the folder's *.safetensors files the mode of any other new file (safetensors' save_file makes them
    0600, so a model folder shared with a group would have all but its weights readable)."""
    for path in os.scandir(folder):
        if path.name.endswith(".safetensors") and path.is_file(follow_symlinks=False):
            os.chmod(path.path, new_file_mode())
