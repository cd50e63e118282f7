"""Parse `.dls` text into the AST, turning every syntax error into a located `UserError`."""
from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from . import ast
from ..compiler.limits import MAX_INT_DIGITS
from .diagnostics import SourceFile, Span, UserError

MAX_NESTING = 64
KEYWORDS = {"import", "block", "model", "train", "input", "output", "residual", "shortcut",
            "concat", "branch", "if", "else", "and", "or", "not", "in", "true", "false"}

# What users should read instead of Lark's terminal names.
_PRETTY = {
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
    "RBRACE": "'}'", "COMMA": "','", "COLON": "':'", "DOT": "'.'", "EQUAL": "'='",
    "MINUS": "'-'", "_NL": "a new line", "NAME": "a name", "INT": "an integer",
    "FLOAT": "a number", "STRING": "a string", "COMPOP": "a comparison", "ADDOP": "'+' or '-'",
    "MULOP": "'*', '/', '//' or '%'", "$END": "the end of the file",
}


def _literal(term: str) -> str | None:
    """The literal text of a string terminal ('->' for the anonymous arrow), else None."""
    for t in _parser().terminals:
        if t.name == term and t.pattern.type == "str":
            return t.pattern.value
    return None


def _pretty(term: str) -> str:
    if term in _PRETTY:
        return _PRETTY[term]
    lit = _literal(term)
    if lit is not None:
        return f"'{lit}'"
    if term.isupper() and term.isalpha():
        return f"'{term.lower()}'"          # keywords: IMPORT -> 'import'
    return term


class _ParenNewlines:
    """Post-lexer: newlines inside (...) and [...] do not end statements; also bounds nesting."""

    always_accept = ("_NL",)

    def __init__(self):
        self.source: SourceFile | None = None

    def process(self, stream):
        depth = []                                   # stack of open brackets
        for tok in stream:
            if tok.type in ("LPAR", "LSQB", "LBRACE"):
                depth.append(tok.type)
                if len(depth) > MAX_NESTING:
                    raise UserError(f"nesting is too deep (more than {MAX_NESTING} levels)",
                                    _tok_span(self.source, tok),
                                    hint="split the expression or use named blocks")
            elif tok.type in ("RPAR", "RSQB", "RBRACE") and depth:
                depth.pop()
            if tok.type == "_NL" and depth and depth[-1] != "LBRACE":
                continue
            yield tok


_postlex = _ParenNewlines()


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, postlex=_postlex,
                     maybe_placeholders=False)


def _tok_span(src: SourceFile, tok: Token) -> Span:
    end_col = tok.end_column if tok.end_line == tok.line else None
    return Span(src, tok.line, tok.column, tok.line, end_col)


# Friendly messages for common mistakes, found by example (Lark's match_examples).
_EXAMPLES = {
    "a layer chain needs '->' between steps": [
        "model M {\n linear(3) relu\n}\n", "model M {\n relu relu\n}\n"],
    "missing ')' to close the argument list": ["model M {\n linear(3\n}\n"],
    "'->' must be followed by a layer": ["model M {\n linear(3) -> \n}\n",
                                         "model M {\n linear(3) -> -> relu\n}\n"],
    "missing a value after '='": ["model M {\n x = \n}\n", "model M(c=) {\n}\n"],
    "'{' must follow on the same line": ["model M \n input x: f32[3]\n}\n",
                                         "block B(c)\n{\n}\n"],
    "unclosed '{': a block body must end with '}'": ["model M {\n relu\n"],
    "'shortcut' must follow the closing '}' of 'residual' on the same line": [
        "model M {\n residual { relu }\n shortcut { relu }\n}\n"],
    "an input is declared as `input NAME: f32[dims]`": [
        "model M {\n input x f32[3]\n}\n", "model M {\n input x: [3]\n}\n"],
}


def parse(text: str, path: str = "<input>") -> ast.Module:
    src = SourceFile(path, text)
    _postlex.source = src
    try:
        tree = _parser().parse(text)
    except lark.UnexpectedInput as e:
        raise _syntax_error(src, e) from None
    except RecursionError:
        raise UserError("nesting is too deep to parse", Span(src, 1, 1)) from None
    _check_depth(src, tree)
    try:
        return _ToAst(src).transform(tree)
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, UserError):
            raise e.orig_exc from None
        raise
    except RecursionError:
        raise UserError("nesting is too deep to parse", Span(src, 1, 1)) from None


