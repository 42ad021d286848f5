"""Entry point of the `relay` command: the root group, its context object, and every command group."""

from __future__ import annotations

import click

from cli.accounts import accounts
from cli.alerts import alerts
from cli.backup import backup
from cli.backup import restore
from cli.ca import ca
from cli.context import CliContext
from cli.doctor import doctor
from cli.doctor import status
from cli.keys import keys
from cli.serve import serve
from cli.store import store
from cli.usage import usage
from cli.version import version_option
from cli.web import web
from cli.web_tokens import web_token


@click.group()
@version_option
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="RELAY_CONFIG",
    help="TOML settings file (RELAY_* environment variables override it)",
)
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """claude-relay: share Claude subscriptions and API keys across a team."""
    ctx.obj = CliContext(config)


main.add_command(serve)
main.add_command(keys)
main.add_command(accounts)
main.add_command(usage)
main.add_command(web)
main.add_command(web_token)
main.add_command(status)
main.add_command(doctor)
main.add_command(store)
main.add_command(alerts)
main.add_command(backup)
main.add_command(restore)
main.add_command(ca)


if __name__ == "__main__":
    main()
