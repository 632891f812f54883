"""``crpeer sql``: run SQL on a database, the way the ``sqlite3`` shell does.

SQL comes from the STATEMENT argument, ``-`` or ``--file`` (standard input or
a file), or, with neither, standard input (when it is not a terminal) or an
interactive shell with line editing and history (``~/.crpeer_history``).
Several statements separated by ``;`` run one after the other, each in its
own transaction (wrap them in ``BEGIN; ... COMMIT;`` to make them one).

Output per statement: a header line of column names, then one line per
row, tab-separated (``NULL`` for null, ``x'..'`` for blobs); a statement
that writes prints ``N rows changed`` on stderr. ``--json`` prints one JSON
document per statement: a list of objects keyed by column name, or
``{"changed": N}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import click
import pysqlite3.dbapi2 as sqlite3

from peer.cli_common import DATABASE, JSON_OPTION, json_value, open_store
from peer.errors import ConfigError, StoreError
from peer.store import Store

__all__ = ["run_shell", "split_statements", "sql"]

_HISTORY = Path("~/.crpeer_history")


def split_statements(script: str) -> list[str]:
    """The complete statements of ``script``, in order, without empty ones.

    Raises ConfigError if text is left after the last complete statement
    (a statement without its closing ``;`` counts as complete).
    """
    statements: list[str] = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statements.append(script[start : index + 1])
            start = index + 1
    tail = script[start:]
    if tail.strip():
        if not sqlite3.complete_statement(tail + ";"):
            raise ConfigError(f"incomplete SQL statement: {tail.strip()[:80]!r}")
        statements.append(tail)
    return [s.strip() for s in statements if _has_sql(s)]


def _has_sql(statement: str) -> bool:
    """Whether ``statement`` holds more than comments, whitespace and ``;``."""
    lines = [line.split("--", 1)[0] for line in statement.splitlines()]
    text = " ".join(lines)
    while "/*" in text:
        head, _, rest = text.partition("/*")
        text = head + " " + rest.partition("*/")[2]
    return bool(text.replace(";", "").strip())


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"x'{value.hex()}'"
    return str(value)


def _run(
    store: Store,
    statement: str,
    params: Sequence[str],
    *,
    as_json: bool,
    header: bool,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> None:
    """Run one statement and print its result."""
    try:
        columns, rows, changed = store.query(statement, params)
    except StoreError as exc:
        # The store names the method that failed; a person typed SQL.
        raise ConfigError(str(exc).removeprefix("query: ")) from exc
    if as_json:
        if columns:
            out_json = [dict(zip(columns, json_value(list(row)), strict=True)) for row in rows]
            out(_dumps(out_json))
        else:
            out(_dumps({"changed": changed}))
        return
    if columns and header:
        out("\t".join(columns))
    for row in rows:
        out("\t".join(_text(value) for value in row))
    if not columns and changed:
        err(f"{changed:,} {'row' if changed == 1 else 'rows'} changed")


def _dumps(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, allow_nan=False)


def run_shell(
    store: Store,
    read_line: Callable[[str], str],
    *,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> None:
    """An interactive loop: read lines with ``read_line(prompt)`` until a
    statement is complete, run it, print the result or the error, repeat.
    ``.quit`` / ``.exit`` or end of input (EOFError) ends it; Ctrl-C drops
    the statement being typed."""
    buffer = ""
    while True:
        try:
            line = read_line("  ...> " if buffer else "crpeer> ")
        except EOFError:
            return
        except KeyboardInterrupt:
            buffer = ""
            err("")
            continue
        if not buffer and line.strip() in {".quit", ".exit", ".q"}:
            return
        buffer += line + "\n"
        if not sqlite3.complete_statement(buffer):
            continue
        script, buffer = buffer, ""
        try:
            for statement in split_statements(script):
                _run(store, statement, (), as_json=False, header=True, out=out, err=err)
        except ConfigError as exc:
            err(f"error: {exc}")


def _interactive(store: Store) -> None:
    import readline  # line editing and history; only the shell needs it

    history = _HISTORY.expanduser()
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    click.echo("crpeer sql: end each statement with ';', leave with .quit or Ctrl-D", err=True)
    try:
        run_shell(store, input, out=click.echo, err=lambda text: click.echo(text, err=True))
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(history)
            os.chmod(history, 0o600)


@click.command()
@DATABASE
@click.argument("statement", required=False)
@click.option(
    "-f",
    "--file",
    "script_file",
    type=click.File("r", encoding="utf-8"),
    help="Read the SQL from this file ('-': standard input).",
)
@click.option(
    "-p", "--param", "params", multiple=True, help="A value for the next `?` (repeatable)."
)
@click.option("--header/--no-header", default=True, show_default=True, help="Print column names.")
@JSON_OPTION
def sql(
    database: Path,
    statement: str | None,
    script_file: TextIO | None,
    params: tuple[str, ...],
    header: bool,
    as_json: bool,
) -> None:
    """Run SQL on DATABASE and print what it returns.

    STATEMENT may hold several statements separated by ';'; '-' reads them
    from standard input. With no STATEMENT and no --file, reads standard
    input, or opens an interactive shell on a terminal. A running `crpeer
    serve` notices changes and syncs them. To write to a replicated table
    from the stock sqlite3 shell instead, load the extension first
    (`.load peer/_lib/crsqlite`).
    """
    if statement is not None and script_file is not None:
        raise click.UsageError("give STATEMENT or --file, not both")
    interactive = statement is None and script_file is None and sys.stdin.isatty()
    script: str | None = None
    if script_file is not None:
        script = script_file.read()
    elif statement == "-" or (statement is None and not interactive):
        script = sys.stdin.read()
    elif statement is not None:
        script = statement
    statements: list[str] = []
    if script is not None:
        statements = split_statements(script)
        if not statements:
            raise click.UsageError("no SQL statement given")
        if params and len(statements) > 1:
            raise click.UsageError("--param works with one statement, not several")
    with open_store(database) as store:
        if interactive:
            _interactive(store)
            return
        for one in statements:
            _run(
                store,
                one,
                params,
                as_json=as_json,
                header=header,
                out=click.echo,
                err=lambda text: click.echo(text, err=True),
            )
