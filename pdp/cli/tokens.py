"""`pdp tokens revoke|list|purge`: the revocation list of bearer tokens (JWTs)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from pdp.cli.common import EXIT_OK, EXIT_USAGE, add_json_option, fail, out, print_json
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
from pdp.cli.idopts import subject_parts

ABOUT = """\
Bearer tokens are verified without the database; this list is the exception, for
emergencies until a token's own (short) expiry. A revocation reaches every PDP
within its refresh interval (5 s by default).

  --jti J [--issuer I] [--expires T]   one token; without --issuer, J of any issuer.
                                       --expires (the token's `exp`) lets `purge`
                                       drop the entry once the token is dead anyway
  --subject S [--before T]             every token of S issued before T (default:
                                       now), whatever its issuer; a token without
                                       `iat` counts as issued before

examples:
  pdp tokens revoke --jti 4f1c9e2a --issuer https://id.example.com --expires 2026-11-27T13:00:00Z
  pdp tokens revoke --subject user:mallory
  pdp tokens list --json
  pdp tokens purge
"""


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "tokens",
        help="revoke bearer tokens (by jti, or all of a subject's before a time)",
        description="The bearer token revocation list in the store (--db, $PDP_DB_URL, "
        "or sqlite:///pdp.db).",
        about=ABOUT,
    )

    r = actions.add_parser(
        "revoke",
        help="revoke one token (--jti) or all of a subject's (--subject)",
        description="Revoke the token --jti, or every token of --subject issued before "
        "--before (default: now). Refused tokens fail as `token_revoked`.",
        epilog=ABOUT + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--jti", metavar="JTI", help="the token's `jti` claim")
    r.add_argument("--issuer", metavar="ISSUER", help="the token's `iss` (default: any issuer)")
    r.add_argument(
        "--expires", metavar="WHEN", help="the token's expiry (`exp`), so the entry can be purged"
    )
    r.add_argument("--subject", metavar="SUBJECT", help="type:id whose tokens to revoke")
    r.add_argument(
        "--before", metavar="WHEN", help="with --subject: tokens issued before this (default: now)"
    )
    add_actor_option(r)
    add_db_option(r)
    add_json_option(r)
    r.set_defaults(run=_revoke)

    ls = actions.add_parser(
        "list", help="list revoked tokens and subject cut-offs", epilog=EXIT_CODES
    )
    add_db_option(ls)
    add_json_option(ls)
    ls.set_defaults(run=_list)

    pu = actions.add_parser(
        "purge",
        help="drop revocations of tokens that have expired anyway",
        description="Delete revoked-token entries whose token expired (beyond the largest "
        "clock leeway, 5 minutes). Entries without --expires and subject cut-offs stay.",
        epilog=EXIT_CODES,
    )
    add_db_option(pu)
    add_json_option(pu)
    pu.set_defaults(run=_purge)


@handles_store_errors
def _revoke(args: argparse.Namespace) -> int:
    from pdp.store.identity import SqlTokenRevocations

    by_jti, by_subject = args.jti is not None, args.subject is not None
    if by_jti == by_subject:
        fail("give --jti JTI or --subject SUBJECT (one of them)")
        return EXIT_USAGE
    if by_jti and args.before is not None:
        fail("--before goes with --subject")
        return EXIT_USAGE
    if by_subject and (args.issuer is not None or args.expires is not None):
        fail("--issuer and --expires go with --jti")
        return EXIT_USAGE
    now = datetime.now(UTC)
    who = actor(args)
    if by_subject:
        subject = ":".join(subject_parts(args.subject))
        before = parse_expiry(args.before, now, option="--before")
        with open_store(args, create=True) as store:
            cut, moved = SqlTokenRevocations(store).revoke_subject(
                subject, before=before, now=now, created_by=who
            )
        when = iso(cut.not_before)
        message = (
            f"revoked every token of `{subject}` issued before {when}"
            if moved
            else f"tokens of `{subject}` issued before {when} are already revoked; nothing changed"
        )
        data: dict[str, Any] = {"subject": subject, "before": when, "changed": moved}
    else:
        expires = parse_expiry(args.expires, now)
        issuer = args.issuer or ""
        with open_store(args, create=True) as store:
            tok, new = SqlTokenRevocations(store).revoke_token(
                args.jti, issuer=issuer, expires_at=expires, now=now, created_by=who
            )
        whose = f" of `{issuer}`" if issuer else " (any issuer)"
        message = (
            f"revoked token `{tok.jti}`{whose}"
            if new
            else f"token `{tok.jti}`{whose} is already revoked; nothing changed"
        )
        data = {
            "jti": tok.jti,
            "issuer": tok.issuer or None,
            "expires_at": iso(tok.expires_at),
            "changed": new,
        }
    if args.json:
        print_json({**data, "message": message})
    else:
        out.print(message, markup=False)
    return EXIT_OK


@handles_store_errors
def _list(args: argparse.Namespace) -> int:
    from pdp.store.identity import SqlTokenRevocations

    with open_store(args) as store:
        revocations = SqlTokenRevocations(store)
        tokens = revocations.tokens()
        cutoffs = revocations.cutoffs()
    if args.json:
        print_json(
            {
                "tokens": [
                    {
                        "jti": t.jti,
                        "issuer": t.issuer or None,
                        "expires_at": iso(t.expires_at),
                        "revoked_at": iso(t.revoked_at),
                        "created_by": t.created_by,
                    }
                    for t in tokens
                ],
                "subjects": [
                    {
                        "subject": c.subject,
                        "before": iso(c.not_before),
                        "revoked_at": iso(c.revoked_at),
                        "created_by": c.created_by,
                    }
                    for c in cutoffs
                ],
            }
        )
        return EXIT_OK
    if not tokens and not cutoffs:
        out.print("no revoked tokens", markup=False)
        return EXIT_OK
    if tokens:
        table = new_table("jti", "issuer", "token expires", "revoked", "by")
        for t in tokens:
            plain_row(
                table,
                t.jti,
                t.issuer or "(any)",
                iso(t.expires_at) or "-",
                iso(t.revoked_at) or "-",
                t.created_by or "-",
            )
        print_table(table)
        out.print(f"{len(tokens)} revoked token(s)", markup=False)
    if cutoffs:
        if tokens:
            out.print("", markup=False)
        table = new_table("subject", "tokens issued before", "revoked", "by")
        for c in cutoffs:
            plain_row(
                table,
                c.subject,
                iso(c.not_before) or "-",
                iso(c.revoked_at) or "-",
                c.created_by or "-",
            )
        print_table(table)
        out.print(f"{len(cutoffs)} subject(s)", markup=False)
    return EXIT_OK


@handles_store_errors
def _purge(args: argparse.Namespace) -> int:
    from pdp.store.identity import SqlTokenRevocations

    with open_store(args) as store:
        n = SqlTokenRevocations(store).purge()
    if args.json:
        print_json({"deleted": n})
    else:
        out.print(f"deleted {n} revocation(s) of expired tokens", markup=False)
    return EXIT_OK
