"""Graphviz output: structure of `to_dot`, and `--emit dot` on the command line."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dlc
from dlc.cli import main
from dlc.compiler.dot import data_edges, node_label, to_dot
from dlc.compiler.ops import all_ops

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "digits_mlp.dls"

NODE = re.compile(r'^  ((?:in|out|n|state)\d+) \[(.*)\];$')
EDGE = re.compile(r'^  (\w+) -> (\w+) \[label=" \[([^\]]*)\]"\];$')


def parse_dot(text: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """(node id -> attribute text, [(src, dst, shape label)]) of to_dot's output."""
    nodes, edges = {}, []
    for line in text.splitlines():
        if m := EDGE.match(line):
            edges.append(m.groups())
        elif m := NODE.match(line):
            nodes[m.group(1)] = m.group(2)
    return nodes, edges


def test_mlp_structure():
    g = dlc.compile_spec(MLP).graph
    text = to_dot(g)
    assert text.startswith('digraph "DigitsMLP" {') and text.endswith("}\n")
    nodes, edges = parse_dot(text)
    assert [n for n in nodes if n.startswith("n")] == [f"n{k}" for k in range(1, len(g.nodes) + 1)]
    assert "shape=invhouse" in nodes["in0"] and "shape=house" in nodes["out0"]
    assert 'label="linear1\\nlinear 256x64 + 256\\nf32[N,256]"' in nodes["n1"]
    assert edges[0] == ("in0", "n1", "N,64")
    assert edges[-1] == (f"n{len(g.nodes)}", "out0", "N,10")
    assert len(edges) == len(data_edges(g)) == len(g.nodes) + 1    # a chain: one edge in each


def test_output_is_deterministic():
    a = to_dot(dlc.compile_spec(MLP).graph)
    b = to_dot(dlc.compile_spec(MLP).graph)
    assert a == b


def test_dag_with_several_outputs_and_shared_inputs(tmp_path):
    path = tmp_path / "dag.dls"
    path.write_text(textwrap.dedent("""
        model Dag {
            input x: f32[8]
            h = linear(16) -> relu
            a = h -> linear(16, name="proj")
            s = add(h, a, h)
            c = concat(s, x)
            output c, h
        }
    """))
    g = dlc.compile_spec(path).graph
    nodes, edges = parse_dot(to_dot(g))
    data_in = sum(1 for n in g.nodes for v in n.inputs if v.state is None)
    assert len(edges) == data_in + len(g.outputs)
    assert {n for n in nodes if n.startswith(("in", "out"))} == {"in0", "out0", "out1"}
    add_id = f"n{[n.op for n in g.nodes].index('add') + 1}"
    relu_id = f"n{[n.op for n in g.nodes].index('relu') + 1}"
    assert [e[0] for e in edges if e[1] == add_id].count(relu_id) == 2   # h used twice
    assert ("in0", f"n{len(g.nodes)}", "N,8") in edges                  # x feeds the concat
    assert 'label="proj\\nlinear 16x16 + 16\\nf32[N,16]"' in to_dot(g)


def test_labels_escape_quotes():
    from dlc.compiler.ir import Graph, TensorType
    from dlc.compiler.ops import Builder
    g = Graph('we"ird')
    x = g.add_input("x", TensorType(("N", 4)))
    g.outputs = [Builder(g, scope='a"b').emit1("relu", [x])]
    g.output_names = ["y"]
    text = to_dot(g)
    assert 'digraph "we\\"ird"' in text and 'label="a\\"b\\nrelu\\nf32[N,4]"' in text
    assert node_label(g.nodes[0]) == 'a"b\nrelu\nf32[N,4]'


@pytest.mark.skipif(not {"conv2d", "batch_norm"} <= set(all_ops()),
                    reason="conv2d / batch_norm not registered yet")
def test_conv_and_bn_parameters_are_summarised(tmp_path):
    path = tmp_path / "cnn.dls"
    path.write_text("model C {\n    input x: f32[3, 8, 8]\n"
                    "    conv(64, 3, bias=false) -> bn -> relu\n}\n")
    text = to_dot(dlc.compile_spec(path).graph)
    assert "conv2d 64x3x3x3\\nf32[N,64,8,8]" in text
    assert "batch_norm 64 + 64 (2 buffers)" in text


def test_cli_dot_to_stdout_and_file(tmp_path, capsys):
    assert main(["compile", str(MLP), "--emit", "dot"]) == 0
    out = capsys.readouterr().out
    assert out == to_dot(dlc.compile_spec(MLP).graph)
    assert main(["compile", str(MLP), "--emit", "dot", "-o", str(tmp_path / "net.dot")]) == 0
    assert (tmp_path / "net.dot").read_text() == out


def _path_without_dot(tmp_path: Path) -> str:
    """A PATH holding only the Python interpreter, so no `dot` can be found."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python")
    return str(bindir)


def test_cli_svg_without_graphviz_exits_2_with_install_hint(tmp_path):
    env = {**os.environ, "PATH": _path_without_dot(tmp_path)}
    out = tmp_path / "net.svg"
    done = subprocess.run([sys.executable, "-m", "dlc", "compile", str(MLP), "--emit", "dot",
                           "-o", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert "Graphviz" in done.stderr and "apt-get install graphviz" in done.stderr
    assert f"-o {tmp_path / 'net.dot'}" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_cli_svg_pipes_the_source_through_dot(tmp_path):
    """A stand-in `dot` on PATH records its arguments and input and answers with an SVG."""
    bindir = Path(_path_without_dot(tmp_path))
    fake = bindir / "dot"
    fake.write_text(f"#!{sys.executable}\n"
                    "import sys, pathlib\n"
                    f"pathlib.Path({str(tmp_path / 'seen.txt')!r}).write_text("
                    "' '.join(sys.argv[1:]) + '\\n' + sys.stdin.read())\n"
                    "sys.stdout.write('<svg>fake</svg>')\n")
    fake.chmod(0o755)
    out = tmp_path / "net.svg"
    done = subprocess.run([sys.executable, "-m", "dlc", "compile", str(MLP), "--emit", "dot",
                           "-o", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PATH": str(bindir)})
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "<svg>fake</svg>"
    args, source = (tmp_path / "seen.txt").read_text().split("\n", 1)
    assert args == "-Tsvg" and source == to_dot(dlc.compile_spec(MLP).graph)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_cli_svg_with_graphviz(tmp_path):
    out = tmp_path / "net.svg"
    assert main(["compile", str(MLP), "--emit", "dot", "-o", str(out)]) == 0
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))
