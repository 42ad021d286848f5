"""Options every way of adding an account shares (`add-console`, `add-token`, `add-oauth`), and the caps that
`add-console`, `add-token` and `update` share."""

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


class PauseAt(click.ParamType):
    """A quota fraction (0.9), a percentage (90%), or off (0, none): off is 0.0, which clears the setting."""

    name = "FRACTION|off"
    OFF = ("off", "none", "0")

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text in self.OFF:
            return 0.0
        try:
            number = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
        except ValueError:
            self.fail(f"{value!r} is neither a fraction such as 0.9, a percentage such as 90%, nor off", param, ctx)
        if not 0 < number <= 1:
            self.fail(f"{value!r} is outside 0 < x <= 1 (0.9 or 90% for 90 %)", param, ctx)
        return number


pause_at_option = click.option(
    "--pause-at",
    type=PauseAt(),
    default=None,
    help="subscriptions: take no new sessions while a quota window (5h, 7d, or the 7d window of the requested "
    "model) is this full, e.g. 0.9 or 90%, until it resets; 'off' clears it",
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
