"""Runs one admin operation against the store, turning store trouble into a readable CLI error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from relay_core.crypto import SecretError
from relay_core.runtime import Runtime
from relay_core.runtime import SecretMismatchError
from relay_core.runtime import load_settings
from relay_core.settings import Settings
from relay_core.settings import settings_error_text
from relay_core.store import NameTakenError
from relay_core.store import StoreError
from relay_core.store.embedded import EmbeddedStoreError


def cli_settings(**overrides: Any) -> Settings:
    """The settings in force: `relay --config FILE` (or RELAY_CONFIG), RELAY_* environment, defaults."""
    config = click.get_current_context().find_root().params.get("config")
    try:
        return load_settings(config, **overrides)
    except ValidationError as exc:
        raise click.ClickException(settings_error_text(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def open_runtime(**overrides: Any) -> Runtime:
    settings = cli_settings(**overrides)
    try:
        return Runtime(settings)
    except (SecretError, EmbeddedStoreError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def run[T](operation: Callable[[Runtime], Awaitable[T]]) -> T:
    runtime = open_runtime()

    async def main() -> T:
        try:
            await runtime.check_secret()
            return await operation(runtime)
        finally:
            await runtime.store.close()

    try:
        return asyncio.run(main())
    except (StoreError, SecretMismatchError, NameTakenError) as exc:
        raise click.ClickException(str(exc)) from exc
