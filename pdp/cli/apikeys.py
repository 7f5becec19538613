"""`pdp apikeys create|list|revoke|rotate`: API keys for machines, in the store."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pdp.cli.common import EXIT_OK, add_json_option, err, out, print_json
from pdp.cli.dbopts import (
    EXIT_CODES,
    actor,
    add_actor_option,
    add_db_option,
    add_store_verb,
    handles_store_errors,
    iso,
    new_table,
    open_store,
    parse_expiry,
    plain_row,
    print_table,
)
from pdp.cli.idopts import parse_duration, subject_parts
from pdp.identity.apikeys import (
    MIN_PEPPER_BYTES,
    ApiKeyError,
    ApiKeyRecord,
    ApiKeys,
    IssuedKey,
    KeyHasher,
    display,
)

PEPPER_ENV = "PDP_APIKEY_PEPPER"

ABOUT = f"""\
A key is `pdp_<prefix>_<secret>`. It is printed once, on stdout, when it is created
(or rotated) and never again: the store keeps only HMAC-SHA256(pepper, key). The
prefix names the key everywhere else (lists, logs, the audit log, revoke, rotate).

The pepper is a server-side secret of at least {MIN_PEPPER_BYTES} bytes, the same the PDP
uses: ${PEPPER_ENV}, or the contents of --pepper-file (surrounding whitespace removed).
Creating or rotating a key needs it; it is never printed.

examples:
  export {PEPPER_ENV}="$(cat /etc/pdp/apikey-pepper)"
  KEY=$(pdp apikeys create service:indexer --name nightly --scope documents:read --expires 90d)
  pdp apikeys list --subject service:indexer
  pdp apikeys rotate k7m2q9x4r8t1 --overlap 1h
  pdp apikeys revoke k7m2q9x4r8t1
