"""The train section's optimizer options (parameter groups, clipping, the new optimizers and
schedules): what a spec may write, and a located error (exit 2) for what it may not."""
from __future__ import annotations

import pytest

import dlc
from dlc.cli import main

SPEC = """model M {{
    input x: f32[64]
    linear(16, bias=false) -> bn -> relu
    linear(10)
}}
train {{
    optimizer {optimizer}
    {extra}
}}
"""


def write(tmp_path, optimizer="adamw(lr=1e-3)", extra=""):
    p = tmp_path / "m.dls"
    p.write_text(SPEC.format(optimizer=optimizer, extra=extra))
    return p


def error(tmp_path, capsys, optimizer="adamw(lr=1e-3)", extra="", sets=()):
    p = write(tmp_path, optimizer, extra)
    code = main(["check", str(p), *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_groups_resolve_per_parameter_and_later_groups_win(tmp_path):
    p = write(tmp_path, extra='params(["*.bias", "linear1.*"], weight_decay=0)\n'
              '    params(norms, weight_decay=0.5, lr=0.01)')
    spec = dlc.compile_spec(p)
    groups = spec.config.param_groups
    assert [g.args["match"] for g in groups] == [["*.bias", "linear1.*"], "norms"]
    from dlc.compiler.optimizers import param_settings
    s = param_settings(spec.config.optimizer, groups, spec.graph)
    assert s["linear1.weight"] == ({**spec.config.optimizer.args, "weight_decay": 0.0}, 1.0)
    assert s["bn1.weight"][0]["weight_decay"] == 0.5 and s["bn1.weight"][1] == 10.0
    assert s["bn1.bias"][0]["weight_decay"] == 0.5          # norms come later: they win
    assert s["linear2.weight"][0]["weight_decay"] == 0.01   # adamw's default, untouched
    assert s["linear2.bias"][0]["weight_decay"] == 0.0


@pytest.mark.parametrize("extra,where,message", [
    ('params("block9.*", lr=0.1)', (8, 12), "params pattern 'block9.*' matches no parameter"),
    ('params("*.bias", momentum=0.9)', (8, 22), "'momentum' is not a setting of optimizer adamw"),
    ("params(bias, weight_decay=0)", (8, 12), "unknown parameter set 'bias'"),
    ('params("*.bias")', (8, 11), "params sets nothing"),
    ("params(weight_decay=0)", (8, 11), "params needs a pattern"),
    ('params("*.bias", beta1=1.5)', (8, 11), "params: beta1 must be in [0, 1)"),
    ('params("*.bias", lr=true)', (8, 22), "'lr' must be a number"),
    ("clip norm(0)", (8, 10), "clip norm: the limit must be positive"),
    ("clip size(1.0)", (8, 10), "unknown clip 'size'"),
    ("schedule multistep(milestones=[5, 2])", (8, 24), "milestones must be increasing"),
    ("schedule plateau(monitor=val_f1)", (8, 22), "plateau can monitor"),
    ("schedule onecycle(pct_start=1.5)", (8, 23), "pct_start must be in (0, 1)"),
])
def test_located_errors(tmp_path, capsys, extra, where, message):
    err = error(tmp_path, capsys, extra=extra)
    assert f"m.dls:{where[0]}:{where[1]}: error:" in err, err
    assert message in err, err


def test_unknown_group_setting_suggests_the_closest(tmp_path, capsys):
    err = error(tmp_path, capsys, extra='params("*.bias", weight_decy=0)')
    assert "did you mean 'weight_decay'?" in err


def test_a_group_set_from_the_command_line_is_checked_too(tmp_path, capsys):
    err = error(tmp_path, capsys, sets=['train.params=("lin*.wieght", lr=0.1)'])
    assert "matches no parameter" in err


def test_group_settings_are_checked_against_a_changed_optimizer(tmp_path, capsys):
    """A group valid for adamw is not valid for sgd: betas are not sgd's."""
    err = error(tmp_path, capsys, extra='params("*.bias", beta1=0.8)',
                sets=["train.optimizer=sgd(lr=0.1)"])
    assert "'beta1' is not a setting of optimizer sgd" in err


@pytest.mark.parametrize("optimizer", ["momentum(lr=0.1)", "nag(0.1, beta=0.8)",
                                       "adam(amsgrad=true)", "rmsprop(eps_inside=true)",
                                       "adagrad(eps_inside=true)"])
def test_new_optimizer_forms_check(tmp_path, optimizer):
    cfg = dlc.compile_spec(write(tmp_path, optimizer)).config
    assert cfg.optimizer.name == optimizer.split("(")[0]


def test_momentum_needs_a_learning_rate(tmp_path, capsys):
    err = error(tmp_path, capsys, optimizer="momentum(beta=0.9)")
    assert "lr" in err


def test_plateau_without_validation_split_is_located(tmp_path, capsys):
    p = write(tmp_path, extra="schedule plateau(patience=2)\n    data digits(val=0)\n"
              "    epochs 1")
    code = main(["train", str(p), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "m.dls:8:14: error: plateau monitors val_loss" in err, err
