"""The FCN zoo: parameter counts against the published models, symbolic sizes, and the
parameter order `dlc convert` maps torchvision's state dict by.

FCN-8s: Long et al.'s Caffe voc-fcn8s, VGG-16 convs 14,714,688 + fc6 (7x7x512x4096 + 4096)
102,764,544 + fc7 16,781,312 + score_fr 86,037 + score_pool4 10,773 + score_pool3 5,397 +
the bias-free upsamplings 21*21*(4*4 + 4*4 + 16*16) = 127,008: 134,489,759.
fcn_resnet50: torchvision's published counts (32,957,013; 35,322,218 with aux_loss)."""
from __future__ import annotations

from pathlib import Path

import pytest

import dlc
from dlc.compiler.kernels import eval_dim

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name, sets, count", [
    ("fcn8s", [], 134_489_759),
    ("fcn_resnet50", [], 32_957_013),
    ("fcn_resnet50", ["model.aux=true"], 35_322_218),
])
def test_fcn_parameter_counts(name, sets, count):
    spec = dlc.compile_spec(EXAMPLES / f"{name}.dls", sets=sets)
    assert spec.num_params() == count
    assert str(spec.graph.inputs[0].type) == "f32[N,3,H,W]"
    assert all(str(v.type) == "f32[N,21,H,W]" for v in spec.graph.outputs)


def test_fcn8s_crops_fit_any_input_size():
    spec = dlc.compile_spec(EXAMPLES / "fcn8s.dls")
    crops = [n for n in spec.graph.nodes if n.op == "crop"]
    assert [n.attrs["offset"] for n in crops] == [(5, 5), (9, 9), (31, 31)]
    for size in (32, 97, 224, 500):
        for n in crops:
            have = [eval_dim(d, {"H": size, "W": size}) for d in n.inputs[0].type.shape[2:]]
            want = [eval_dim(d, {"H": size, "W": size}) for d in n.inputs[1].type.shape[2:]]
            assert all(h >= w + o for h, w, o in zip(have, want, n.attrs["offset"]))


def test_fcn_resnet50_parameters_in_torchvision_order():
    spec = dlc.compile_spec(EXAMPLES / "fcn_resnet50.dls", sets=["model.aux=true"])
    shapes = [tuple(p.type.shape) for p in spec.graph.params()]
    assert shapes[:2] == [(64, 3, 7, 7), (64,)]                       # backbone.conv1, bn1
    # classifier: 3x3 conv 2048 -> 512, bn, 1x1 conv -> 21; then the aux head on layer3
    assert shapes[-10:] == [(512, 2048, 3, 3), (512,), (512,), (21, 512, 1, 1), (21,),
                            (256, 1024, 3, 3), (256,), (256,), (21, 256, 1, 1), (21,)]
    dilations = [n.attrs["dilation"] for n in spec.graph.nodes
                 if n.op == "conv2d" and n.attrs["kernel"] == (3, 3)][:16]
    assert dilations == [(1, 1)] * 7 + [(1, 1)] + [(2, 2)] * 5 + [(2, 2)] + [(4, 4)] * 2
