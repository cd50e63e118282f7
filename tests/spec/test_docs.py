"""The documentation stays true: every example in docs/language.md and docs/architecture.md
runs, every transcript matches what dlc prints today, and the reference tables name every
layer, argument, default and train setting the code has.

Fenced blocks are read by their info string; its first word is the block's kind:

  ```dls                a complete spec (a model with an input): `dlc check` exits 0
  ```dls-fragment [T]   statements: wrapped as `model Fragment {` / `input x: T` / ... / `}`,
                        T defaults to f32[3, 32, 32]; the result must check
  ```dls-error          a broken spec: `dlc check` exits 2 with a diagnostic, no traceback
  ```dls-lib NAME       a file other specs import: written as NAME beside them (must parse)
  ```text               when its first line is `$ dlc ARGS`, a transcript: the lines after it
                        must equal what the command prints (stdout, then stderr); a line `...`
                        stands for any number of lines.  The exit code must be 2 when the
                        output shows an `error:`, else 0.  A bare file name in ARGS
                        (`net.dls`) is the nearest spec block above (dls, dls-error,
                        dls-newop), written under that name in a temporary directory; a path
                        with a `/` (`examples/digits_mlp.dls`) is a file of the repository.
  ```python newop FILE  architecture.md's worked example, an op that is NOT in the registry,
  ```python newop-test  run in a fresh interpreter: each `newop FILE` block is executed inside
  ```dls-newop          the module FILE (compiler/ops/core.py -> dlc.compiler.ops.core), as if
                        pasted there; every test_* function of the newop-test blocks runs
                        (a `tmp_path` parameter gets a fresh directory); then the dls-newop
                        specs' transcripts are checked.

Every other kind (sh, python, text without `$ dlc`) is prose and is not run.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = {"language.md": ROOT / "docs" / "language.md",
        "architecture.md": ROOT / "docs" / "architecture.md"}
SPEC_KINDS = ("dls", "dls-error", "dls-newop")
FRAGMENT_INPUT = "f32[3, 32, 32]"


@dataclass
class Fence:
    doc: str
    line: int                      # 1-based line of the opening ```
    kind: str                      # first word of the info string
    arg: str                       # the rest of the info string
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}:{self.kind}"


def read_fences(name: str) -> list[Fence]:
    if not DOCS[name].exists():
        return []                                     # test_docs_exist says so
    lines = DOCS[name].read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(.*)$", lines[i])
        if not m:
            i += 1
            continue
        info = m.group(1).strip()
        if not info:
            raise AssertionError(f"{name}:{i + 1}: a fence without an info string "
                                 "(write ```text for plain text)")
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{name}:{i + 1}: unclosed ``` fence")
        kind, _, arg = info.partition(" ")
        out.append(Fence(name, i + 1, kind, arg.strip(), "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return out


def is_transcript(f: Fence) -> bool:
    return f.kind == "text" and f.text.startswith("$ dlc ")


def transcript_spec_path(t: Fence) -> str:
    args = shlex.split(t.text.splitlines()[0])[2:]
    paths = [a for a in args if a.endswith(".dls")]
    assert len(paths) == 1, f"{t.id}: a transcript runs dlc on one .dls file"
    return paths[0]


def transcripts(fences: list[Fence]) -> list[tuple[Fence, Fence | None]]:
    """Each transcript with the spec block it runs on (None: a file of the repository)."""
    out, spec = [], None
    for f in fences:
        if f.kind in SPEC_KINDS:
            spec = f
        elif is_transcript(f):
            bare = "/" not in transcript_spec_path(f)
            assert not bare or spec is not None, f"{f.id}: no spec block above this transcript"
            out.append((f, spec if bare else None))
    return out


def spec_file_name(f: Fence, fences: list[Fence]) -> str:
    """The name a spec block is written under: the one its first transcript uses."""
    for t, spec in transcripts(fences):
        if spec is f:
            return transcript_spec_path(t)
    return f"doc_{f.line}.dls"


def write_libs(fences: list[Fence], where: Path) -> None:
    for f in fences:
        if f.kind == "dls-lib":
            assert f.arg, f"{f.id}: dls-lib needs a file name: ```dls-lib NAME"
            (where / f.arg).parent.mkdir(parents=True, exist_ok=True)
            (where / f.arg).write_text(f.text)


def run_dlc(args: list[str]) -> tuple[int, str, bool]:
    """(exit code, stdout + stderr, whether a traceback or internal error showed)."""
    from dlc.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:                       # argparse errors
            code = e.code
    text = out.getvalue() + err.getvalue()
    return code, text, ("Traceback" in text or "internal error" in text)


def matches(expected: str, actual: str) -> bool:
    """Line-by-line equality, where a line `...` in `expected` matches any number of lines."""
    parts = []
    for line in expected.splitlines():
        parts.append(r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(line) + r"\n")
    return re.fullmatch("".join(parts), actual if actual.endswith("\n") else actual + "\n") \
        is not None


def check_transcript(t: Fence, spec: Fence | None, fences: list[Fence], tmp: Path) -> None:
    first, _, expected = t.text.partition("\n")
    args = shlex.split(first)[2:]
    assert args[0] in ("check", "compile"), f"{t.id}: only check and compile are replayed"
    if spec is not None:
        write_libs(fences, tmp)
        name = spec_file_name(spec, fences)
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(spec.text)
        cwd = tmp
    else:
        cwd = ROOT
    old = os.getcwd()
    os.chdir(cwd)
    try:
        code, actual, crashed = run_dlc(args)
    finally:
        os.chdir(old)
    assert not crashed, f"{t.id}: `{first[2:]}` crashed:\n{actual}"
    want_code = 2 if re.search(r"^\S.*: error: ", expected, re.M) else 0
    assert code == want_code, f"{t.id}: `{first[2:]}` exited {code}, not {want_code}:\n{actual}"
    assert matches(expected, actual), (
        f"{t.id}: the transcript of `{first[2:]}` is out of date; dlc now prints:\n"
        f"{actual}\n(update the ```text block at {t.doc} line {t.line})")


# == the tests (pytest) ==========================================================================

ALL = {name: read_fences(name) for name in DOCS}


def _cases(kinds) -> list[Fence]:
    return [f for fences in ALL.values() for f in fences if f.kind in kinds]


def _fences_of(f: Fence) -> list[Fence]:
    return ALL[f.doc]


def _ids(cases):
    return [c.id if isinstance(c, Fence) else c[0].id for c in cases]


def test_docs_exist():
    for name, path in DOCS.items():
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"


def test_docs_have_examples_of_every_kind():
    kinds = {f.kind for f in ALL["language.md"]}
    assert {"dls", "dls-fragment", "dls-error"} <= kinds, kinds
    assert any(is_transcript(f) for f in ALL["language.md"])
    arch = {f.kind for f in ALL["architecture.md"]}
    assert "dls-newop" in arch and any(f.kind == "python" and f.arg.startswith("newop ")
                                       for f in ALL["architecture.md"])


def pytest_generate_tests(metafunc):
    if "spec_block" in metafunc.fixturenames:
        cases = _cases(("dls",))
        metafunc.parametrize("spec_block", cases, ids=_ids(cases))
    if "fragment_block" in metafunc.fixturenames:
        cases = _cases(("dls-fragment",))
        metafunc.parametrize("fragment_block", cases, ids=_ids(cases))
    if "error_block" in metafunc.fixturenames:
        cases = _cases(("dls-error",))
        metafunc.parametrize("error_block", cases, ids=_ids(cases))
    if "lib_block" in metafunc.fixturenames:
        cases = _cases(("dls-lib",))
        metafunc.parametrize("lib_block", cases, ids=_ids(cases))
    if "transcript" in metafunc.fixturenames:
        cases = [(t, s) for fences in ALL.values() for t, s in transcripts(fences)
                 if s is None or s.kind != "dls-newop"]
        metafunc.parametrize("transcript", cases, ids=_ids(cases))


def test_spec_blocks_check(spec_block, tmp_path, monkeypatch):
    write_libs(_fences_of(spec_block), tmp_path)
    name = spec_file_name(spec_block, _fences_of(spec_block))
    (tmp_path / name).write_text(spec_block.text)
    monkeypatch.chdir(tmp_path)
    code, out, crashed = run_dlc(["check", name])
    assert code == 0 and not crashed, f"{spec_block.id}: dlc check failed:\n{out}"


def test_fragment_blocks_check(fragment_block, tmp_path, monkeypatch):
    input_type = fragment_block.arg or FRAGMENT_INPUT
    text = f"model Fragment {{\n    input x: {input_type}\n{fragment_block.text}}}\n"
    (tmp_path / "fragment.dls").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, out, crashed = run_dlc(["check", "fragment.dls"])
    assert code == 0 and not crashed, f"{fragment_block.id}: the fragment, wrapped as\n{text}\n" \
                                      f"does not check:\n{out}"


def test_error_blocks_fail_cleanly(error_block, tmp_path, monkeypatch):
    write_libs(_fences_of(error_block), tmp_path)
    name = spec_file_name(error_block, _fences_of(error_block))
    (tmp_path / name).write_text(error_block.text)
    monkeypatch.chdir(tmp_path)
    code, out, crashed = run_dlc(["check", name])
    assert not crashed, f"{error_block.id}: dlc crashed:\n{out}"
    assert code == 2, f"{error_block.id}: expected exit code 2, got {code}:\n{out}"
    assert re.match(r"^\S+:\d+:\d+: error: |^dlc: error: ", out), out


def test_error_blocks_show_their_output():
    """Right after every ```dls-error comes the transcript of what dlc prints for it."""
    for fences in ALL.values():
        for i, f in enumerate(fences):
            if f.kind == "dls-error":
                nxt = fences[i + 1] if i + 1 < len(fences) else None
                assert nxt is not None and is_transcript(nxt), \
                    f"{f.id}: follow it with a ```text transcript `$ dlc check NAME.dls`"