"""


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "apikeys",
        help="create, list, revoke and rotate API keys",
        description="API keys for machines, in the store (--db, $PDP_DB_URL, or sqlite:///pdp.db).",
        about=ABOUT,
    )

    c = actions.add_parser(
        "create",
        help="make a key for SUBJECT; prints it once",
        description="Make a key for SUBJECT (type:id). The key is printed on stdout, once; "
        "what it is (prefix, subject, scopes, expiry) goes to stderr.",
        epilog=EXIT_CODES,
    )
    c.add_argument("subject", metavar="SUBJECT", help="type:id, e.g. service:indexer")
    c.add_argument("--name", default="", help="what the key is for, shown in lists")
    c.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPE",
        dest="scopes",
        help="a scope the key carries (context.authn.scopes); repeat for more",
    )
    c.add_argument(
        "--expires", metavar="WHEN", help="ISO 8601 time, or a duration from now: 90d, 12h"
    )
    _pepper_option(c)
    add_actor_option(c)
    add_db_option(c)
    add_json_option(c)
    c.set_defaults(run=_create)

    ls = actions.add_parser(
        "list",
        help="list keys (never their secrets)",
        description="List keys, oldest first: prefix, subject, name, scopes, state and times.",
        epilog=EXIT_CODES,
    )
    ls.add_argument("--subject", metavar="SUBJECT", help="only this subject's keys")
    ls.add_argument("--active", action="store_true", help="leave out revoked and expired keys")
    add_db_option(ls)
    add_json_option(ls)
    ls.set_defaults(run=_list)

    r = actions.add_parser(
        "revoke",
        help="revoke a key at once",
        description="Revoke the key with this prefix: it fails as `key_revoked` from now on.",
        epilog=EXIT_CODES,
    )
    r.add_argument("prefix", metavar="PREFIX", help="the key's prefix (or its `pdp_<prefix>_…`)")
    add_db_option(r)
    add_json_option(r)
    r.set_defaults(run=_revoke)

    ro = actions.add_parser(
        "rotate",
        help="replace a key, keeping the old one for an overlap window",
        description="Make a new key with the old one's subject, name and scopes; the old key "
        "keeps working for --overlap, then fails as `key_rotated`. The new key is printed "
        "on stdout, once.",
        epilog=EXIT_CODES,
    )
    ro.add_argument("prefix", metavar="PREFIX")
    ro.add_argument(
        "--overlap",
        default="1h",
        metavar="DURATION",
        help="how long the old key still works: 0s, 30m, 1h (default), 7d",
    )
    ro.add_argument(
        "--expires",
        metavar="WHEN",
        help="the new key's expiry (default: the old key's lifetime, counted from now)",
    )
    _pepper_option(ro)
    add_actor_option(ro)
    add_db_option(ro)
    add_json_option(ro)
    ro.set_defaults(run=_rotate)


def _pepper_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pepper-file",
        metavar="FILE",
        help=f"file holding the API key pepper (default: ${PEPPER_ENV})",
    )


def load_pepper(path: str | None) -> bytes:
    """The pepper from `path`, else from $PDP_APIKEY_PEPPER; ValueError when there is none.

    A file's contents are used without surrounding whitespace (so `echo ... > file`
    works); the variable's value is used as it is, UTF-8 encoded. Messages never
    include the pepper.
    """
    if path:
        try:
            pepper = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the pepper file {path}: {exc.strerror}") from None
        source = f"the pepper file {path}"
    else:
        env = os.environ.get(PEPPER_ENV)
        if not env:
            raise ValueError(
                f"no API key pepper: set ${PEPPER_ENV} or pass --pepper-file FILE "
                f"(a secret of at least {MIN_PEPPER_BYTES} bytes, the same the PDP uses)"
            )
        pepper = env.encode("utf-8")
        source = f"${PEPPER_ENV}"
    if len(pepper) < MIN_PEPPER_BYTES:
        raise ValueError(
            f"the API key pepper in {source} is {len(pepper)} bytes; "
            f"it must be at least {MIN_PEPPER_BYTES}"
        )
    return pepper


def _prefix(text: str) -> str:
    """The prefix of `PREFIX`, `pdp_<prefix>_…` or a whole key, as people paste it."""
    return text.removeprefix("pdp_").split("_", 1)[0]


def _manager(args: argparse.Namespace, store: Any, pepper: bytes | None) -> ApiKeys:
    from pdp.store.identity import SqlApiKeys

    repo = SqlApiKeys(store, created_by=actor(args))
    # Revoking and listing need no pepper; a throwaway one keeps the types simple.
    hasher = KeyHasher(pepper if pepper is not None else os.urandom(MIN_PEPPER_BYTES))
    return ApiKeys(repo, hasher)


def _key_json(record: ApiKeyRecord, now: datetime, created_by: str | None = None) -> dict[str, Any]:
    # INVARIANT: never the digest (nor, of course, the secret).
    data: dict[str, Any] = {
        "prefix": record.prefix,
        "subject": record.subject_key,
        "name": record.name,
        "scopes": list(record.scopes),
        "state": record.state(now),
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "last_used_at": iso(record.last_used_at),
        "rotated_to": record.rotated_to,
    }
    if created_by is not None:
        data["created_by"] = created_by
    return data


def _show_issued(
    issued: IssuedKey,
    args: argparse.Namespace,
    what: str,
    now: datetime,
    extra: dict[str, Any] | None = None,
) -> None:
    rec = issued.record
    if args.json:
        print_json({"key": issued.key, **_key_json(rec, now), **(extra or {})})
        return
    out.print(issued.key, markup=False)
    details = [f"prefix {rec.prefix}", f"subject `{rec.subject_key}`"]
    if rec.name:
        details.append(f"name `{rec.name}`")
    details.append("scopes " + (", ".join(rec.scopes) if rec.scopes else "none"))
    details.append(f"expires {iso(rec.expires_at)}" if rec.expires_at else "no expiry")
    err.print(f"{what} API key {display(rec.prefix)}: " + "; ".join(details), markup=False)
    err.print("this is the only time the key is shown: store it now", markup=False)


@handles_store_errors
def _create(args: argparse.Namespace) -> int:
    kind, ident = subject_parts(args.subject)
    now = datetime.now(UTC)
    expires = parse_expiry(args.expires, now)
    if expires is not None and expires <= now:
        raise ApiKeyError(f"expiry `{iso(expires)}` is in the past (now is {iso(now)})")
    scopes = list(dict.fromkeys(args.scopes))
    for s in scopes:
        if not s or any(ch.isspace() for ch in s) or not s.isprintable():
            raise ApiKeyError(f"scope `{s}` must be non-empty printable text without spaces")
    pepper = load_pepper(args.pepper_file)
    with open_store(args, create=True) as store:
        issued = _manager(args, store, pepper).create(
            kind, ident, now=now, name=args.name, scopes=scopes, expires_at=expires
        )
    _show_issued(issued, args, "created", now)
    return EXIT_OK


@handles_store_errors
def _list(args: argparse.Namespace) -> int:
    from pdp.store.identity import SqlApiKeys

    subject = None
    if args.subject:
        subject = ":".join(subject_parts(args.subject))
    now = datetime.now(UTC)
    with open_store(args) as store:
        entries = SqlApiKeys(store).entries(subject)
    if args.active:
        entries = [e for e in entries if e.record.state(now) == "active"]
    if args.json:
        print_json([_key_json(e.record, now, e.created_by) for e in entries])
        return EXIT_OK
    if not entries:
        out.print("no API keys match", markup=False)
        return EXIT_OK
    table = new_table(
        "prefix", "subject", "name", "scopes", "state", "expires", "last used", "created"
    )
    for e in entries:
        r = e.record
        state = r.state(now)
        if r.rotated_to and state == "active":
            state = f"active (rotated to {r.rotated_to})"
        elif r.rotated_to:
            state = f"{state} (to {r.rotated_to})"
        plain_row(
            table,
            r.prefix,
            r.subject_key,
            r.name or "-",
            ", ".join(r.scopes) or "-",
            state,
            iso(r.expires_at) or "-",
            iso(r.last_used_at) or "never",
            f"{iso(r.created_at)} by {e.created_by or '-'}",
        )
    print_table(table)
    out.print(f"{len(entries)} key(s)", markup=False)
    return EXIT_OK


@handles_store_errors
def _revoke(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    prefix = _prefix(args.prefix)
    with open_store(args) as store:
        _manager(args, store, None).revoke(prefix, now=now)
    if args.json:
        print_json({"revoked": prefix, "at": iso(now)})
    else:
        out.print(f"revoked API key {display(prefix)}", markup=False)
    return EXIT_OK


@handles_store_errors
def _rotate(args: argparse.Namespace) -> int:
    overlap: timedelta = parse_duration(args.overlap)
    now = datetime.now(UTC)
    expires = parse_expiry(args.expires, now)
    if expires is not None and expires <= now:
        raise ApiKeyError(f"expiry `{iso(expires)}` is in the past (now is {iso(now)})")
    pepper = load_pepper(args.pepper_file)
    # Normalised here: `ApiKeys.rotate` retires the prefix exactly as it is given.
    old = _prefix(args.prefix)
    with open_store(args) as store:
        issued = _manager(args, store, pepper).rotate(
            old, now=now, overlap=overlap, expires_at=expires
        )
    until = iso(now + overlap)
    _show_issued(issued, args, "rotated: new", now, {"replaces": old, "old_key_until": until})
    if not args.json:
        err.print(
            f"the old key {display(old)} works until {until} at the latest, then fails as "
            "`key_rotated`",
            markup=False,
        )
    return EXIT_OK
