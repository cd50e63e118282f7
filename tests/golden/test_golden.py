"""Golden-output tests: each input beside its expected text.

  tests/golden/specs/NAME.dls     -> NAME.summary.txt, NAME.ir.txt, NAME.ir-train.txt (if it trains)
  examples/NAME.dls               -> tests/golden/examples/NAME.summary.txt, NAME.ir.txt
  tests/golden/errors/NAME.dls    -> NAME.err.txt (what `dlc check` prints; exit code 2)

`pytest --update-golden` rewrites them; a missing golden file fails. Read the diff.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from dlc.cli import main

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def check_golden(path: Path, actual: str, update: bool) -> None:
    if update:
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path.relative_to(ROOT)}; run pytest --update-golden "
                    "and review it")
    expected = path.read_text()
    if expected != actual:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            "expected", "actual"))
        pytest.fail(f"{path.relative_to(ROOT)} differs (pytest --update-golden rewrites it):\n{diff}")


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _emit(spec: Path, what: str, capsys) -> str:
    code = main(["compile", _rel(spec), "--emit", what])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


SPECS = sorted((HERE / "specs").glob("*.dls"))
EXAMPLES = sorted((ROOT / "examples").glob("*.dls"))
ERRORS = sorted((HERE / "errors").glob("*.dls"))


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)          # paths in outputs are relative to the project root


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_spec_golden(spec, capsys, update_golden):
    for what in ("summary", "ir"):
        check_golden(spec.with_suffix(f".{what}.txt"), _emit(spec, what, capsys), update_golden)
    if "train {" in spec.read_text():
        check_golden(spec.with_suffix(".ir-train.txt"), _emit(spec, "ir-train", capsys),
                     update_golden)


@pytest.mark.parametrize("spec", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_golden(spec, capsys, update_golden):
    for what in ("summary", "ir"):
        check_golden(HERE / "examples" / f"{spec.stem}.{what}.txt", _emit(spec, what, capsys),
                     update_golden)


@pytest.mark.parametrize("spec", ERRORS, ids=[p.stem for p in ERRORS])
def test_error_golden(spec, capsys, update_golden):
    code = main(["check", _rel(spec)])
    out = capsys.readouterr()
    assert code == 2, f"expected exit code 2, got {code}\n{out.err}"
    assert "Traceback" not in out.err
    assert out.err.startswith("tests/golden/errors/") or out.err.startswith("dlc: error"), out.err
    check_golden(spec.with_suffix(".err.txt"), out.err, update_golden)


PLANNED = ["digits_mlp", "digits_cnn", "resnet18_cifar"]        # examples whose step is planned


@pytest.mark.parametrize("name", PLANNED)
def test_plan_golden(name, capsys, update_golden):
    """The kernel plan of the training step (`--emit plan`) and its Triton source."""
    spec = ROOT / "examples" / f"{name}.dls"
    check_golden(HERE / "examples" / f"{name}.plan.txt", _emit(spec, "plan", capsys),
                 update_golden)
    if name == "digits_mlp":
        check_golden(HERE / "examples" / f"{name}.triton.txt", _emit(spec, "triton", capsys),
                     update_golden)


@pytest.mark.parametrize("spec", [p for p in SPECS if "train {" in p.read_text()],
                         ids=lambda p: p.stem)
def test_spec_plan_golden(spec, capsys, update_golden):
    check_golden(spec.with_suffix(".plan.txt"), _emit(spec, "plan", capsys), update_golden)
