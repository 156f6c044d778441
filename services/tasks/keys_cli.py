"""`make api-key` (python -m services.tasks api-key ...): manage API keys
directly in the tasks database, for operators who hold its credentials.

  create --name NAME --scopes tasks.submit,tasks.read [--owner OWNER]
  list [--all]
  revoke KEY_ID
  bootstrap        the first start's admin key, written to ADMIN_KEY_FILE (0600)

The key is printed once, by `create`; only its hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from shared.config import add_config_arguments, settings_from_args
from shared.principal import SCOPE_ADMIN, SCOPES

from . import migrate
from .identity import validate_key_id, validate_new_key
from .keys_store import KeyStore
from .settings import TasksSettings


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")


async def bootstrap_admin_key(settings: TasksSettings, store: KeyStore) -> str:
    """Create the admin key on the first start; returns what happened."""
    path = Path(settings.effective_admin_key_file)
    if await asyncio.to_thread(path.exists):
        return f"admin key: {path}"
    if await store.count_admin_keys():
        return f"admin key: none written ({path} is missing but an admin key exists)"
    record, secret = await store.create(validate_new_key("admin", "admin", [SCOPE_ADMIN]))
    try:
        await asyncio.to_thread(write_private, path, secret)
    except OSError:
        await store.revoke(record.id)  # a key nobody can read must not stay valid
        raise
    return f"admin key: created {record.id}, written to {path} (mode 0600)"


async def _run(args: argparse.Namespace, settings: TasksSettings) -> int:
    store = KeyStore(settings.effective_database_url)
    try:
        if args.action == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            record, secret = await store.create(validate_new_key(args.name, args.owner, scopes))
            print(f"id:     {record.id}\nowner:  {record.owner}\nscopes: {' '.join(record.scopes)}")
            print(f"key:    {secret}")
            print("(shown once: store it now; send it as `authorization: Bearer <key>`)")
        elif args.action == "list":
            for r in await store.list(include_revoked=args.all):
                state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
                used = f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else "never"
                print(
                    f"{r.id}  {r.prefix}...  {r.name!r} owner={r.owner!r} "
                    f"scopes={','.join(r.scopes)} created={r.created_at:%Y-%m-%d %H:%M} "
                    f"last_used={used} {state}"
                )
        elif args.action == "revoke":
            record = await store.revoke(validate_key_id(args.key_id))
            print(
                f"revoked {record.id} ({record.name}); services stop accepting it within "
                f"{settings.identity_cache_seconds:g} s"
            )
        elif args.action == "bootstrap":
            print(await bootstrap_admin_key(settings, store))
    finally:
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make api-key ARGS=", description=__doc__.split("\n\n")[0]
    )
    add_config_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--owner", default="", help="default: the name")
    create.add_argument("--scopes", required=True, help=f"comma-separated: {','.join(SCOPES)}")
    listing = sub.add_parser("list", help="the keys' records")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    sub.add_parser("bootstrap", help="create the first admin key if there is none")
    args = parser.parse_args(argv)
    settings = settings_from_args(TasksSettings, args)
    if settings.migrate_on_start:
        migrate.upgrade(settings.effective_database_url)
    try:
        return asyncio.run(_run(args, settings))
    except Exception as exc:
        from shared import errors

        if isinstance(exc, errors.DomainError):
            print(f"api-key: {exc}", file=sys.stderr)
            return 2
        raise
