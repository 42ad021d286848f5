"""`relay alerts`: webhooks that receive the relay's alerts. A webhook's URL is shown in full only as typed."""

from __future__ import annotations

import click

from cli.context import CliContext
from cli.context import pass_cli_context
from cli.output import emit_rows
from cli.output import format_option
from cli.secret_input import secret_input
from relay_core.admin.alerts import alert_view
from relay_core.alert_hooks import HookFormat
from relay_core.events import EVENT_TYPES


def _event_list(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


@click.group()
def alerts() -> None:
    """Alert webhooks: accounts limited or failing, sign-ins ending, budgets at 80 %/100 %, the store down."""


@alerts.command()
@click.argument("url", required=False)
@click.option(
    "--format",
    "hook_format",
    type=click.Choice([f.value for f in HookFormat]),
    default=HookFormat.JSON.value,
    show_default=True,
    help="json: the event record; slack: {'text': one line} (Slack incoming webhooks)",
)
@click.option("--events", default=None, help=f"comma-separated event types (default: all): {', '.join(EVENT_TYPES)}")
@pass_cli_context
def add(context: CliContext, url: str | None, hook_format: str, events: str | None) -> None:
    """Send alerts to URL (stored sealed; shown masked from now on). URL '-' reads it from stdin; omitted on a
    terminal, it is asked for, hidden (a URL typed on the command line lands in shell history and `ps`)."""
    secret_url = secret_input(url, "URL", "webhook URL")
    chosen = _event_list(events)
    hook = context.run(lambda admin: admin.alerts.add(secret_url, HookFormat(hook_format), chosen))
    click.echo(
        f"alert {hook.id} added: {hook.shown_url} ({hook.format.value}, events: {','.join(hook.events) or 'all'})"
    )


@alerts.command("list")
@format_option()
@pass_cli_context
def list_alerts(context: CliContext, fmt: str) -> None:
    """All webhooks, their URLs masked."""
    emit_rows([alert_view(h) for h in context.run(lambda admin: admin.alerts.list_hooks())], fmt)


@alerts.command()
@click.argument("hook_id", metavar="ID")
@pass_cli_context
def remove(context: CliContext, hook_id: str) -> None:
    """Stop sending alerts to a webhook."""
    context.run(lambda admin: admin.alerts.remove(hook_id))
    click.echo(f"alert {hook_id} removed")


@alerts.command()
@click.argument("hook_id", metavar="[ID]", required=False)
@pass_cli_context
def test(context: CliContext, hook_id: str | None) -> None:
    """Send a test alert to one webhook (or to all) now; fails when one could not be sent."""
    results = context.run(lambda admin: admin.alerts.test(hook_id))
    if not results:
        click.echo("no alert webhooks (add one with `relay alerts add URL`)")
        return
    for result in results:
        click.echo(f"alert {result.hook.id} ({result.hook.shown_url}): {'sent' if result.sent else 'FAILED'}")
    if not all(result.sent for result in results):
        raise click.ClickException("a test alert could not be sent (the relay log says why)")
