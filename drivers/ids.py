"""Ids that reach a backend: a file name, a logical volume, an instance directory."""

from __future__ import annotations

import re

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_id(value: str) -> str:
    """``value`` if it can name something on a backend without escaping it; ValueError otherwise.

    Letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit,
    at most 128 characters, never ``..``: no path separators, no options
    (``-x``), nothing a command or a path could take for something else.
    """
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise ValueError(f"{value!r} cannot name anything on a backend: use letters, digits, "
                         "'_', '.' and '-', starting with a letter or digit")
    return value
