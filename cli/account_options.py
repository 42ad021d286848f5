"""Options every way of adding an account shares (`add-console`, `add-token`, `add-oauth`), and the caps that
`add-console`, `add-token` and `update` share."""

from __future__ import annotations

import click

priority_option = click.option("--priority", default=50, show_default=True, help="higher is used first")
proxy_option = click.option("--proxy", default=None, help="outbound HTTP proxy, http://[user:pass@]host:port")
weight_option = click.option(
    "--weight",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="share of new sessions among accounts of equal priority",
)
max_concurrency_option = click.option(
    "--max-concurrency",
    type=click.IntRange(min=0),
    default=None,
    help="most requests in flight on this account across all relays; more go to other accounts (0: no cap)",
)
rpm_option = click.option(
    "--rpm",
    type=click.IntRange(min=0),
    default=None,
    help="most requests sent through this account in any 60 s, across all relays (0: no cap)",
)
