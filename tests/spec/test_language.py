"""Language semantics: what a spec elaborates to (names, shapes, graph structure)."""
from __future__ import annotations

import pytest

import dlc
from dlc.spec.diagnostics import UserError


def compile_text(tmp_path, text, name="m.dls", sets=()):
    p = tmp_path / name
    p.write_text(text)
    return dlc.compile_spec(p, sets=list(sets))


def ops(spec):
    return [n.op for n in spec.graph.nodes]


def shapes(spec):
    return [str(n.outputs[0].type) for n in spec.graph.nodes]


def test_chains_and_lines_are_the_same(tmp_path):
    a = compile_text(tmp_path, "model M {\n input x: f32[4]\n linear(8) -> relu -> linear(2)\n}\n")
    b = compile_text(tmp_path, "model M {\n input x: f32[4]\n linear(8)\n relu\n linear(2)\n}\n")
    c = compile_text(tmp_path, "model M {\n input x: f32[4]\n linear(8) ->\n   relu ->\n"
                               "   linear(\n     2)\n}\n")
    assert ops(a) == ops(b) == ops(c) == ["linear", "relu", "linear"]
    assert shapes(a) == ["f32[N,8]", "f32[N,8]", "f32[N,2]"]


def test_repetition_and_repeat_name_each_instance(tmp_path):
    s = compile_text(tmp_path, "block L(n) { linear(n) -> relu }\n"
                               "model M {\n input x: f32[4]\n L(8) * 3\n repeat(2) { linear(5) }\n}\n")
    names = [p.name for p in s.graph.params()]
    assert names == ["l1.linear1.weight", "l1.linear1.bias", "l2.linear1.weight",
                     "l2.linear1.bias", "l3.linear1.weight", "l3.linear1.bias",
                     "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]


def test_zero_repetitions_are_the_identity(tmp_path):
    s = compile_text(tmp_path, "block S(c, n) { linear(c) -> linear(c) * (n - 1) }\n"
                               "model M {\n input x: f32[4]\n S(3, 1)\n repeat(0) { relu }\n"
                               " linear(2)\n}\n")
    assert ops(s) == ["linear", "linear"]


def test_expressions_parameters_and_in(tmp_path):
    s = compile_text(tmp_path, """
block Widen(factor=2, extra=0) {
    linear(in.c * factor + extra) -> relu
}
model M(width=6) {
    input x: f32[width // 2]
    Widen                               # 3 -> 6
    Widen(factor=3, extra=-1 if width > 5 else 100)   # 6 -> 17
    linear(2 ** 1 if false else width % 4)             # 6 % 4 = 2
}
""".replace("2 ** 1", "1"))
    assert shapes(s)[::2] == ["f32[N,6]", "f32[N,17]", "f32[N,2]"]


def test_model_parameters_can_be_set(tmp_path):
    text = "model M(width=6) {\n input x: f32[4]\n linear(width)\n}\n"
    assert shapes(compile_text(tmp_path, text, sets=["model.width=9"])) == ["f32[N,9]"]


def test_named_values_outputs_and_tensor_arguments(tmp_path):
    s = compile_text(tmp_path, """
model M {
    input x: f32[4]
    a = linear(8)
    b = a -> relu -> linear(8)
    c = add(a, b, a)
    d = concat(a, c) -> linear(3)
    output d, c
}
""")
    assert s.graph.output_names == ["d", "c"]
    assert [str(v.type) for v in s.graph.outputs] == ["f32[N,3]", "f32[N,8]"]
    assert "concat" in ops(s) and ops(s).count("add") == 1
    add = next(n for n in s.graph.nodes if n.op == "add")
    assert len(add.inputs) == 3


def test_conditional_shortcut(tmp_path):
    text = """
block B(c, stride=1) {
    residual { conv(c, 3, stride=stride) } shortcut if stride != 1 or in.c != c { conv(c, 1, stride=stride) }
}
model M {
    input x: f32[4, 8, 8]
    B(4)
    B(8, stride=2)
}
"""
    s = compile_text(tmp_path, text)
    names = [p.name for p in s.graph.params()]
    assert "b1.shortcut1.conv1.weight" not in names            # identity: shapes agree
    assert "b2.shortcut1.conv1.weight" in names                 # projection
    assert shapes(s)[-1] == "f32[N,8,4,4]"


def test_dense_block_sees_all_earlier_outputs(tmp_path):
    s = compile_text(tmp_path, "model M {\n input x: f32[6, 4, 4]\n"
                               " dense(3) { conv(2, 3) }\n}\n")
    convs = [n for n in s.graph.nodes if n.op == "conv2d"]
    assert [n.inputs[0].type.shape[1] for n in convs] == [6, 8, 10]
    assert str(s.graph.outputs[0].type) == "f32[N,12,4,4]"
    assert [p.name for p in s.graph.params()][::2] == [
        "dense1.layer1.conv1.weight", "dense1.layer2.conv1.weight", "dense1.layer3.conv1.weight"]


def test_imports_are_relative_to_the_importing_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.dls").write_text('import "b.dls"\nblock A { B -> relu }\n')
    (tmp_path / "lib" / "b.dls").write_text("block B { linear(3) }\n")
    s = compile_text(tmp_path, 'import "lib/a.dls"\nmodel M {\n input x: f32[4]\n A\n}\n')
    assert ops(s) == ["linear", "relu"]


def test_explicit_names_and_collisions(tmp_path):
    s = compile_text(tmp_path, 'model M {\n input x: f32[4]\n linear(3, name="head")\n}\n')
    assert [p.name for p in s.graph.params()] == ["head.weight", "head.bias"]
    with pytest.raises(UserError, match="already used"):
        compile_text(tmp_path, 'model M {\n input x: f32[4]\n linear(3, name="h")\n'
                               ' linear(3, name="h")\n}\n')


def test_symbolic_sizes_stay_symbolic(tmp_path):
    s = compile_text(tmp_path, "model M {\n input x: f32[3, H, W]\n conv(4, 3, stride=2)\n}\n")
    assert str(s.graph.outputs[0].type) == "f32[N,4,(H+1)//2,(W+1)//2]"


def test_train_section_values(tmp_path):
    s = compile_text(tmp_path, """
model M {
    input x: f32[4]
    linear(2)
}
train {
    data      digits(val=0.2, test=0.1)
    loss      cross_entropy(label_smoothing=0.05)
    optimizer adamw(lr=3e-4, weight_decay=0.05)
    schedule  step(every=5, gamma=0.5)
    batch     full
    epochs    7
    seed      42
    early_stopping(monitor=val_acc, patience=3)
}
""")
    c = s.config
    assert c.data.args == {"val": 0.2, "test": 0.1}
    assert c.loss.args == {"label_smoothing": 0.05}
    assert c.optimizer.name == "adamw" and c.optimizer.args["weight_decay"] == 0.05
    assert c.schedule.args == {"every": 5, "gamma": 0.5, "warmup": 0}
    assert (c.batch, c.epochs, c.seed) == ("full", 7, 42)
    assert c.early_stopping.args == {"monitor": "val_acc", "patience": 3, "min_delta": 0.0}


@pytest.mark.parametrize("text, message", [
    ("model M {\n input x: f32[4]\n linear(3) -> 5\n}\n", "'->' must be followed by a layer"),
    ("model M {\n input x: f32[4]\n linear(3) * -1\n}\n", "0 or more"),
    ("model M {\n input x: f32[4, 2, 2]\n dense(0) { relu }\n}\n", "at least 1"),
    ("model M {\n input x: f32[4]\n add(x)\n}\n", "combines several tensors"),
    ("model M {\n input x: f32[4]\n linear(in.h)\n}\n", "has no field 'h'"),
    ("model M {\n input x: f32[4]\n relu(3)\n}\n", "relu takes 0 positional arguments"),
    ("model M {\n input x: f32[4]\n linear(3) { relu }\n}\n", "does not take a body"),
    ("model M {\n input x: f32[4]\n output y\n}\n", "unknown value 'y'"),
    ("block B { input x: f32[3] }\nmodel M {\n input x: f32[4]\n B\n}\n", "only appear in a model"),
    ("model M {\n input x: f32[4]\n linear(3 / 0)\n}\n", "division by zero"),
    ("model M {\n input x: i32[4]\n linear(3)\n}\n", "unsupported input type"),
])
def test_semantic_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        compile_text(tmp_path, text)
    assert e.value.span is not None