def test_lib_blocks_parse(lib_block):
    from dlc.spec.parser import parse
    parse(lib_block.text, lib_block.arg)


def test_transcripts_match(transcript, tmp_path):
    t, spec = transcript
    check_transcript(t, spec, _fences_of(t), tmp_path)


def test_worked_example_runs(tmp_path):
    """architecture.md's "How to add an op", executed in a fresh interpreter."""
    done = subprocess.run([sys.executable, __file__, "--worked-example", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "worked example ok" in done.stdout, done.stdout + done.stderr


# -- the reference tables cannot fall behind the code ------------------------------------------

def _row(doc: str, name: str) -> str:
    """The table row whose first cell is `name` (backticked)."""
    for line in doc.splitlines():
        if re.match(rf"^\|\s*`{re.escape(name)}`\s*\|", line):
            return line
    raise AssertionError(f"docs/language.md has no table row starting with | `{name}` |")


def _literal(text: str):
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):                 # scale=[0.08, 1.0]
        return [_literal(t) for t in text[1:-1].split(",")]
    if re.fullmatch(r"\d+/\d+", text):                               # ratio=[3/4, 4/3]
        num, den = text.split("/")
        return int(num) / int(den)
    for number in (int, float):
        try:
            return number(text.replace("_", ""))
        except ValueError:
            pass
    return text                                       # a bare name: monitor=val_loss


def _check_signature(row: str, what: str, args) -> None:
    from dlc.compiler.ops.registry import REQUIRED
    for a in args:
        if a.default is REQUIRED or a.default is None:
            assert re.search(rf"`{re.escape(a.name)}[`=]", row), \
                f"{what}: argument `{a.name}` is missing from its row:\n{row}"
            continue
        m = re.search(rf"`{re.escape(a.name)}=([^`]+)`", row)
        assert m, f"{what}: write argument {a.name} as `{a.name}=DEFAULT` in its row:\n{row}"
        shown = _literal(m.group(1))
        assert shown == a.default and type(shown) is type(a.default) or (
            isinstance(a.default, float) and not isinstance(shown, bool)
            and float(shown) == a.default), \
            f"{what}: the row says {a.name}={m.group(1)}, the code's default is {a.default!r}"
    names = {a.name for a in args}
    for m in re.finditer(r"`(\w+)(?:=[^`]*)?`", row.split("|")[2] if row.count("|") > 2 else ""):
        assert m.group(1) in names, f"{what}: the row names `{m.group(1)}`, which the code " \
                                    f"does not take (arguments: {sorted(names)})"


def test_every_layer_is_in_the_reference():
    from dlc.compiler.ops import layer, layer_names
    doc = DOCS["language.md"].read_text()
    for name in layer_names():
        _check_signature(_row(doc, name), f"layer {name}", layer(name).args)


def test_every_train_setting_and_choice_is_in_the_reference():
    from dlc.spec import train
    doc = DOCS["language.md"].read_text()
    doc = doc[doc.index("## The train section"):]      # a layer and an augment may share a name
    for key, (_, table, _) in train.SETTINGS.items():
        _row(doc, key)
        for choice, args in (table or {}).items():
            _check_signature(_row(doc, choice), f"{key} {choice}", args)
    _check_signature(_row(doc, "early_stopping"), "early_stopping", train.EARLY_STOPPING)


# == the worked example, in a fresh interpreter ==================================================

def _worked_example(tmp: Path) -> None:
    fences = read_fences("architecture.md")
    tests = []
    for f in fences:
        words = f.arg.split()
        if f.kind == "python" and words[:1] == ["newop"]:
            assert len(words) == 2 and words[1].endswith(".py"), \
                f"{f.id}: write ```python newop path/to/file.py"
            module = importlib.import_module("dlc." + words[1][:-3].replace("/", "."))
            exec(compile(f.text, f"architecture.md:{f.line}", "exec"), vars(module))
            print(f"{f.id}: executed in {module.__name__}")
        elif f.kind == "python" and words[:1] == ["newop-test"]:
            tests.append(f)
    assert tests, "architecture.md has no ```python newop-test block"
    for f in tests:
        ns = {"__name__": f"doc_test_{f.line}"}
        exec(compile(f.text, f"architecture.md:{f.line}", "exec"), ns)
        names = [n for n in ns if n.startswith("test_") and callable(ns[n])]
        assert names, f"{f.id}: no test_* function"
        for n in names:
            params = inspect.signature(ns[n]).parameters
            assert set(params) <= {"tmp_path"}, f"{f.id}: {n} may only take tmp_path"
            ns[n](**({"tmp_path": Path(tempfile.mkdtemp(dir=tmp))} if params else {}))
            print(f"{f.id}: {n} passed")
    checked = 0
    for t, spec in transcripts(fences):
        if spec is not None and spec.kind == "dls-newop":
            check_transcript(t, spec, fences, Path(tempfile.mkdtemp(dir=tmp)))
            checked += 1
            print(f"{t.id}: transcript matches")
    assert checked, "architecture.md has no transcript of a dls-newop spec"
    print("worked example ok")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worked-example":
        _worked_example(Path(sys.argv[2]))
    else:
        sys.exit("usage: test_docs.py --worked-example TMPDIR")
