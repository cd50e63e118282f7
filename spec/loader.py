"""Read `.dls` files and their imports, with located errors for missing or unreadable files."""
from __future__ import annotations

from pathlib import Path

from . import ast
from .diagnostics import SourceFile, Span, UserError
from .parser import parse


def read_source(path: str | Path, span: Span | None = None) -> str:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}", span) from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a .dls file", span) from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}", span) from None
    bad = data.find(b"\x00")
    if bad < 0:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = e.start
    line = data.count(b"\n", 0, bad) + 1
    col = bad - (data.rfind(b"\n", 0, bad) + 1) + 1
    where = span or Span(SourceFile(str(path), ""), line, col)
    raise UserError(f"{path} is not a text .dls spec: byte 0x{data[bad]:02x} at line {line}, "
                    f"column {col} is not UTF-8 text", where,
                    hint="a .dls spec is UTF-8 text; is this the right file?")


_PARSED: dict[tuple[str, str], ast.Module] = {}


def parse_cached(text: str, path: str) -> ast.Module:
    """`parse`, once per (path, text): `dlc check` loads a spec more than once, and a big spec
    takes a while to parse.  The AST is not modified after parsing, so sharing it is safe."""
    key = (path, text)
    module = _PARSED.get(key)
    if module is None:
        if len(_PARSED) >= 16:
            _PARSED.clear()
        module = _PARSED[key] = parse(text, path)
    return module


def load_module(path: str | Path, _stack: tuple[Path, ...] = (),
                span: Span | None = None) -> tuple[ast.Module, dict[str, ast.BlockDef]]:
    """Parse `path` and, recursively, its imports. Returns the module and every block it sees."""
    p = Path(path).resolve()
    if p in _stack:
        cycle = " -> ".join(q.name for q in (*_stack, p))
        raise UserError(f"import cycle: {cycle}", span)
    module = parse_cached(read_source(path, span), str(path))
    blocks: dict[str, ast.BlockDef] = {}
    for imp in module.imports:
        target = (Path(path).parent / imp.path)
        _, imported = load_module(target, (*_stack, p), imp.span)
        for name, b in imported.items():
            _define(blocks, b)
    for b in module.blocks:
        _define(blocks, b)
    _check_names(module)
    return module, blocks


def _check_names(module: ast.Module) -> None:
    """Two models of one name, or two parameters of one name in a block or model."""
    from .diagnostics import Note
    seen: dict[str, ast.BlockDef] = {}
    for m in module.models:
        if m.name in seen:
            raise UserError(f"model '{m.name}' is defined twice", m.span,
                            notes=[Note("first defined here", seen[m.name].span)])
        seen[m.name] = m
    for d in (*module.blocks, *module.models):
        params: dict[str, ast.Param] = {}
        for prm in d.params:
            if prm.name in params:
                raise UserError(f"{d.kind} {d.name} has two parameters named '{prm.name}'",
                                prm.span, notes=[Note("the first is here", params[prm.name].span)])
            params[prm.name] = prm


def _define(blocks: dict[str, ast.BlockDef], b: ast.BlockDef) -> None:
    prev = blocks.get(b.name)
    if prev is not None and prev is not b and prev.span != b.span:
        from .diagnostics import Note
        raise UserError(f"block '{b.name}' is defined twice", b.span,
                        notes=[Note("first defined here", prev.span)])
    blocks[b.name] = b
