"""The object every `relay` command receives (click's context object): the settings file it was started
with, and the one Runtime a command opens to run its admin operations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from pydantic import ValidationError

from relay_core.admin.errors import AdminError
from relay_core.admin.errors import InvalidValueError
from relay_core.admin.errors import NotApplicableError
from relay_core.admin.service import AdminService
from relay_core.crypto import SecretError
from relay_core.runtime import Runtime
from relay_core.runtime import SecretMismatchError
from relay_core.runtime import load_settings
from relay_core.settings import Settings
from relay_core.settings import settings_error_text
from relay_core.store import NameTakenError
from relay_core.store import StoreError
from relay_core.store.embedded import EmbeddedStoreError


class InvalidInput(click.ClickException):
    """A value the relay refuses (an admin rule, a setting): one line, exit 2 like click's own usage errors."""

    exit_code = 2


def click_error(exc: AdminError) -> click.ClickException:
    """A refused value or a change that does not apply is invalid input (exit 2); any other refusal exit 1."""
    if isinstance(exc, InvalidValueError | NotApplicableError):
        return InvalidInput(str(exc))
    return click.ClickException(str(exc))


@dataclass(frozen=True)
class CliContext:
    config: str | None  # `relay --config FILE` (or RELAY_CONFIG)

    def settings(self, **overrides: Any) -> Settings:
        """The settings in force: the config file, RELAY_* environment, defaults."""
        try:
            return load_settings(self.config, **overrides)
        except ValidationError as exc:
            raise InvalidInput(settings_error_text(exc)) from None
        except (FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc

    def open_runtime(self, **overrides: Any) -> Runtime:
        settings = self.settings(**overrides)
        try:
            return Runtime(settings)
        except (SecretError, EmbeddedStoreError, FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc

    def run[T](self, operation: Callable[[AdminService], Awaitable[T]]) -> T:
        """Run a command's admin operations on one Runtime, checked against the store's secret, then closed."""
        runtime = self.open_runtime()

        async def main() -> T:
            try:
                await runtime.check_secret()
                return await operation(AdminService(runtime))
            finally:
                await runtime.store.close()
                runtime.release_store()  # a command that started the embedded store stops it, unless a relay uses it

        try:
            return asyncio.run(main())
        except AdminError as exc:
            raise click_error(exc) from exc
        except (StoreError, SecretMismatchError, NameTakenError) as exc:
            raise click.ClickException(str(exc)) from exc


pass_cli_context = click.make_pass_decorator(CliContext)
