"""Diagnostics: source files, spans, and the `file:line:col: error:` messages users see.

Every user-facing error in dlc is a `UserError` carrying an optional `Span`.
`render()` formats it like a modern compiler: the location, the message, the
source line, a caret under the span, and optional notes and a hint.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class SourceFile:
    """A named piece of source text (a `.dls` file, or a `--set` value)."""

    path: str
    text: str = field(repr=False)

    def line(self, lineno: int) -> str:
        lines = self.lines()
        return lines[lineno - 1] if 0 < lineno <= len(lines) else ""

    @cached_property
    def _lines(self) -> list[str]:
        return self.text.splitlines()

    def lines(self) -> list[str]:
        """The text split into lines, once per file (not once per message or layer title)."""
        return self._lines


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line/column, end exclusive."""

    source: SourceFile
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.col}"

    @property
    def short(self) -> str:
        """`file.dls:3:5` with only the file's base name, for IR comments."""
        return f"{self.source.path.rsplit('/', 1)[-1]}:{self.line}:{self.col}"


@dataclass
class Note:
    message: str
    span: Span | None = None


class UserError(Exception):
    """An error caused by the user's input (spec, arguments, data): exit code 2."""

    def __init__(self, message: str, span: Span | None = None, *, hint: str | None = None,
                 notes: list[Note] | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = notes or []

    def render(self) -> str:
        out = [_render_one("error", self.message, self.span)]
        for note in self.notes:
            out.append(_render_one("note", note.message, note.span))
        if self.hint:
            out.append(f"  = hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


def render_warning(message: str, span: Span | None = None, hint: str | None = None) -> str:
    """A warning in the form of an error (`file:line:col: warning: ...`, the caret line)."""
    return _render_one("warning", message, span) + (f"\n  = hint: {hint}" if hint else "")


def _render_one(kind: str, message: str, span: Span | None) -> str:
    if span is None:
        return f"dlc: {kind}: {message}"
    head = f"{span}: {kind}: {message}"
    src = span.source.line(span.line).replace("\t", " ")
    if not src.strip():
        return head
    width = 1
    if span.end_line == span.line and span.end_col and span.end_col > span.col:
        width = span.end_col - span.col
    src, col, width = _window(src, span.col, width)
    gutter = f"{span.line:>4} | "
    caret = " " * (len(gutter) - 2) + "| " + " " * (col - 1) + "^" + "~" * (width - 1)
    return f"{head}\n{gutter}{src}\n{caret}"


WINDOW = 100          # the most characters of a source line a diagnostic shows


def _window(src: str, col: int, width: int) -> tuple[str, int, int]:
    """A long line cut to WINDOW characters around the caret, with `...` where it was cut;
    the caret's column and width within what is shown."""
    if len(src) <= WINDOW:
        return src, col, width
    start = max(0, min(col - 1 - WINDOW // 3, len(src) - WINDOW))
    end = start + WINDOW
    shown = ("..." if start else "") + src[start:end] + ("..." if end < len(src) else "")
    col = col - start + (3 if start else 0)
    return shown, col, max(1, min(width, WINDOW - (col - 1)))


def did_you_mean(name: str, candidates) -> str | None:
    """A 'did you mean' hint for the closest candidate, or None."""
    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def located(e: Exception, fallback: Span | None = None, hint: str | None = None) -> UserError:
    """A compiler `ShapeError` (which carries the `loc` of the node it stopped) as a UserError."""
    return UserError(str(e), getattr(e, "loc", None) or fallback, hint=hint)
