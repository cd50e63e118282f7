"""The pass pipelines: their order, the DLC_DEBUG trace, and the verify pass catching bad IR."""
from __future__ import annotations

from pathlib import Path

import pytest

import dlc
from dlc.compiler.ir import TensorType
from dlc.compiler.pipeline import TRAIN, build_eval_graph, build_infer_graph, build_train_graph
from dlc.compiler.verify import IRError, verify

MLP = Path(__file__).resolve().parents[2] / "examples" / "digits_mlp.dls"


def test_debug_trace_lists_the_train_passes_in_order(monkeypatch, capsys):
    monkeypatch.setenv("DLC_DEBUG", "1")
    spec = dlc.compile_spec(MLP)
    build_train_graph(spec.graph, spec.config)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[dlc]")]
    assert [l.split()[2] for l in lines] == [name for name, _ in TRAIN]
    assert [name for name, _ in TRAIN] == ["lower-train", "gt-proposals", "weight-noise", "add-loss",
                                           "lookahead", "autodiff", "all-reduce",
                                           "optimizer", "dce", "verify"]


def test_debug_level_two_prints_the_ir_after_each_pass(monkeypatch, capsys):
    monkeypatch.setenv("DLC_DEBUG", "2")
    spec = dlc.compile_spec(MLP)
    build_infer_graph(spec.graph, spec.config)
    err = capsys.readouterr().err
    assert err.count("graph DigitsMLP.infer(") == 3            # lower-eval, dce, verify


def test_every_built_graph_verifies():
    spec = dlc.compile_spec(MLP)
    for build in (build_train_graph, build_eval_graph, build_infer_graph):
        g = build(spec.graph, spec.config)
        assert verify(g) is g


def test_verify_catches_a_wrong_type():
    spec = dlc.compile_spec(MLP)
    g = build_infer_graph(spec.graph, spec.config)
    g.nodes[0].outputs[0].type = TensorType(("N", 7))
    with pytest.raises(IRError, match="shape rule gives f32\\[N,256\\]"):
        verify(g)


def test_verify_catches_use_before_definition():
    spec = dlc.compile_spec(MLP)
    g = build_infer_graph(spec.graph, spec.config)
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    with pytest.raises(IRError, match="defined later"):
        verify(g)
