"""Secrets (API keys, tokens, webhook URLs) without putting them on the command line, where they land in
shell history and in `ps` for every local user: '-' reads one from stdin, and on a terminal an omitted one
is asked for without echo."""

from __future__ import annotations

import sys

import click

from cli.context import InvalidInput

FROM_STDIN = "-"
HELP = "'-' reads it from stdin; omitted on a terminal: asked for, hidden (a value typed here lands in shell history)"


def on_terminal() -> bool:
    """Whether a person can answer a prompt (a pipe or a script cannot)."""
    return sys.stdin.isatty()


def secret_input(value: str | None, option: str, label: str) -> str:
    """The secret given, read from stdin ('-'), or asked for on a terminal when omitted."""
    if value is not None:
        return optional_secret(value, option) or ""
    if on_terminal():
        return str(click.prompt(label, hide_input=True, err=True))
    raise InvalidInput(f"give {option} VALUE, or '{option} -' to read it from stdin")


def optional_secret(value: str | None, option: str) -> str | None:
    """The secret given, read from stdin ('-'), or None (never asked for)."""
    if value != FROM_STDIN:
        return value
    text = sys.stdin.read().strip()
    if not text:
        raise InvalidInput(f"{option} -: nothing on stdin")
    return text


def one_from_stdin(*values: str | None) -> None:
    """stdin holds one secret: two options cannot both read it."""
    if sum(value == FROM_STDIN for value in values) > 1:
        raise InvalidInput("only one secret can come from stdin ('-'); give the other as a value or in a prompt")
