"""Secrets out of what people see: URLs without their passwords, settings with each secret as ***."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from pydantic import BaseModel

from relay_core.settings import Settings

MASK = "***"
# Setting (or URL query) names whose values are secrets: secret_key, metrics_token, web_password, ...
# `*_url` settings are URLs, of which only the password goes.
_SECRET_NAME = re.compile(r"(^|_)(secret(_key)?|password|passwd|token|credentials?|api_key)$", re.IGNORECASE)


def masked_url(url: str | None) -> str | None:
    """The URL without its password (userinfo or a secret-looking query parameter)."""
    if not url:
        return url
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is None and not any(_SECRET_NAME.search(k) for k, _ in pairs):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rpartition('@')[2]}"
    query = urlencode([(k, MASK if _SECRET_NAME.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _masked(name: str, value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _masked(k, getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, Path):
        return str(value)
    if _SECRET_NAME.search(name):  # before the URL test: a password may contain "://"
        return MASK if value else None
    if isinstance(value, str) and (name.endswith("_url") or "://" in value):
        return masked_url(value)
    return value


def masked_settings(settings: Settings) -> dict[str, Any]:
    """Every setting in force, flattened (`oauth.token_url`), with each secret replaced by ***."""
    flat: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = _masked(name, getattr(settings, name))
        if isinstance(value, dict) and isinstance(getattr(settings, name), BaseModel):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        elif isinstance(value, dict):
            flat[name] = json.dumps(value) if value else None
        else:
            flat[name] = value
    return flat
