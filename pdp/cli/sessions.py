"""`pdp sessions list|revoke|purge`: browser sessions in the store."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from pdp.cli.common import EXIT_OK, EXIT_USAGE, add_json_option, fail, out, print_json
from pdp.cli.dbopts import (
    EXIT_CODES,
    add_db_option,
    add_store_verb,
    handles_store_errors,
    iso,
    new_table,
    open_store,
    plain_row,
    print_table,
)
from pdp.cli.idopts import duration_text, parse_duration, subject_parts
from pdp.identity.sessions import SessionRecord, Sessions

ABOUT = """\
Sessions are made by the application's login flow; the PDP reads, renews and
revokes them. A session is named by its handle: the first 16 hex digits of the hash
of its id (the id itself, the cookie, is never stored). Any 8 or more leading digits
that name one session will do.

examples:
  pdp sessions list --subject user:alice
  pdp sessions revoke 3f9a1c0e7b2d4f60           # one session
  pdp sessions revoke --subject user:alice       # log out everywhere
  pdp sessions purge --older-than 7d
"""


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "sessions",
        help="list, revoke and purge browser sessions",
        description="Browser sessions in the store (--db, $PDP_DB_URL, or sqlite:///pdp.db).",
        about=ABOUT,
    )

    ls = actions.add_parser(
        "list",
        help="list sessions, oldest first",
        description="List sessions: handle, subject, state, times and idle timeout.",
        epilog=EXIT_CODES,
    )
    ls.add_argument("--subject", metavar="SUBJECT", help="only this subject's sessions")
    ls.add_argument("--active", action="store_true", help="leave out ended sessions")
    add_db_option(ls)
    add_json_option(ls)
    ls.set_defaults(run=_list)

    r = actions.add_parser(
        "revoke",
        help="end one session, or every session of a subject",
        description="Revoke the session HANDLE, or with --subject every session of SUBJECT. "
        "It fails as `session_revoked` from now on.",
        epilog=EXIT_CODES,
    )
    r.add_argument("handle", nargs="?", metavar="HANDLE", help="the session's handle")
    r.add_argument("--subject", metavar="SUBJECT", help="revoke all of this subject's sessions")
    add_db_option(r)
    add_json_option(r)
    r.set_defaults(run=_revoke)

    pu = actions.add_parser(
        "purge",
        help="delete ended sessions",
        description="Delete sessions that expired or were revoked more than --older-than ago "
        "(sessions ended by their idle timeout go once their absolute expiry passes).",
        epilog=EXIT_CODES,
    )
    pu.add_argument(
        "--older-than",
        default="0s",
        metavar="DURATION",
        help="keep sessions that ended more recently: 1h, 7d (default 0s: delete all ended)",
    )
    add_db_option(pu)
    add_json_option(pu)
    pu.set_defaults(run=_purge)


def _session_json(r: SessionRecord, now: datetime) -> dict[str, Any]:
    return {
        "handle": r.handle,
        "subject": r.subject_key,
        "state": r.state(now),
        "created_at": iso(r.created_at),
        "expires_at": iso(r.expires_at),
        "last_seen_at": iso(r.last_seen_at),
        "idle_timeout_s": int(r.idle_timeout.total_seconds()),
        "revoked_at": iso(r.revoked_at),
        "properties": dict(r.properties),
    }


def _subject(text: str | None) -> str | None:
    return None if text is None else ":".join(subject_parts(text))


@handles_store_errors
def _list(args: argparse.Namespace) -> int:
    from pdp.store.identity import SqlSessions

    subject = _subject(args.subject)
    now = datetime.now(UTC)
    with open_store(args) as store:
        rows = SqlSessions(store).records(subject)
    if args.active:
        rows = [r for r in rows if r.state(now) == "active"]
    if args.json:
        print_json([_session_json(r, now) for r in rows])
        return EXIT_OK
    if not rows:
        out.print("no sessions match", markup=False)
        return EXIT_OK
    table = new_table("handle", "subject", "state", "created", "last seen", "idle", "expires")
    for r in rows:
        plain_row(
            table,
            r.handle,
            r.subject_key,
            r.state(now),
            iso(r.created_at) or "-",
            iso(r.last_seen_at) or "-",
            duration_text(r.idle_timeout),
            iso(r.expires_at) or "-",
        )
    print_table(table)
    out.print(f"{len(rows)} session(s)", markup=False)
    return EXIT_OK


@handles_store_errors
def _revoke(args: argparse.Namespace) -> int:
    from pdp.store.identity import SqlSessions

    if (args.handle is None) == (args.subject is None):
        fail("give a session HANDLE or --subject SUBJECT (one of them)")
        return EXIT_USAGE
    subject = _subject(args.subject)
    now = datetime.now(UTC)
    with open_store(args) as store:
        sessions = Sessions(SqlSessions(store))
        if subject is not None:
            n = sessions.revoke_subject(subject, now=now)
            message = f"revoked {n} session(s) of `{subject}`"
            data: dict[str, Any] = {"subject": subject, "revoked": n}
        else:
            sessions.revoke(args.handle, now=now)
            message = f"revoked session {args.handle.lower()}"
            data = {"handle": args.handle.lower(), "revoked": 1}
    if args.json:
        print_json({**data, "at": iso(now)})
    else:
        out.print(message, markup=False)
    return EXIT_OK


@handles_store_errors
def _purge(args: argparse.Namespace) -> int:
    from pdp.store.identity import SqlSessions

    try:
        before = datetime.now(UTC) - parse_duration(args.older_than)
    except OverflowError:  # back past the year 1
        raise ValueError(f"--older-than `{args.older_than}` reaches before the year 1") from None
    with open_store(args) as store:
        n = SqlSessions(store).purge(before)
    if args.json:
        print_json({"deleted": n, "ended_before": iso(before)})
    else:
        out.print(f"deleted {n} ended session(s)", markup=False)
    return EXIT_OK
