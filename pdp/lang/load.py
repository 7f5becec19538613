"""Read policy files from disk or memory, parse, validate, and hash them."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pdp.lang import ast
from pdp.lang.errors import PolicyError, PolicyLoadError, Severity
from pdp.lang.parse import decode, parse
from pdp.lang.schema import Schema
from pdp.lang.source import SourceFile, SourceLoc
from pdp.lang.to_ast import to_ast
from pdp.lang.validate import validate

POLICY_SUFFIX = ".pdp"


@dataclass(frozen=True)
class LoadResult:
    """A policy set (None when any error was found) and every error and warning."""

    policy_set: ast.PolicySet | None
    problems: tuple[PolicyError, ...]
    sources: Mapping[str, SourceFile]

    @property
    def errors(self) -> tuple[PolicyError, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[PolicyError, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)

    def unwrap(self) -> ast.PolicySet:
        """The policy set, or `PolicyLoadError` carrying every error."""
        if self.policy_set is None:
            raise PolicyLoadError(self.errors)
        return self.policy_set


def content_hash(files: Mapping[str, bytes]) -> str:
    """The policy version: a hash of every file's name and bytes, independent of read order."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(name.encode())
        h.update(b"\0")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return "sha256:" + h.hexdigest()[:16]


def discover(paths: Iterable[str | Path]) -> dict[str, bytes]:
    """Policy files under the given files or directories, keyed by a stable display name.

    A directory's files are named relative to it, so ids like `docs.pdp:12` do not
    change with the working directory.
    """
    found: dict[str, bytes] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for f in visible_files(p, POLICY_SUFFIX):
                found[f.relative_to(p).as_posix()] = f.read_bytes()
        elif p.is_file():
            found[p.as_posix()] = p.read_bytes()
        else:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", str(p))
    return found


def visible_files(root: Path, suffix: str) -> list[Path]:
    """Files under `root` ending in `suffix`, sorted, skipping hidden files and directories.

    Hidden entries are editors' lock and backup files, version-control data, and the
    `..data` / `..2026_...` directories of a Kubernetes ConfigMap mount, whose files are
    also linked at the top: read both and every declaration would appear twice.

    A link whose target is gone is kept, so that reading it fails loudly: skipped, a
    file of forbids would be dropped from the policies without a word.
    """
    return sorted(
        f
        for f in root.rglob(f"*{suffix}")
        if not any(part.startswith(".") for part in f.relative_to(root).parts)
        and (f.is_file() or (f.is_symlink() and not f.exists()))
    )


def load_paths(paths: Iterable[str | Path], schema: Schema | None = None) -> LoadResult:
    """Load every policy file under `paths` (files or directories)."""
    return load_texts(discover(paths), schema)


def load_texts(files: Mapping[str, bytes | str], schema: Schema | None = None) -> LoadResult:
    """Parse and validate policy files given as name → content."""
    raw = {n: (c.encode() if isinstance(c, str) else c) for n, c in files.items()}
    problems: list[PolicyError] = []
    sources: dict[str, SourceFile] = {}
    parsed: list[ast.PolicyFile] = []
    for name in sorted(raw):
        src, errs = decode(name, raw[name])
        problems.extend(errs)
        if src is None:
            continue
        sources[name] = src
        tree, errs = parse(src)
        problems.extend(errs)
        if tree is None:
            continue
        pfile, errs = to_ast(src, tree)
        problems.extend(errs)
        parsed.append(pfile)
    if not raw:
        problems.append(
            PolicyError(
                "no_policies",
                f"no policy files found (they end in `{POLICY_SUFFIX}`)",
                None,
            )
        )
    policy_set = ast.PolicySet(tuple(parsed), content_hash(raw))
    if not any(p.is_error for p in problems):
        problems.extend(validate(policy_set, schema))
    problems = [_with_line(p, sources) for p in problems]
    problems.sort(key=_order)
    ok = not any(p.is_error for p in problems)
    return LoadResult(policy_set if ok else None, tuple(problems), sources)


def _with_line(p: PolicyError, sources: Mapping[str, SourceFile]) -> PolicyError:
    if p.source_line or p.loc is None or p.loc.file not in sources:
        return p
    line = sources[p.loc.file].line_text(p.loc.line)
    return PolicyError(p.code, p.message, p.loc, p.help, p.severity, line)


def _order(p: PolicyError) -> tuple[str, int, int, str]:
    loc = p.loc or SourceLoc("", 0, 0, 0, 0)
    return (loc.file, loc.line, loc.column, p.code)
