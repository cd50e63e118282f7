"""Bad input of every kind exits 2 with a located diagnostic and no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dlc.cli import main

MLP = "model M {\n    input x: f32[64]\n    linear(10)\n}\n"


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def test_binary_garbage_is_located(tmp_path, capsys):
    p = tmp_path / "garbage.dls"
    p.write_bytes(b"model M {\n" + bytes(range(256)) * 3)
    code, _, err = run_cli(["check", str(p)], capsys)
    assert code == 2
    assert err.startswith(f"{p}:2:1: error:"), err
    assert "not a text .dls spec" in err


def test_invalid_utf8_is_located(tmp_path, capsys):
    p = tmp_path / "latin1.dls"
    p.write_bytes("model M {\n  # caf\xe9\n}\n".encode("latin-1"))
    code, _, err = run_cli(["check", str(p)], capsys)
    assert code == 2
    assert err.startswith(f"{p}:2:8: error:"), err


@pytest.mark.parametrize("body", [
    "linear(" + "(" * 500 + "1" + ")" * 500 + ")",          # parentheses
    "linear(" + "- " * 3000 + "1)",                          # unary minus, no brackets
    "linear(1" + " + 1" * 5000 + ")",                        # a long flat expression is fine
    "relu" + " -> relu" * 3000,                              # a long chain is fine
    "linear(" + "not " * 3000 + "true)",
])
def test_deep_or_long_input_never_crashes(tmp_path, capsys, body):
    p = tmp_path / "deep.dls"
    p.write_text("model M {\n    input x: f32[4]\n    " + body + "\n}\n")
    code, _, err = run_cli(["check", str(p)], capsys)
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith(f"{p}:"), err


def test_deeply_nested_blocks(tmp_path, capsys):
    p = tmp_path / "nest.dls"
    p.write_text("model M {\n input x: f32[4]\n" + "repeat(1) {\n" * 200 + "relu\n" + "}\n" * 200
                 + "}\n")
    code, _, err = run_cli(["check", str(p)], capsys)
    assert code == 2
    assert "nesting is too deep" in err and err.startswith(f"{p}:")


def test_missing_file(capsys):
    code, _, err = run_cli(["check", "does/not/exist.dls"], capsys)
    assert code == 2 and "no such file" in err


def test_directory_instead_of_file(tmp_path, capsys):
    d = tmp_path / "dir.dls"
    d.mkdir()
    code, _, err = run_cli(["check", str(d)], capsys)
    assert code == 2 and "directory" in err


def test_import_cycle(tmp_path, capsys):
    (tmp_path / "a.dls").write_text('import "b.dls"\n')
    (tmp_path / "b.dls").write_text('import "a.dls"\n')
    (tmp_path / "m.dls").write_text('import "a.dls"\n' + MLP)
    code, _, err = run_cli(["check", str(tmp_path / "m.dls")], capsys)
    assert code == 2 and "import cycle" in err and "b.dls:1:8" in err


def test_imported_file_error_points_into_that_file(tmp_path, capsys):
    (tmp_path / "blocks.dls").write_text("block B(c) {\n    linear(c) relu\n}\n")
    (tmp_path / "m.dls").write_text('import "blocks.dls"\n' + MLP)
    code, _, err = run_cli(["check", str(tmp_path / "m.dls")], capsys)
    assert code == 2 and err.startswith(f"{tmp_path / 'blocks.dls'}:2:15: error:"), err


def test_block_defined_twice(tmp_path, capsys):
    p = tmp_path / "twice.dls"
    p.write_text("block B { relu }\nblock B { tanh }\n" + MLP)
    code, _, err = run_cli(["check", str(p)], capsys)
    assert code == 2 and "defined twice" in err and ":1:7: note: first defined here" in err


@pytest.mark.parametrize("setting, message, col", [
    ("train.epochs=0", "epochs must be at least 1", 14),
    ("train.epochs=ten", "epochs must be a whole number", 14),
    ("train.optimizer=adam(lr=)", "", 0),
    ("train.optimiser=sgd(lr=0.1)", "unknown train setting 'optimiser'", 1),
    ("train.optimizer=sgd(lr=-1)", "lr must be positive", 17),
    ("model.classes=3", "has no parameter 'classes'", 1),
    ("epochs=3", "--set keys are train.NAME or model.NAME", 1),
    ("train.epochs", "--set expects KEY=VALUE", 1),
])
def test_bad_set_values(tmp_path, capsys, setting, message, col):
    p = tmp_path / "m.dls"
    p.write_text(MLP)
    code, _, err = run_cli(["check", str(p), "--set", setting], capsys)
    assert code == 2, err
    assert err.startswith("--set[1]:1:"), err
    assert message in err
    if col:
        assert err.startswith(f"--set[1]:1:{col}:"), err


def test_bad_command_line_arguments_exit_2(capsys):
    assert main_exit(["train"]) == 2
    assert main_exit(["compile", "x.dls", "--emit", "nonsense"]) == 2
    assert main_exit(["frobnicate"]) == 2


def main_exit(args) -> int:
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def test_version():
    out = subprocess.run([sys.executable, "-m", "dlc", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("dlc ")


def test_error_format_has_caret_under_the_span(tmp_path, capsys):
    p = tmp_path / "m.dls"
    p.write_text("model M {\n    input x: f32[64]\n    linear(10, bais=true)\n}\n")
    code, _, err = run_cli(["check", str(p)], capsys)
    lines = err.splitlines()
    assert lines[0] == f"{p}:3:16: error: linear has no argument 'bais'"
    assert lines[1] == "   3 |     linear(10, bais=true)"
    assert lines[2] == "     |                ^~~~"
    assert lines[3] == "  = hint: did you mean 'bias'?"
