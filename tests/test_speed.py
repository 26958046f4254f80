"""The inference fast path gives eager's outputs; gradient checkpointing gives eager's step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_CHANNELS, relative_error
from torch import nn

import drnet
from drnet.speed import fold_batchnorm, optimize_for_inference, predict_labels
from drnet.speed.fold import count_batchnorms
from drnet.speed.fused import ConvAct, FusedBlock
from drnet.speed.upsample import SeparableUpsample, separable_factors, upsample_labels_reference

TINY_RESNET = (8, 8, 16, 16)


def tiny_channels(name: str) -> tuple[int, ...]:
    return TINY_RESNET if name.startswith(("drn_a", "resnet")) else TINY_CHANNELS


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding is really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model


# (model, channels_last): every family, both layouts on the two most used models
CLASSIFIER_CASES = [
    ("drn_d_22", False),
    ("drn_d_22", True),
    ("drn_c_26", False),
    ("drn_c_26", True),
    ("drn_c_58", True),
    ("drn_b_26", True),
    ("drn_a_18", True),
    ("drn_d_54", False),
]


@pytest.mark.parametrize(("name", "channels_last"), CLASSIFIER_CASES)
def test_fast_classifier_matches_eager(name: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    model = drnet.create_model(name, num_classes=10, channels=tiny_channels(name)).eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 56, 72)
    with torch.inference_mode():
        reference = model(x)
        fast = optimize_for_inference(model, channels_last=channels_last)
        out = fast(x)
    assert count_batchnorms(fast) == 0
    assert any(isinstance(m, (ConvAct, FusedBlock)) for m in fast.modules())
    assert relative_error(out, reference) < 1e-4
    assert torch.equal(out.argmax(1), reference.argmax(1))
    assert model.training is False and count_batchnorms(model) > 0  # the original is untouched


def test_fast_path_features_and_map() -> None:
    torch.manual_seed(0)
    features = drnet.create_model("drn_d_22", channels=TINY_CHANNELS, features_only=True).eval()
    dense = drnet.create_model(
        "drn_c_26", num_classes=7, channels=TINY_CHANNELS, out_map=True
    ).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.inference_mode():
        for a, b in zip(optimize_for_inference(features)(x), features(x), strict=True):
            assert relative_error(a, b) < 1e-4
        assert relative_error(optimize_for_inference(dense)(x), dense(x)) < 1e-4


def test_fold_skips_trainless_batchnorm_structure() -> None:
    model = drnet.create_model("drn_c_26", num_classes=4, channels=TINY_CHANNELS)
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0
    assert count_batchnorms(model) > 0 and model.training  # copy; original unchanged


def test_drn_c_58_discarded_downsample_not_run() -> None:
    model = drnet.create_model("drn_c_58", num_classes=4, channels=TINY_CHANNELS).eval()
    fast = optimize_for_inference(model, channels_last=False)
    block = fast.model.layer7[0]
    assert isinstance(block, FusedBlock) and block.downsample is None
    assert model.layer7[0].downsample is not None  # keys kept on the original


SEGMENTER_CASES = [("drn_d_22", (64, 64)), ("drn_d_22", (61, 83)), ("drn_c_26", (61, 83))]
SEGMENTER_CASES += [("drn_a_18", (48, 72))]


@pytest.mark.parametrize(("name", "size"), SEGMENTER_CASES)
def test_fast_segmentation_matches_eager(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = drnet.create_segmentation_model(name, 5, channels=tiny_channels(name)).eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        reference = model(x)["out"]
        fast = optimize_for_inference(model, channels_last=True)
        out = fast(x)["out"]
        labels = fast.predict_labels(x, chunk_rows=16)
        plain_labels = predict_labels(model, x, chunk_rows=8)
    assert fast.choice.separable_upsample
    assert out.shape == reference.shape
    assert relative_error(out, reference) < 1e-4
    assert torch.equal(labels, reference.argmax(1))
    assert torch.equal(plain_labels, reference.argmax(1))


def test_fast_segmentation_official_output() -> None:
    torch.manual_seed(0)
    model = drnet.create_segmentation_model(
        "drn_d_22", 4, channels=TINY_CHANNELS, output="official"
    )
    model.eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.inference_mode():
        log_probs, low = model(x)
        fast_log_probs, fast_low = optimize_for_inference(model)(x)
    assert relative_error(fast_log_probs, log_probs) < 1e-4
    assert relative_error(fast_low, low) < 1e-4


def test_auto_layout_measures_and_includes_eager() -> None:
    from drnet.speed.backends import installed_backends
    from drnet.speed.inference import TORCH_CANDIDATES

    torch.manual_seed(0)
    model = drnet.create_segmentation_model("drn_d_22", 3, channels=TINY_CHANNELS).eval()
    x = torch.randn(1, 3, 32, 32)
    fast = optimize_for_inference(model, example_input=x, repeats=1)
    # eager with BatchNorm folded ("fold") is the baseline every other candidate must beat;
    # Winograd is offered only for convs of at least 64 channels (these have 32)
    torch_names = set(TORCH_CANDIDATES) - {"winograd"}
    assert set(fast.choice.seconds) == torch_names | set(installed_backends()[1:])
    with torch.inference_mode():
        assert relative_error(fast(x)["out"], model(x)["out"]) < 1e-4
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_upsample_matches_transposed_conv_and_falls_back() -> None:
    torch.manual_seed(0)
    model = drnet.create_segmentation_model("drn_d_22", 3, channels=TINY_CHANNELS).eval()
    low = torch.randn(2, 3, 9, 13)
    with torch.no_grad():
        full = model.up(low)
        upsample = SeparableUpsample(model.up)
        for size in [(72, 104), (65, 99), (1, 1)]:
            expected = full[..., : size[0], : size[1]]
            assert relative_error(upsample(low, size), expected) < 1e-5
            assert torch.equal(upsample.labels(low, size, chunk_rows=8), expected.argmax(1))
        # a checkpoint's non-separable kernel is honoured through the transposed conv
        model.up.weight.add_(torch.rand_like(model.up.weight))
        with pytest.raises(ValueError, match="not separable"):
            separable_factors(model.up.weight)
        full = model.up(low)
        labels = upsample_labels_reference(model.up, low, (70, 100), chunk_rows=16)
        assert torch.equal(labels, full[..., :70, :100].argmax(1))
        x = torch.randn(1, 3, 37, 45)
        fast = optimize_for_inference(model)
        assert not fast.choice.separable_upsample
        assert torch.equal(fast.predict_labels(x), model(x)["out"].argmax(1))


def _segmentation_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x)["out"], target, ignore_index=255)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name", ["drn_d_22", "drn_c_26", "drn_a_18"])
def test_grad_checkpoint_same_loss_grads_and_bn_buffers(name: str) -> None:
    torch.manual_seed(0)
    model = drnet.create_segmentation_model(name, 5, channels=tiny_channels(name)).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 48, 48)
    target = torch.randint(0, 5, (2, 48, 48))
    target[:, :4] = 255
    loss = _segmentation_step(model, x, target)
    loss_ckpt = _segmentation_step(checkpointed, x, target)
    assert torch.allclose(loss, loss_ckpt, rtol=0, atol=1e-6)
    for (key, p), p_ckpt in zip(model.named_parameters(), checkpointed.parameters(), strict=True):
        if p.grad is None:
            assert p_ckpt.grad is None, key
            continue
        assert torch.allclose(p.grad, p_ckpt.grad, rtol=1e-5, atol=1e-6), key
    for (key, b), b_ckpt in zip(model.named_buffers(), checkpointed.buffers(), strict=True):
        assert torch.equal(b, b_ckpt), key  # running stats updated exactly once
    tracked = [b for k, b in checkpointed.named_buffers() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(b) == 1 for b in tracked)


def test_grad_checkpoint_classifier_bn_buffers() -> None:
    torch.manual_seed(0)
    model = drnet.create_model("drn_d_22", num_classes=4, channels=TINY_CHANNELS).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    for m in (model, checkpointed):
        m(x).sum().backward()
    for b, b_ckpt in zip(model.buffers(), checkpointed.buffers(), strict=True):
        assert torch.equal(b, b_ckpt)
    for p, p_ckpt in zip(model.parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(p.grad, p_ckpt.grad, rtol=1e-5, atol=1e-6)


def test_fast_inference_switch() -> None:
    model = drnet.create_segmentation_model("drn_d_22", 3, channels=TINY_CHANNELS)
    from drnet.speed import InferenceModel, fast_inference
    from drnet.speed.inference import FastOnFirstCall

    x = torch.randn(1, 3, 32, 48)
    assert isinstance(fast_inference(model, example_input=x), InferenceModel)
    plain = fast_inference(model, enabled=False)
    assert plain is model and not plain.training
    # without an example the choice is timed on the first input, folded eager competing
    deferred = fast_inference(model)
    assert isinstance(deferred, FastOnFirstCall) and deferred.fast is None
    with torch.no_grad():
        out = deferred(x)["out"]
        assert {"fold", "fast_nchw", "fast_channels_last"} <= set(deferred.fast.choice.seconds)
        assert torch.allclose(out, model(x)["out"], rtol=1e-4, atol=1e-5)
        assert torch.equal(deferred.predict_labels(x), out.argmax(1))
    with pytest.raises(RuntimeError, match="inference only"):
        deferred.train()


def test_packed_weights_copy_and_follow_weight_changes() -> None:
    torch.manual_seed(0)
    model = drnet.create_model("drn_d_22", num_classes=4, channels=TINY_CHANNELS).eval()
    fast = optimize_for_inference(model, channels_last=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = fast(x)  # packs the weights (oneDNN builds)
        copied = copy.deepcopy(fast)  # the opaque packed copies are dropped, then rebuilt
        assert torch.allclose(copied(x), out, rtol=1e-5, atol=1e-6)
        conv = next(m for m in fast.modules() if isinstance(m, ConvAct))
        conv.weight.mul_(2.0)  # a changed weight is repacked
        assert not torch.allclose(fast(x), out)
