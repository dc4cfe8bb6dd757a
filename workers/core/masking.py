"""Settings safe to print: secret values and URL passwords hidden.

``taskyard config``, error messages and log lines show settings through
these functions, so a password or a signing key never reaches a terminal or
a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "****"
_SECRET_WORDS = ("password", "secret", "key", "auth", "token")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``****`` (each part of a ``;``-joined list)."""
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc}"))


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def masked(value: Any, key: str = "") -> Any:
    """A copy of settings safe to print: secret keys and URL passwords hidden."""
    if key and _is_secret(key) and value not in (None, "", [], {}) and not isinstance(value, bool):
        return MASK
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value
