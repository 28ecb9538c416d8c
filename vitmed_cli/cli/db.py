"""``vitmed db``: the registry's schema version and upgrades."""

from __future__ import annotations

import typer
from rich.text import Text

from ..registry import db as regdb
from ..config import registry_url
from ._common import JsonOpt, console, print_json, state, want_json

app = typer.Typer(help="The registry database: schema version and upgrades.", no_args_is_help=True)


@app.command("current")
def current(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show the registry URL and its schema revision against this vitmed's head.

    Example: vitmed db current --json
    """
    url = registry_url(state(ctx).db)
    engine = regdb.create_registry_engine(url)
    try:
        st = regdb.check_schema_readonly(engine)
    finally:
        engine.dispose()
    out = {
        "url": regdb._redact(url),
        "current": st.current,
        "head": st.head,
        "up_to_date": st.up_to_date,
    }
    if want_json(ctx, json_out):
        print_json(out)
    else:
        status = (("up to date", "green") if st.up_to_date else ("behind: run vitmed db upgrade", "yellow"))
        if st.current is None:
            status = ("empty: created on first use, or run vitmed db upgrade", "yellow")
        console.print(Text.assemble(f"registry {out['url']}\nrevision {st.current or '-'} (head {st.head}) ",
                                    status))


@app.command("upgrade")
def upgrade(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Upgrade the registry's schema to this vitmed's head revision (back it up first).

    Example: vitmed --db sqlite:///registry.db db upgrade
    """
    url = registry_url(state(ctx).db)
    engine = regdb.create_registry_engine(url)
    try:
        before = regdb.check_schema_readonly(engine)
        regdb.upgrade(engine)
        after = regdb.schema_state(engine)
    finally:
        engine.dispose()
    out = {"url": regdb._redact(url), "from": before.current, "to": after.current}
    if want_json(ctx, json_out):
        print_json(out)
    else:
        console.print(Text(f"registry {out['url']}: {before.current or 'empty'} -> {after.current}"))
