"""Every registered model: sizes, structure, forward/backward, features, segmentation head."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import TINY_CHANNELS
from torch import nn

import drnet
from drnet.errors import DrnetError
from drnet.models.loading import ModelCard, build_model
from drnet.models.registry import DRN_A_SCHEDULES, SPECS
from drnet.models.summary import count_flops

# docs/design.md ("The spec format"): the paper's counts, with 1000 classes.
PAPER_PARAMS = {
    "drn_c_26": 21_126_584,
    "drn_c_42": 31_234_744,
    "drn_c_58": 41_591_608,
    "drn_d_22": 16_393_752,
    "drn_d_24": 21_114_392,
    "drn_d_38": 26_501_912,
    "drn_d_40": 31_222_552,
    "drn_d_54": 35_809_176,
    "drn_d_56": 40_529_816,
    "drn_d_105": 54_801_304,
    "drn_d_107": 59_521_944,
    "drn_a_50": 25_557_032,
    "drn_b_26": 21_126_584,  # DRN-C-26 with shortcuts in levels 7-8: same parameters
}
TORCHVISION_TWIN = {
    "drn_a_18": "resnet18",
    "drn_a_34": "resnet34",
    "drn_a_50": "resnet50",
    "drn_a_18_paper": "resnet18",
    "drn_a_34_paper": "resnet34",
    "drn_a_50_paper": "resnet50",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
}
TINY_RESNET = (8, 16, 16, 32)
HEAVY = {"drn_d_105", "drn_d_107", "resnet101", "drn_c_58", "drn_d_56", "drn_d_54"}


def meta_model(name: str, **kwargs) -> drnet.models.DRN:
    with torch.device("meta"):
        return drnet.create_model(name, **kwargs)


def tiny(name: str, **kwargs):
    channels = TINY_RESNET if SPECS[name].family in ("A", "ResNet") else TINY_CHANNELS
    return drnet.create_model(name, channels=channels, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_issue_variant_is_registered():
    wanted = {
        *("drn_a_18 drn_a_34 drn_a_50 drn_b_26 drn_c_26 drn_c_42 drn_c_58".split()),
        *("drn_d_22 drn_d_24 drn_d_38 drn_d_40 drn_d_54 drn_d_56 drn_d_105 drn_d_107".split()),
        *("resnet18 resnet34 resnet50 resnet101".split()),
    }
    assert wanted <= set(drnet.list_models())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_equal_the_paper(name):
    assert n_params(meta_model(name)) == PAPER_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_TWIN))
def test_resnet_layouts_equal_torchvision(name):
    with torch.device("meta"):
        reference = getattr(torchvision.models, TORCHVISION_TWIN[name])()
    model = meta_model(name)
    assert n_params(model) == n_params(reference)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items()}
    assert ours == theirs


def three_by_three_convs(level: nn.Module) -> list[nn.Conv2d]:
    return [m for m in level.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


# (stride of the level's first 3x3 conv, dilation of every other 3x3 conv, first conv's dilation)
DRN_LEVELS = {1: (1, 1, 1), 2: (2, 1, 1), 3: (2, 1, 1), 4: (2, 1, 1), 5: (1, 2, 2), 6: (1, 4, 4)}
DRN_LEVELS |= {7: (1, 2, 2), 8: (1, 1, 1)}
A_LEVELS = {1: (1, 1, 1), 2: (2, 1, 1), 3: (1, 2, 1), 4: (1, 4, 1)}  # first blocks undilated
RESNET_LEVELS = {1: (1, 1, 1), 2: (2, 1, 1), 3: (2, 1, 1), 4: (2, 1, 1)}


@pytest.mark.parametrize(
    "name, table",
    [
        ("drn_c_26", DRN_LEVELS),
        ("drn_b_26", DRN_LEVELS),
        ("drn_d_22", DRN_LEVELS),
        ("drn_d_40", DRN_LEVELS),
        ("drn_c_58", DRN_LEVELS),
        ("drn_d_105", DRN_LEVELS),
        ("drn_a_18", A_LEVELS),
        ("drn_a_50", A_LEVELS),
        ("resnet34", RESNET_LEVELS),
    ],
)
def test_dilation_and_stride_of_every_3x3_conv(name, table):
    model = meta_model(name)
    for index, (first_stride, dilation, first_dilation) in table.items():
        level = getattr(model, f"layer{index}")
        convs = three_by_three_convs(level)
        assert convs, f"layer{index} has no 3x3 conv"
        blocks = list(level) if not isinstance(level[0], nn.Conv2d) else [level]
        first_block_convs = three_by_three_convs(blocks[0])
        for conv in convs:
            assert conv.padding == conv.dilation, f"{name} layer{index}: padding != dilation"
            expected_stride = first_stride if conv is convs[0] else 1
            assert conv.stride == (expected_stride, expected_stride), f"{name} layer{index}"
            if conv in first_block_convs and model.spec.family in ("A", "ResNet"):
                assert conv.dilation == (first_dilation,) * 2, f"{name} layer{index} first block"
            else:
                assert conv.dilation == (dilation,) * 2, f"{name} layer{index}"


def test_drn_c_levels_7_8_have_no_shortcut_but_drn_b_does():
    c26, b26 = meta_model("drn_c_26"), meta_model("drn_b_26")
    for index in (7, 8):
        assert not getattr(c26, f"layer{index}")[0].residual
        assert getattr(b26, f"layer{index}")[0].residual
    assert all(block.residual for block in c26.layer6)


@pytest.mark.parametrize("name", drnet.list_models())
def test_output_stride_and_dense_map_at_224(name):
    model = meta_model(name, num_classes=10)
    x = torch.zeros(1, 3, 224, 224, device="meta")
    side = 224 // model.output_stride
    assert model.output_stride == (32 if name.startswith("resnet") else 8)
    assert model.forward_map(x).shape == (1, 10, side, side)
    assert model(x).shape == (1, 10)
    out_map = meta_model(name, num_classes=10, out_map=True)
    assert out_map(x).shape == (1, 10, side, side)


@pytest.mark.parametrize("name", drnet.list_models())
def test_feature_info_matches_feature_maps(name):
    model = meta_model(name, features_only=True)
    features = model(torch.zeros(2, 3, 96, 128, device="meta"))
    assert len(features) == len(model.feature_info)
    for feature, info in zip(features, model.feature_info, strict=True):
        assert feature.shape[1] == info["num_chs"]
        assert feature.shape[-2:] == (-(-96 // info["reduction"]), -(-128 // info["reduction"]))
    assert model.feature_info.channels()[-1] == model.num_features
    assert not hasattr(model, "fc")


def test_out_indices_select_stages():
    # timm's convention: five stages at nominal reductions 2..32 (the dilated ones stay at 8).
    model = meta_model("drn_d_22", features_only=True, out_indices=(0, 2, -1))
    assert model.feature_info.reduction() == [2, 8, 8]
    assert model.feature_info.module_name() == ["layer2", "layer4", "layer8"]
    assert meta_model("drn_d_22").level_info.module_name()[:2] == ["layer0", "layer1"]
    with pytest.raises(ValueError, match="out of range"):
        meta_model("drn_d_22", features_only=True, out_indices=(5,))


@pytest.mark.parametrize(
    "name",
    [n for n in drnet.list_models() if n not in HEAVY]
    + [pytest.param(n, marks=pytest.mark.slow) for n in sorted(HEAVY)],
)
@pytest.mark.parametrize("size", [(64, 64), (57, 75), (40, 104)])
def test_forward_real_sizes(name, size):
    torch.manual_seed(0)
    model = drnet.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(x)
        dense = model.forward_map(x)
    stride = model.output_stride
    assert logits.shape == (2, 7)
    assert dense.shape == (2, 7, -(-size[0] // stride), -(-size[1] // stride))
    assert torch.isfinite(logits).all()
    # Global pooling of the dense map is the classifier's output (fc is linear).
    torch.testing.assert_close(dense.mean(dim=(2, 3)), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", drnet.list_models())
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = tiny(name, num_classes=5).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 48, 40)), torch.tensor([1, 3]))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    if name == "drn_c_58":  # the official, discarded layer7.0.downsample: kept for keys, not run
        assert no_grad and all(n.startswith("layer7.0.downsample.") for n in no_grad)
    else:
        assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_drn_c_58_keeps_the_discarded_downsample_keys():
    keys = meta_model("drn_c_58").state_dict()
    assert "layer7.0.downsample.0.weight" in keys
    assert keys["layer7.0.downsample.0.weight"].shape == (512, 2048, 1, 1)


def test_channels_and_width_mult():
    model = drnet.create_model("drn_d_22", channels=(8, 16, 32, 64, 128, 128, 128, 128))
    assert model.num_features == 128
    assert model.layer0[0].out_channels == 8
    assert drnet.create_model("drn_c_26", width_mult=0.25).num_features == 128
    with pytest.raises(DrnetError, match="one width per level"):
        drnet.create_model("drn_d_22", channels=(8, 16))


def test_custom_spec_paper_dilation_schedule():
    import dataclasses

    spec = SPECS["drn_c_26"]
    levels = list(spec.levels)
    levels[5] = dataclasses.replace(levels[5], first_dilation=(2, 4))
    model = drnet.create_model("drn_c_26", spec=dataclasses.replace(spec, levels=tuple(levels)))
    assert model.layer6[0].conv1.dilation == (2, 2)
    assert model.layer6[0].conv2.dilation == (4, 4)
    assert n_params(model) == PAPER_PARAMS["drn_c_26"]


def test_list_models_filter_and_pretrained():
    assert drnet.list_models("drn_d_1*") == ["drn_d_105", "drn_d_107"]
    assert "drn_c_26" in drnet.list_models(pretrained=True)
    assert "drn_d_24" not in drnet.list_models(pretrained=True)
    assert drnet.list_models("c_2") == ["drn_c_26"]


def test_unknown_model_lists_close_matches():
    with pytest.raises(DrnetError, match="did you mean .*drn_d_22"):
        drnet.create_model("drn_d_23")
    with pytest.raises(DrnetError, match="drn_c_26"):
        drnet.create_model("drn-c-62")


def test_flops_count_multiply_add_as_two():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 3, 5, 5)) == 2 * 3 * 4 * 9 * 25
    model = meta_model("resnet50")
    assert count_flops(model, (1, 3, 224, 224)) / 1e9 == pytest.approx(8.18, abs=0.02)


# -- DRN-A dilation schedules --------------------------------------------------------------------

# The dilation of every 3x3 conv of layer3 and of layer4, in order (padding must equal it).
A_3X3_DILATIONS = {
    "drn_a_18": ([1, 1, 2, 2], [1, 1, 4, 4]),
    "drn_a_34": ([1, 1] + [2] * 10, [1, 1, 4, 4, 4, 4]),
    "drn_a_50": ([1, 2, 2, 2, 2, 2], [1, 4, 4]),  # a Bottleneck has one 3x3 conv
    "drn_a_18_paper": ([2, 2, 2, 2], [2, 4, 4, 4]),
    "drn_a_34_paper": ([2] * 12, [2, 4, 4, 4, 4, 4]),
    "drn_a_50_paper": ([2, 2, 2, 2, 2, 2], [2, 4, 4]),
}
A_PAIRS = [("drn_a_18", "drn_a_18_paper"), ("drn_a_34", "drn_a_34_paper")]
A_PAIRS += [("drn_a_50", "drn_a_50_paper")]


def test_every_drn_a_variant_has_a_documented_schedule():
    registered = {n for n in drnet.list_models() if SPECS[n].family == "A"}
    assert registered == set(DRN_A_SCHEDULES) == set(A_3X3_DILATIONS)
    assert {n for n, s in DRN_A_SCHEDULES.items() if s == "paper"} == {p for _, p in A_PAIRS}


@pytest.mark.parametrize("name", sorted(A_3X3_DILATIONS))
def test_drn_a_dilation_and_padding_of_every_3x3_conv(name):
    model = meta_model(name)
    for level, expected in zip((model.layer3, model.layer4), A_3X3_DILATIONS[name], strict=True):
        convs = three_by_three_convs(level)
        assert [conv.dilation[0] for conv in convs] == expected
        assert [conv.padding for conv in convs] == [(d, d) for d in expected]
        assert [conv.dilation for conv in convs] == [(d, d) for d in expected]
        assert all(conv.stride == (1, 1) for conv in convs)
        assert level[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize("name", sorted(A_3X3_DILATIONS))
def test_drn_a_output_stride_8_and_28x28_maps_at_224(name):
    assert SPECS[name].output_stride == 8
    model = tiny(name, num_classes=3, features_only=True).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 224, 224))
    assert [f.shape[-2:] for f in features[-3:]] == [(28, 28)] * 3  # layer2, layer3, layer4
    assert meta_model(name, num_classes=3).forward_map(
        torch.zeros(1, 3, 224, 224, device="meta")
    ).shape == (1, 3, 28, 28)


@pytest.mark.parametrize("released, paper", A_PAIRS)
def test_drn_a_schedules_share_keys_shapes_and_parameter_counts(released, paper):
    a, b = meta_model(released), meta_model(paper)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    assert n_params(a) == n_params(b)
    assert drnet.models.get_weights(paper).file_name == drnet.models.get_weights(released).file_name


@pytest.mark.parametrize("released, paper", [A_PAIRS[0], A_PAIRS[2]])
def test_drn_a_weights_load_strictly_into_the_other_schedule(released, paper, tmp_path):
    torch.manual_seed(0)
    for source, target in ((released, paper), (paper, released)):
        model = tiny(source, num_classes=4).eval()
        path = tmp_path / f"{source}.pth"
        torch.save(model.state_dict(), path)
        loaded = tiny(target, num_classes=4, checkpoint_path=path).eval()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value)
        # Same weights, another dilation: the outputs differ, so the schedule is really applied.
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert not torch.allclose(loaded(x), model(x))


def official_drn_a_50() -> nn.Module:
    """The released DRN-A-50 (github.com/fyu/drn, ``DRN_A``) rebuilt from torchvision's ResNet-50:
    layer3/4 stride 1; in each, the first block undilated, later 3x3 convs dilated 2 / 4."""
    reference = torchvision.models.resnet50()
    for level, dilation in ((reference.layer3, 2), (reference.layer4, 4)):
        level[0].conv2.stride = (1, 1)
        level[0].downsample[0].stride = (1, 1)
        for block in level[1:]:
            block.conv2.dilation = block.conv2.padding = (dilation, dilation)
    return reference


def test_drn_a_50_default_is_the_released_layout():
    torch.manual_seed(0)
    ours = drnet.create_model("drn_a_50").eval()
    reference = official_drn_a_50().eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)
        paper = drnet.create_model("drn_a_50_paper").eval()
        paper.load_state_dict(ours.state_dict(), strict=True)
        assert not torch.allclose(paper(x), reference(x), rtol=1e-4, atol=1e-4)


def test_drn_a_paper_schedule_in_segmentation_and_model_cards():
    seg = drnet.create_segmentation_model("drn_a_18_paper", 3, channels=TINY_RESNET)
    layer4 = seg.base[7]  # conv1, bn1, relu, maxpool, layer1..layer4
    assert [c.dilation[0] for c in three_by_three_convs(layer4)] == [2, 4, 4, 4]
    with torch.no_grad():
        assert seg(torch.randn(1, 3, 40, 48))["out"].shape == (1, 3, 40, 48)
    # A run's model card names the schedule, so a reloaded model gets it back.
    card = ModelCard(model="drn_a_50_paper", num_classes=2, channels=list(TINY_RESNET))
    rebuilt = build_model(card)
    assert [c.dilation[0] for c in three_by_three_convs(rebuilt.layer4)] == [2, 4, 4]


# -- segmentation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["drn_d_22", "drn_c_26", "drn_a_18", "drn_b_26", "resnet18"])
@pytest.mark.parametrize("size", [(64, 64), (61, 83), (33, 47)])
def test_segmentation_output_has_input_size(backbone, size):
    channels = TINY_RESNET if SPECS[backbone].family in ("A", "ResNet") else TINY_CHANNELS
    model = drnet.create_segmentation_model(backbone, 4, channels=channels).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert model(x)["out"].shape == (2, 4, *size)
    model.output = "official"
    with torch.no_grad():
        log_probs, low = model(x)
    assert log_probs.shape == (2, 4, *size)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(2, *size))
    stride = model.output_stride
    assert low.shape == (2, 4, -(-size[0] // stride), -(-size[1] // stride))


def test_segmentation_state_dict_layout():
    keys = drnet.create_segmentation_model("drn_d_22", 19).state_dict()
    assert "base.0.0.weight" in keys and "base.8.0.weight" in keys and "base.9.weight" not in keys
    assert keys["seg.weight"].shape == (19, 512, 1, 1) and keys["up.weight"].shape == (
        19,
        1,
        16,
        16,
    )
    c_keys = drnet.create_segmentation_model("drn_c_26", 19).state_dict()
    assert "base.0.weight" in c_keys and "base.1.running_var" in c_keys
    assert "base.3.0.conv1.weight" in c_keys and "base.10.0.conv2.weight" in c_keys
    a_keys = drnet.create_segmentation_model("drn_a_18", 19).state_dict()
    assert "base.4.0.conv1.weight" in a_keys and "base.7.1.bn2.bias" in a_keys


def test_up_is_the_fixed_bilinear_kernel_and_not_trained():
    model = drnet.create_segmentation_model("drn_d_22", 3, channels=TINY_CHANNELS)
    profile = torch.tensor([1, 3, 5, 7, 9, 11, 13, 15, 15, 13, 11, 9, 7, 5, 3, 1]) / 16
    expected = torch.outer(profile, profile)
    for channel in range(3):
        torch.testing.assert_close(model.up.weight[channel, 0], expected)
    assert not model.up.weight.requires_grad
    assert "up.weight" in model.state_dict()
    out = model(torch.randn(1, 3, 32, 32))["out"]
    out.sum().backward()
    assert model.up.weight.grad is None and model.seg.weight.grad is not None


def test_up_weight_from_a_checkpoint_is_honoured(tmp_path):
    model = drnet.create_segmentation_model("drn_d_22", 3, channels=TINY_CHANNELS).eval()
    state = model.state_dict()
    state["up.weight"] = torch.zeros_like(state["up.weight"])
    path = tmp_path / "seg.pth"
    torch.save(state, path)
    loaded = drnet.create_segmentation_model(
        "drn_d_22", 3, channels=TINY_CHANNELS, checkpoint_path=path
    ).eval()
    with torch.no_grad():
        assert loaded(torch.randn(1, 3, 16, 16))["out"].abs().max() == 0
