"""Maintenance commands: ``weft system prune``."""

from __future__ import annotations

import typer

from weft.cli import common
from weft.context import parse_duration

system_app = typer.Typer(help="Maintenance: prune finished tasks.", no_args_is_help=True)


@system_app.command("prune")
@common.handle_errors
def prune(
    older_than: str = typer.Option(
        "7d", "--older-than", help="Only tasks that finished longer ago than this (30s, 12h, 7d)."
    ),
    include_unread: bool = typer.Option(
        False, "--include-unread", help="Also remove results nobody has read."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Remove finished tasks' log events and queues. Unread results are kept unless asked.

    Examples:
      weft system prune                    # finished more than 7 days ago
      weft system prune --older-than 0     # every finished task whose result was read
    """
    summary = common.client().prune(
        older_than=parse_duration(older_than), include_unread=include_unread
    )
    if as_json:
        common.print_json(summary)
    else:
        print(
            f"Pruned {summary['pruned_tasks']} task(s), {summary['pruned_events']} event(s); "
            f"kept {summary['kept_unread']} with unread results"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(system_app, name="system")
