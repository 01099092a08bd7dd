"""What the Hub client raises when a repo cannot be had, for the tools that name a catalog or a model on the Hub."""

from __future__ import annotations

import contextlib
import importlib


def hub_errors() -> tuple[type[Exception], ...]:
    """OSErrors (huggingface_hub's own errors, a missing file), and its HTTP library's transport errors (a refused
    connection, an unknown host), which are not OSErrors."""
    errors = [OSError]
    for library in ("httpx2", "httpx"):  # huggingface_hub 2 uses httpx2, 1.x httpx
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(library).HTTPError)
    return tuple(errors)
