"""Why an admin operation refused; the CLI turns each into its own click error, the page into a message."""

from __future__ import annotations


class AdminError(Exception):
    """An operation refused; the message is written for the admin."""


class NotFoundError(AdminError):
    """No key or account by that name."""


class InvalidValueError(AdminError):
    """A given value cannot be used; `field` names it (the Account or KeyChanges field), when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotApplicableError(AdminError):
    """A change that does not apply to this kind of record."""
