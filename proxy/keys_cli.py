"""`autoroute keys add | list | revoke`: API keys in PostgreSQL (`auth.postgres_dsn`).

A running proxy picks a change up at its next refresh (`auth.refresh_seconds`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from proxy.config import Config

if TYPE_CHECKING:
    from proxy.auth_store import StoredKey


def add_parser(commands: Any) -> None:
    """Register `keys` on the CLI's subcommands (argparse's action type is private)."""
    what = "API keys stored in PostgreSQL (auth.postgres_dsn)"
    keys = commands.add_parser("keys", help=what, description=what).add_subparsers(
        dest="keys_command", required=True
    )
    add = keys.add_parser("add", help="make a key, store its sha256, print the key once")
    listing = keys.add_parser("list", help="stored keys (hashes shortened)")
    revoke = keys.add_parser("revoke", help="revoke a key by name or hash prefix")
    for parser in (add, listing, revoke):
        parser.add_argument("--dsn", help="PostgreSQL DSN (default: auth.postgres_dsn)")
    add.add_argument(
        "--name", required=True, type=_name, help="the key's id in usage events and logs"
    )
    add.add_argument("--role", choices=("user", "admin"), default="user")
    add.add_argument(
        "--models", type=_models, default=[], help="comma-separated allow-list (default: any)"
    )
    add.add_argument("--rpm", type=_count, default=0, help="requests per minute (0: unlimited)")
    add.add_argument("--max-streams", type=_count, default=0, help="inference at once (0: any)")
    revoke.add_argument("name_or_prefix", metavar="NAME_OR_PREFIX", type=_name)


def _name(text: str) -> str:
    # Empty, `keys revoke "$NAME"` with NAME unset would revoke a key stored without one.
    if not text.strip():
        raise argparse.ArgumentTypeError("a key's name must not be empty")
    return text.strip()


def _models(text: str) -> list[str]:
    # An empty list means any model: `--models "$MODELS"` with MODELS unset must not
    # make a key that may use every model, nor a name no request can match (a
    # space-separated list) one that may use none without saying so.
    from proxy.backends import source, valid_name  # as Ollama reads a name

    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError(
            "names no model (leave --models out for a key that may use any)"
        )
    for model in models:
        if not valid_name(source(model)[0]):
            raise argparse.ArgumentTypeError(f"{model!r} is no model name Ollama accepts")
    return models


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1  # argparse would name the function: "invalid _count value"
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (unlimited) or more")
    return value


def run(config: Config, args: argparse.Namespace) -> int:
    dsn = args.dsn or config.auth.postgres_dsn
    if not dsn:
        print(
            "autoroute: keys need a database: auth.postgres_dsn in config.yaml, "
            "AUTOROUTE_AUTH__POSTGRES_DSN or --dsn",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_run(dsn, args))


async def _run(dsn: str, args: argparse.Namespace) -> int:
    # asyncpg and the store load only for this command, as the other commands do theirs.
    from proxy import auth_store

    try:
        conn = await auth_store.connect(dsn)
    except Exception as exc:  # connection refused, bad DSN, no such database, ...
        print(f"autoroute: cannot reach the key database: {exc}", file=sys.stderr)
        return 1
    try:
        if args.keys_command == "add":
            key, digest = await auth_store.add_key(
                conn, args.name, args.role, args.models, args.rpm, args.max_streams
            )
            # The key alone on stdout (KEY=$(autoroute keys add ...)); the rest beside it.
            print(key)
            prefix = digest[: auth_store.PREFIX_CHARS]
            print(
                f"added '{args.name}' ({args.role}, sha256 {prefix}...); "
                "the key is shown only this once",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            _print_table(await auth_store.list_keys(conn))
        else:
            name = await auth_store.revoke_key(conn, args.name_or_prefix)
            print(f"revoked '{name}'; running proxies refuse it after their next refresh")
    except auth_store.KeyCommandError as exc:
        print(f"autoroute: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    return 0


def _print_table(keys: list[StoredKey]) -> None:
    head = ("NAME", "SHA256", "ROLE", "MODELS", "RPM", "STREAMS", "CREATED", "REVOKED")
    rows = [
        (
            k.name or "-",
            k.prefix + "...",
            k.role,
            ",".join(k.models) or "*",
            str(k.requests_per_minute or "-"),
            str(k.max_streams or "-"),
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "-",
        )
        for k in keys
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for row in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
