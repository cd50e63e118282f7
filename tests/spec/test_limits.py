"""No crash, no hang: the reproducers of issue 12 end in a located error (or a result), each
within a second of CPU time (CPU time, not wall time: the suite shares its cores).

Absurd sizes and repetitions are refused statically (compiler/limits.py) before the work
they would cause; huge literals are refused where they are read; errors of the train graph
and the views point at the spec line that causes them."""
from __future__ import annotations

import time

import pytest

from dlc.api import compile_spec
from dlc.cli import main
from dlc.spec.diagnostics import UserError

BIG = "1" + "0" * 300


def _spec(tmp_path, text: str, name: str = "case.dls"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _model(body: str, input_type: str = "f32[8]", extra: str = "") -> str:
    lines = "".join(f"    {line}\n" for line in body.strip().splitlines())
    return f"{extra}model M {{\n    input x: {input_type}\n{lines}}}\n"


def located_error(path, *, views=(), sets=()) -> UserError:
    """The UserError that compiling `path` (and rendering `views`) raises, quickly: a guard
    against the minutes (or the memory) these specs used to cost, with room for a loaded
    machine (they take well under a second alone; the fuzz run reports slow cases)."""
    t0 = time.process_time()
    with pytest.raises(UserError) as info:
        spec = compile_spec(path, list(sets))
        for v in views:
            spec.emit(v, 4)
    spent = time.process_time() - t0
    assert spent < 3.0, f"took {spent:.2f} s of CPU time"
    err = info.value
    assert err.span is not None, err.render()
    err.render()
    return err


EXPANSION = [                  # the static bound (spec/expansion.py) refuses these at once
    ("(relu * 1000000000) * 1000000000", "expands to more than 20,000 layers", 3),
    ("(relu * 10000) * 10000", "expands to more than 20,000 layers", 3),
    ("repeat(1000000000) { relu }", "expands to more than 20,000 layers", 3),
    ("dense(1000000000) { linear(4) }", "expands to more than 20,000 layers", 3),
    # counts computed at elaboration: the limits on counts and steps stop these
    ("relu * (n * n)", "repetition count", 3),
    ("repeat(n) { relu }", "repeat count", 3),
    ("dense(n) { linear(4) }", "dense count", 3),
    ("repeat(k) { repeat(k) { } }", "expands too far", 3),
    ("repeat(k) { relu * k }", "more than 20,000 layers", 3),
]


def _counted(body: str) -> str:
    return _model(body).replace("model M {", "model M(n=1000000000, k=10000) {")


@pytest.mark.parametrize("body,message,line", EXPANSION, ids=[b for b, _, _ in EXPANSION])
def test_unbounded_expansion_is_refused_fast(tmp_path, body, message, line):
    err = located_error(_spec(tmp_path, _counted(body)))
    assert message in err.message and err.span.line == line


def test_nested_blocks_calling_twice_are_bounded(tmp_path):
    blocks = "block B0 {\n    relu\n}\n" + "".join(
        f"block B{i} {{\n    B{i - 1} -> B{i - 1}\n}}\n" for i in range(1, 41))
    err = located_error(_spec(tmp_path, _model("B40", extra=blocks)))
    assert "20,000 layers" in err.message


@pytest.mark.parametrize("input_type,body,message", [
    (f"f32[{BIG}]", "linear(10)", "dimension"),
    (f"f32[3, {BIG}, 8]", "conv(4, 3)", "dimension"),
    ("f32[3, 100000, 100000]", "conv(64, 3)", "elements per example"),
    ("f32[3, 8, 8]", "upsample(9223372036854775808)", "dimension"),
    ("f32[3, 8, 8]", "upsample(65536) -> upsample(65536)", "elements per example"),
    ("f32[8]", f"linear({BIG})", "dimension"),
    ("f32[100000]", "linear(100000) -> linear(100000) -> linear(100000)", "parameter"),
    ("f32[8]", f"dropout({BIG + '0' * 100})", "too large"),
    ("f32[3, 8, 8]", "lrn(4294967296)", "lrn size"),
])
def test_huge_sizes_are_located_errors(tmp_path, input_type, body, message):
    err = located_error(_spec(tmp_path, _model(body, input_type)))
    assert message in err.message


def test_init_bound_of_a_wide_layer_is_exact(tmp_path):
    from dlc.compiler.limits import inv_sqrt
    assert inv_sqrt(10**300) == 1e-150 and inv_sqrt(10**4000) == 0.0
    spec = compile_spec(_spec(tmp_path, _model("linear(3)", "f32[1000000]")))
    assert spec.graph.state["linear1.weight"].state.init == "uniform(0.001)"


def test_long_integer_literal_parser_and_set(tmp_path):
    digits = "7" * 5000
    err = located_error(_spec(tmp_path, _model(f"linear({digits})")))
    assert "5,000 digits" in err.message and (err.span.line, err.span.col) == (3, 12)
    path = _spec(tmp_path, "model M(c=3) {\n    input x: f32[8]\n    linear(c)\n}\n", "m.dls")
    err = located_error(path, sets=[f"model.c={digits}"])
    assert err.span.source.path == "--set[1]"


def test_product_of_long_integers_is_refused(tmp_path):
    a = "9" * 900
    err = located_error(_spec(tmp_path, _model(f"linear({a} * {a})")))
    assert "digits" in err.message


def test_float_literal_beyond_range(tmp_path):
    err = located_error(_spec(tmp_path, _model("dropout(1e400)")))
    assert "too large" in err.message and err.span.col == 13
    err = located_error(_spec(tmp_path, _model("dropout(0.5)")), sets=["train.epochs=1e309"])
    assert err.span.source.path == "--set[1]"


def test_int_times_float_overflow(tmp_path):
    err = located_error(_spec(tmp_path, _model(f"dropout({'9' * 400} * 0.5)")))
    assert "too large" in err.message


def test_huge_batch_in_the_summary_is_exact(tmp_path):
    spec = compile_spec(_spec(tmp_path, _model("linear(3)")))
    text = spec.emit("summary", 10**400)
    assert "MiB for a batch of" in text


def test_loss_on_a_non_class_output_points_at_the_loss(tmp_path):
    text = _model("conv(16, 3)", "f32[3, 8, 8]") + "train {\n    loss cross_entropy\n}\n"
    err = located_error(_spec(tmp_path, text), views=["ir-train"])
    assert "cross_entropy expects logits" in err.message and err.span.line == 6
    # with no loss written, a [N, C, H, W] output now defaults to pixel_cross_entropy
    # (dense prediction, issue 9), so the same model builds a train graph
    spec = compile_spec(_spec(tmp_path, _model("conv(16, 3)", "f32[3, 8, 8]")))
    assert "pixel_cross_entropy" in spec.emit("ir-train")


def test_label_smoothing_is_checked_where_it_is_read(tmp_path):
    text = _model("linear(3)") + "train {\n    loss cross_entropy(label_smoothing=2)\n}\n"
    err = located_error(_spec(tmp_path, text))
    assert "label_smoothing" in err.message and err.span.line == 6


@pytest.mark.parametrize("input_type,body", [
    ("f32[3, H, W]", "concat(x, x, axis=2)"),
    ("f32[C, 8, 8]", "concat(x, x)"),
    ("f32[C, H, W]", "concat {\n    branch { relu }\n    branch { relu }\n}"),
])
def test_concat_on_symbolic_sizes_is_refused_cleanly(tmp_path, input_type, body):
    err = located_error(_spec(tmp_path, _model(body, input_type)))
    assert "static sizes" in err.message or "symbolic" in err.message


def test_symbolic_sizes_through_the_other_shape_rules(tmp_path):
    body = ("maxpool(2, ceil=true) -> avgpool(3, stride=2, padding=1)\n"
            "y = conv(4, 3)\nadd(y, y)\nglobal_avgpool -> flatten -> linear(3)")
    spec = compile_spec(_spec(tmp_path, _model(body, "f32[3, H, W]")))
    assert spec.graph.outputs[0].type.shape == ("N", 3)
    for body, message in [("flatten", "static sizes"), ("linear(3)", "[N, features]")]:
        err = located_error(_spec(tmp_path, _model(body, "f32[3, H, W]")))
        assert message in err.message


def test_plan_of_a_symbolic_input_points_at_the_input(tmp_path):
    path = _spec(tmp_path, _model("global_avgpool -> flatten -> linear(3)", "f32[3, H, W]"))
    err = located_error(path, views=["plan"])
    assert err.span.line == 2


def test_ten_thousand_relu_lines_check_in_about_a_second(tmp_path, capsys):
    path = _spec(tmp_path, _model("relu\n" * 10_000))
    t0 = time.process_time()
    assert main(["check", str(path)]) == 0
    assert time.process_time() - t0 < 6.0        # Lark's parse is most of it
    assert "ok" in capsys.readouterr().out


def test_check_parses_the_file_once(tmp_path, monkeypatch):
    from dlc.spec import loader
    calls = []
    real = loader.parse
    monkeypatch.setattr(loader, "parse", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    assert main(["check", str(_spec(tmp_path, _model("relu")))]) == 0
    assert len(calls) == 1, calls


@pytest.mark.parametrize("setting,message", [
    ("loss cross_entropy(label_smoothing=2)", "label_smoothing must be in [0, 1)"),
    ("data digits(val=2)", "val must be a fraction"),
    ("data digits(val=0.5, test=0.6)", "leave some training data"),
    ("schedule step(every=0)", "every must be at least 1"),
    ("schedule cosine(warmup=-5)", "warmup must not be negative"),
    ("schedule exponential(gamma=-1)", "gamma must be a positive number"),
    ("early_stopping(min_delta=-1)", "min_delta"),
    ("penalty l2(1e308 * 10)", "finite"),
    ("epochs 1e400", "too large"),
])
def test_train_values_are_checked_where_they_are_read(tmp_path, setting, message):
    text = _model("linear(3)") + f"train {{\n    {setting}\n}}\n"
    err = located_error(_spec(tmp_path, text))
    assert message in err.message and err.span.line == 6


def test_state_that_cannot_fit_is_refused_before_allocating(tmp_path):
    from dlc.runtime.state import init_state, memory_bytes
    have = memory_bytes("cpu")
    if have is None:
        pytest.skip("the host's memory size is unknown here")
    side = 60_000                                     # 14.4 GB per weight matrix
    k = have // (side * side * 4) + 1
    if k * side * side > 2**36:
        pytest.skip("this host has more memory than a spec may ask for")
    spec = compile_spec(_spec(tmp_path, _model(f"linear({side}) * {k}", f"f32[{side}]")))
    t0 = time.process_time()
    with pytest.raises(UserError, match="GiB for its parameters"):
        init_state(spec.graph, 0)
    assert time.process_time() - t0 < 1.0
