"""Options every way of adding an account shares (`add-console`, `add-token`, `add-oauth`)."""

from __future__ import annotations

import click

priority_option = click.option("--priority", default=50, show_default=True, help="higher is used first")
proxy_option = click.option(
    "--proxy",
    default=None,
    help="outbound proxy for all of the account's traffic: http://, socks5:// or socks5h://[user:pass@]host:port",
)
weight_option = click.option(
    "--weight",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="share of new sessions among accounts of equal priority",
)