MAX_TREE_DEPTH = 200
MAX_OPERANDS = 256


def _check_depth(src: SourceFile, tree: lark.Tree) -> None:
    """Reject absurdly deep or long expressions with a location, before anything recurses."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, lark.Tree):
            continue
        if depth > MAX_TREE_DEPTH:
            raise UserError(f"this expression nests too deeply (more than {MAX_TREE_DEPTH} levels)",
                            _where(src, node), hint="split it up, or use named values and blocks")
        if node.data in ("arith", "or_", "and_") and len(node.children) > MAX_OPERANDS:
            raise UserError(f"this expression is too long (more than {MAX_OPERANDS} operands)",
                            _where(src, node))
        stack.extend((c, depth + 1) for c in node.children)


def _where(src: SourceFile, node: lark.Tree) -> Span:
    meta = node.meta
    return Span(src, meta.line, meta.column) if not meta.empty else Span(src, 1, 1)


def parse_expr(text: str, src: SourceFile, offset: int = 0) -> ast.Node:
    """Parse one expression (a `--set` value) found at column `offset + 1` of `src`."""
    try:
        module = parse(f"train {{\n_ {text}\n}}\n", src.path)
    except UserError as e:
        if e.span is not None and e.span.line == 2:
            raise UserError(e.message, Span(src, 1, max(1, e.span.col + offset - 2)),
                            hint=e.hint) from None
        # past the value's end: the wrapper's own `}` is not what the user typed
        raise UserError("the value ends too early", Span(src, 1, len(src.text) + 1),
                        hint=e.hint) from None
    if len(module.trains[0].settings) != 1:
        raise UserError("a --set value must be one expression on one line", Span(src, 1, offset + 1))
    value = module.trains[0].settings[0].value
    if value is None:
        raise UserError("expected a value after '='", Span(src, 1, offset + 1))
    return _reanchor(value, src, offset - 2)


def _reanchor(node, src: SourceFile, shift: int):
    """Move the spans of a wrapped expression (line 2 of the wrapper) onto line 1 of `src`."""
    import dataclasses
    for f in dataclasses.fields(node):
        val = getattr(node, f.name)
        if isinstance(val, Span):
            end = None if val.end_col is None else val.end_col + shift
            setattr(node, f.name, Span(src, 1, val.col + shift, 1, end))
        elif isinstance(val, ast.Node):
            _reanchor(val, src, shift)
        elif isinstance(val, list):
            for item in val:
                if isinstance(item, ast.Node):
                    _reanchor(item, src, shift)
    return node


def _open_bracket_positions(text: str) -> list[tuple[str, int]]:
    """(bracket, offset) still open at the end of `text` (strings and comments skipped)."""
    stack = []
    for m in re.finditer(r'"(?:\\.|[^"\\\n])*"|#[^\n]*|[()\[\]{}]', text):
        ch = m.group(0)
        if ch in "([{":
            stack.append((ch, m.start()))
        elif ch in ")]}" and stack:
            stack.pop()
    return stack


def _open_brackets(text: str) -> str:
    return "".join(ch for ch, _ in _open_bracket_positions(text))


def _classify(src: SourceFile, e: lark.UnexpectedInput) -> str | None:
    """Name the common mistakes from the token and what was expected instead."""
    if not isinstance(e, lark.UnexpectedToken) or e.token.start_pos is None:
        return None
    expected = {_literal(t) or t for t in e.expected}
    word = e.token.type in ("NAME", "INT", "FLOAT", "STRING")
    inner = _open_brackets(src.text[:e.token.start_pos])[-1:]
    if word and inner == "(" and ")" in expected and "," in expected:
        return f"missing ',' or ')' before {str(e.token)!r} in an argument list"
    if word and inner == "{" and "->" in expected:
        return f"missing '->' before {str(e.token)!r}: steps of a chain are joined by '->'"
    if word and inner == "[" and "]" in expected and "," in expected:
        return f"missing ',' or ']' before {str(e.token)!r}"
    return None


def _syntax_error(src: SourceFile, e: lark.UnexpectedInput) -> UserError:
    label = _classify(src, e)
    classified = label is not None
    if label is None:
        try:
            label = e.match_examples(_parser().parse, _EXAMPLES, use_accepts=True)
        except Exception:                            # noqa: BLE001 — best effort only
            label = None
    if isinstance(e, lark.UnexpectedCharacters):
        ch = src.text[e.pos_in_stream] if e.pos_in_stream < len(src.text) else "?"
        span = Span(src, e.line, e.column, e.line, e.column + 1)
        msg = label or f"unexpected character {ch!r}"
        return UserError(msg, span, hint=_expected_hint(e.allowed))
    if isinstance(e, lark.UnexpectedEOF) or (isinstance(e, lark.UnexpectedToken)
                                              and e.token.type == "$END"):
        lines = src.text.splitlines() or [""]
        span = Span(src, len(lines), len(lines[-1]) + 1)
        still_open = _open_bracket_positions(src.text)
        if still_open:
            ch, pos = still_open[-1]
            line = src.text.count("\n", 0, pos) + 1
            col = pos - (src.text.rfind("\n", 0, pos) + 1) + 1
            closer = {"(": ")", "[": "]", "{": "}"}[ch]
            return UserError(f"unexpected end of file: this '{ch}' is never closed",
                             Span(src, line, col, line, col + 1),
                             hint=f"add the matching '{closer}'")
        return UserError(label or "unexpected end of file", span,
                         hint=_expected_hint(getattr(e, "expected", None)))
    tok = e.token
    if src.line(tok.line).lstrip().startswith("->"):
        col = len(src.line(tok.line)) - len(src.line(tok.line).lstrip()) + 1
        return UserError("a line cannot start with '->'", Span(src, tok.line, col, tok.line, col + 2),
                         hint="end the previous line with '->' to continue a chain")
    shown = "a new line" if tok.type == "_NL" else repr(str(tok))
    span = _tok_span(src, tok)
    if tok.type == "_NL":                        # point at the end of the line, not the next one
        line = src.line(tok.line)
        span = Span(src, tok.line, max(1, len(line.rstrip()) + 1))
    return UserError(label or f"unexpected {shown}", span,
                     hint=None if classified else _expected_hint(e.expected))


def _expected_hint(expected) -> str | None:
    if not expected:
        return None
    names = sorted({_pretty(t) for t in expected})
    if len(names) > 8:
        names = names[:8] + ["..."]
    return "expected " + ", ".join(names)


def _span(src: SourceFile, meta) -> Span:
    return Span(src, meta.line, meta.column, meta.end_line, meta.end_column)


@v_args(meta=True)
class _ToAst(Transformer):
    """Parse tree -> AST dataclasses."""

    def __init__(self, src: SourceFile):
        super().__init__()
        self.src = src

    def sp(self, meta) -> Span:
        return _span(self.src, meta)

    # -- top level
    def start(self, meta, items):
        m = ast.Module(Span(self.src, 1, 1), [], [], [], [])
        for it in items:
            if isinstance(it, ast.Import):
                m.imports.append(it)
            elif isinstance(it, ast.TrainDef):
                m.trains.append(it)
            elif it.kind == "model":
                m.models.append(it)
            else:
                m.blocks.append(it)
        return m

    def import_stmt(self, meta, c):
        return ast.Import(_tok_span(self.src, c[0]), _unquote(c[0]))

    def params(self, meta, c):
        return list(c)

    def param(self, meta, c):
        if str(c[0]) in KEYWORDS:
            raise UserError(f"'{c[0]}' is a keyword and cannot name a parameter",
                            _tok_span(self.src, c[0]))
        return ast.Param(self.sp(meta), str(c[0]), c[1] if len(c) > 1 else None)

    def _def(self, kind, meta, c):
        params = c[1] if len(c) == 3 else []
        return ast.BlockDef(_tok_span(self.src, c[0]), kind, str(c[0]), params, c[-1])

    def block_def(self, meta, c):
        return self._def("block", meta, c)

    def model_def(self, meta, c):
        return self._def("model", meta, c)

    def body(self, meta, c):
        return list(c)

    def input_stmt(self, meta, c):
        dtype, dims, tspan = c[1]
        return ast.Input(self.sp(meta), str(c[0]), dtype, dims, tspan)

    def tensor_type(self, meta, c):
        return (str(c[0]), list(c[1:]), self.sp(meta))

    def output_stmt(self, meta, c):
        return ast.Output(self.sp(meta), [(str(t), _tok_span(self.src, t)) for t in c])

    def assign(self, meta, c):
        return ast.Assign(_tok_span(self.src, c[0]), str(c[0]), c[1])

    def chain_stmt(self, meta, c):
        return ast.ExprStmt(self.sp(meta), c[0])

    def train_def(self, meta, c):
        return ast.TrainDef(self.sp(meta), c[0])

    def train_body(self, meta, c):
        return list(c)

    def setting(self, meta, c):
        return ast.Setting(self.sp(meta), str(c[0]), _tok_span(self.src, c[0]),
                           c[1] if len(c) > 1 else None)

    # -- expressions
    def chain(self, meta, c):
        return c[0] if len(c) == 1 else ast.Chain(self.sp(meta), list(c))

    def ifelse(self, meta, c):
        return ast.IfElse(self.sp(meta), c[0], c[1], c[2])

    def _fold(self, meta, c, op):
        acc = c[0]
        for nxt in c[1:]:
            acc = ast.BinOp(self.sp(meta), op, acc, nxt)
        return acc

    def or_(self, meta, c):
        return self._fold(meta, c, "or")

    def and_(self, meta, c):
        return self._fold(meta, c, "and")

    def not_(self, meta, c):
        return ast.UnOp(self.sp(meta), "not", c[0])

    def neg(self, meta, c):
        return ast.UnOp(self.sp(meta), "-", c[0])

    def compare(self, meta, c):
        if len(c) == 1:
            return c[0]
        return ast.BinOp(self.sp(meta), str(c[1]), c[0], c[2])

    def arith(self, meta, c):
        acc = c[0]
        for i in range(1, len(c), 2):
            acc = ast.BinOp(self.sp(meta), str(c[i]), acc, c[i + 1])
        return acc

    def attr(self, meta, c):
        return ast.Attr(self.sp(meta), c[0], str(c[1]))

    def call(self, meta, c):
        name, args, body = c[0], [], None
        for x in c[1:]:                  # an argument list (of Arg), then perhaps a body
            if x and isinstance(x[0], ast.Arg):
                args = x
            else:
                body = x
        return ast.Call(self.sp(meta), str(name), _tok_span(self.src, name), args, body)

    def args(self, meta, c):
        return [x if isinstance(x, ast.Arg) else ast.Arg(x.span, None, x) for x in c]

    def kwarg(self, meta, c):
        return ast.Arg(_tok_span(self.src, c[0]), str(c[0]), c[1])

    def residual(self, meta, c):
        node = ast.Residual(self.sp(meta), c[0])
        if len(c) > 1:
            cond, sbody, sspan = c[1]
            node.shortcut, node.shortcut_cond, node.shortcut_span = sbody, cond, sspan
        return node

    def shortcut(self, meta, c):
        if len(c) == 2:
            return (c[0], c[1], self.sp(meta))
        return (None, c[0], self.sp(meta))

    def concat(self, meta, c):
        return ast.Concat(self.sp(meta), [b[0] for b in c], [b[1] for b in c])

    def concat_call(self, meta, c):
        args = c[0] if c else []
        return ast.Call(self.sp(meta), "concat", self.sp(meta), args, None)

    def branch(self, meta, c):
        return (c[0], self.sp(meta))

    def group(self, meta, c):
        return ast.Group(self.sp(meta), c[0])

    def list_(self, meta, c):
        return ast.ListExpr(self.sp(meta), list(c))

    def name(self, meta, c):
        return ast.Name(_tok_span(self.src, c[0]), str(c[0]))

    def in_(self, meta, c):
        return ast.In(self.sp(meta))

    def int_(self, meta, c):
        digits = str(c[0]).replace("_", "").lstrip("0") or "0"
        if len(digits) > MAX_INT_DIGITS:
            raise UserError(f"this integer has {len(digits):,} digits; numbers in a spec have at "
                            f"most {MAX_INT_DIGITS:,}", _tok_span(self.src, c[0]))
        return ast.Literal(_tok_span(self.src, c[0]), int(digits))

    def float_(self, meta, c):
        value = float(str(c[0]).replace("_", ""))
        if math.isinf(value):
            raise UserError(f"the number {_short(str(c[0]))} is too large: a float is at most "
                            "about 1.8e308", _tok_span(self.src, c[0]))
        return ast.Literal(_tok_span(self.src, c[0]), value)

    def string(self, meta, c):
        return ast.Literal(_tok_span(self.src, c[0]), _unquote(c[0]))

    def true(self, meta, c):
        return ast.Literal(self.sp(meta), True)

    def false(self, meta, c):
        return ast.Literal(self.sp(meta), False)


def _short(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:20]}...{text[-10:]}"


def _unquote(tok) -> str:
    s = str(tok)[1:-1]
    return s.encode("utf-8").decode("unicode_escape") if "\\" in s else s
