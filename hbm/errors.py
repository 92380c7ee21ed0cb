"""One error type for every bad input, with a caret under the offending source.

Every stage raises :class:`HbmError`; the command line prints ``render()`` and
exits with status 2. Semantic checks collect several :class:`Problem` values
before raising, so a user sees all of them at once.
"""
from __future__ import annotations

import difflib
import errno
import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True, slots=True)
class Span:
    """Half-open character range ``[start, end)`` in a source text."""

    start: int
    end: int

    def __add__(self, other: "Span") -> "Span":
        return Span(min(self.start, other.start), max(self.end, other.end))


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input: a message, and where it is."""

    message: str
    span: Span | None = None
    source: str | None = None
    hint: str | None = None
    where: str | None = None  # e.g. "formula", "spec key 'inference.steps'", "column 'units'"

    def render(self) -> str:
        lines = [f"error: {self.message}"]
        if self.source is not None and self.span is not None:
            lines += _caret_lines(self.source, self.span, self.where)
        elif self.where:
            lines.append(f"  --> {self.where}")
        if self.hint:
            lines.append(f"  = {self.hint}")
        return "\n".join(lines)


def _caret_lines(source: str, span: Span, where: str | None) -> list[str]:
    start = max(0, min(span.start, len(source)))
    end = max(start + 1, min(span.end, len(source) + 1))
    line_start = source.rfind("\n", 0, start) + 1
    line_end = source.find("\n", start)
    line_end = len(source) if line_end < 0 else line_end
    line_no = source.count("\n", 0, start) + 1
    text = source[line_start:line_end]
    col = start - line_start
    width = max(1, min(end, line_end + 1) - start)
    gutter = f"{line_no} | " if "\n" in source else "  | "
    out = [f"  --> {where}" if where else "  -->"]
    out.append(gutter + text)
    out.append(" " * len(gutter) + " " * col + "^" + "~" * (width - 1))
    return out


class HbmError(Exception):
    """A user-facing error: one or more problems, each able to point at its source."""

    def __init__(self, message: str | None = None, *, span: Span | None = None,
                 source: str | None = None, hint: str | None = None, where: str | None = None,
                 problems: Sequence[Problem] = ()):
        probs = list(problems)
        if message is not None:
            probs.insert(0, Problem(message, span, source, hint, where))
        if not probs:
            raise ValueError("HbmError needs a message or problems")
        self.problems: tuple[Problem, ...] = tuple(probs)
        super().__init__(self.render())

    @property
    def message(self) -> str:
        return self.problems[0].message

    def render(self) -> str:
        return "\n\n".join(p.render() for p in self.problems)

    def with_source(self, source: str, where: str) -> "HbmError":
        """The same problems, attached to ``source`` where they have a span and no source."""
        return HbmError(problems=[
            Problem(p.message, p.span, p.source if p.source is not None or p.span is None else source,
                    p.hint, p.where or where) for p in self.problems])


class ProblemList:
    """Collects problems during a semantic check; ``raise_if_any`` raises them together."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, message: str, **kw) -> None:
        self.items.append(Problem(message, **kw))

    def extend(self, err: HbmError) -> None:
        self.items.extend(err.problems)

    def raise_if_any(self) -> None:
        if self.items:
            raise HbmError(problems=self.items)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (ignoring case and spaces), or None if none is close."""
    cands = list(candidates)
    norm = {c.replace(" ", "").lower(): c for c in cands}
    hits = difflib.get_close_matches(name.replace(" ", "").lower(), list(norm), n=1, cutoff=0.6)
    return norm[hits[0]] if hits else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint line ``did you mean 'x'?`` or None."""
    best = closest(name, candidates)
    return f"did you mean '{best}'?" if best else None


# ---------------------------------------------------------------- the user's file system

_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)", re.IGNORECASE)


def _os_hint(code: int | None, path: str | None) -> str:
    where = os.path.dirname(os.path.abspath(path)) if path else "the directory"
    hints = {
        errno.ENOSPC: f"the disk holding {where} is full: free some space, or write elsewhere",
        errno.EDQUOT: f"your disk quota for {where} is used up: free some space, or write elsewhere",
        errno.EROFS: f"{where} is on a read-only file system: write elsewhere (another --out, or run_dir in Python)",
        errno.EACCES: f"you may not write in {where}: write elsewhere (another --out, or run_dir in Python), "
                      "or change its permissions",
        errno.EPERM: f"the operation is not permitted in {where}: write elsewhere (another --out, or run_dir in Python)",
        errno.ENOTDIR: f"a part of {path} is a file, not a directory: choose another path",
        errno.EISDIR: f"{path} is a directory: give a file name",
        errno.ENOENT: f"{where} does not exist or cannot hold files: create it, or choose another path",
        errno.EMFILE: "this process has too many open files: raise the limit (ulimit -n) and run again",
        errno.ENFILE: "the system has too many open files: close some programs and run again",
        errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
        errno.EEXIST: f"{path} appeared meanwhile: choose another path, or remove it",
    }
    return hints.get(code, "check the path, its permissions and the free space, then run again")


def os_error(e: OSError, doing: str = "cannot use", path=None) -> HbmError:
    """An ``OSError`` from the user's file system (a full disk, a read-only directory, ``--out``
    under a file) as an :class:`HbmError`: what failed, on which path, and what to do.
    ``doing`` says what failed ("cannot write"); ``path`` defaults to the error's own file name.
    h5py's errors carry the errno in their text only; it is read from there."""
    code = e.errno
    if code is None:
        m = _ERRNO_IN_TEXT.search(str(e))
        code = int(m.group(1)) if m else None
    path = os.fspath(path) if path is not None else (os.fspath(e.filename) if e.filename else None)
    reason = os.strerror(code) if code else (e.strerror or str(e) or type(e).__name__)
    return HbmError(f"{doing} {path}: {reason}" if path else f"{doing}: {reason}", hint=_os_hint(code, path))
