"""The fast-path chooser: never a path measured slower, decisions cached and invalidated, and
every execution backend agreeing with eager where it is installed."""

from __future__ import annotations

import copy
import json
import os
import random

import pytest
import torch

import drnet
from drnet.errors import DrnetError
from drnet.speed import chooser, optimize_for_inference
from drnet.speed.backends import backend_installed, resolve_backend
from drnet.speed.inference import TORCH_CANDIDATES, build_candidate, fast_inference

TINY = (16, 16, 32, 64, 64, 64, 64, 64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRNET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / chooser.CACHE_FILE


@pytest.fixture
def segmenter():
    torch.manual_seed(0)
    model = drnet.create_segmentation_model("drn_d_22", 5, channels=TINY).eval()
    with torch.no_grad():  # non-trivial BatchNorm, as trained weights have
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def fake_timer(medians: dict[str, float], calls: list | None = None):
    """A stand-in for chooser.time_candidates returning fixed times (three rounds each); a
    candidate not in ``medians`` takes twice the baseline's."""

    def timer(candidates, rounds, budget_s=chooser.TIME_BUDGET_S, device=None):
        if calls is not None:
            calls.append(sorted(candidates))
        slow = 2 * medians["fold"]
        return {name: [medians.get(name, slow)] * 3 for name in candidates}

    return timer


def test_pick_never_returns_a_candidate_measured_slower():
    rng = random.Random(0)
    for _ in range(2000):
        names = ["fold"] + rng.sample(["fast_nchw", "fast_channels_last", "onnxruntime"], 2)
        seconds = {name: rng.uniform(0.5, 1.5) for name in names}
        best = chooser.pick(seconds)
        assert seconds[best] <= seconds["fold"]
        if best != "fold":
            assert seconds[best] * chooser.MARGIN < seconds["fold"]
            assert seconds[best] == min(seconds.values())
    # within the margin is not "measured faster": the baseline stays
    assert chooser.pick({"fold": 1.0, "fast_nchw": 0.99}) == "fold"
    assert chooser.pick({"fold": 1.0, "fast_nchw": 0.9}) == "fast_nchw"
    assert chooser.pick({"fold": 1.0, "fast_nchw": 1.0}) == "fold"  # a tie keeps the baseline
    with pytest.raises(ValueError, match="baseline"):
        chooser.pick({"fast_nchw": 1.0})


@pytest.mark.parametrize(
    ("medians", "expected"),
    [
        ({"fold": 1.0, "fast_nchw": 1.2, "fast_channels_last": 1.5, "winograd": 1.1}, "fold"),
        ({"fold": 1.0, "fast_nchw": 0.99, "fast_channels_last": 1.1, "winograd": 0.98}, "fold"),
        ({"fold": 1.0, "fast_nchw": 0.7, "fast_channels_last": 0.8, "winograd": 0.9}, "fast_nchw"),
        ({"fold": 1.0, "fast_nchw": 0.9, "fast_channels_last": 0.6, "winograd": 0.7},
         "fast_channels_last"),
        ({"fold": 1.0, "fast_nchw": 0.9, "fast_channels_last": 0.8, "winograd": 0.6}, "winograd"),
    ],
)
def test_chooser_returns_only_what_it_measured_faster(
    segmenter, cache, monkeypatch, medians, expected
):
    monkeypatch.setattr(chooser, "time_candidates", fake_timer(medians))
    x = torch.randn(1, 3, 40, 56)
    fast = optimize_for_inference(segmenter, example_input=x, backend="torch")
    assert fast.choice.candidate == expected
    assert fast.choice.seconds == medians and not fast.choice.cached
    assert fast.choice.fold_bn  # the fallback is eager with BatchNorm folded, not unfolded eager
    with torch.inference_mode():
        assert torch.equal(fast.labels(x), segmenter(x)["out"].argmax(1))


def test_auto_offers_every_installed_backend_and_keeps_the_rule(segmenter, cache, monkeypatch):
    calls: list = []
    medians = {"fold": 1.0, "fast_nchw": 1.1, "fast_channels_last": 1.2}
    medians |= {"onnxruntime": 1.01, "openvino": 1.05}  # slower or within noise: not chosen
    monkeypatch.setattr(chooser, "time_candidates", fake_timer(medians, calls))
    fast = optimize_for_inference(segmenter, example_input=torch.randn(1, 3, 32, 32))
    offered = set(calls[0])
    assert set(TORCH_CANDIDATES) <= offered
    for backend in ("onnxruntime", "openvino"):
        assert (backend in offered) == backend_installed(backend)
    assert fast.choice.candidate == "fold" and fast.core is None


def test_decision_is_cached_reused_and_invalidated(segmenter, cache, monkeypatch):
    calls: list = []
    medians = {"fold": 1.0, "fast_nchw": 0.5, "fast_channels_last": 0.8, "winograd": 0.7}
    monkeypatch.setattr(chooser, "time_candidates", fake_timer(medians, calls))
    x = torch.randn(1, 3, 48, 64)
    first = optimize_for_inference(segmenter, example_input=x, backend="torch")
    assert first.choice.candidate == "fast_nchw" and len(calls) == 1
    entries = json.loads(cache.read_text())
    assert [entry["choice"] for entry in entries.values()] == ["fast_nchw"]

    # the same key: built from the cache, nothing timed (a changed timing would not matter)
    monkeypatch.setattr(chooser, "time_candidates", fake_timer({**medians, "fold": 0.1}, calls))
    again = optimize_for_inference(segmenter, example_input=x, backend="torch")
    assert again.choice.candidate == "fast_nchw" and again.choice.cached and len(calls) == 1
    assert again.choice.seconds == medians

    # another input size, another torch, another CPU: measured again
    optimize_for_inference(segmenter, example_input=torch.randn(1, 3, 64, 64), backend="torch")
    assert len(calls) == 2
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert optimize_for_inference(segmenter, example_input=x, backend="torch").choice.candidate
    assert len(calls) == 3
    monkeypatch.setattr(chooser, "cpu_signature", lambda: "Another CPU [avx2]")
    fresh = optimize_for_inference(segmenter, example_input=x, backend="torch")
    assert len(calls) == 4 and fresh.choice.candidate == "fold" and not fresh.choice.cached
    assert len(json.loads(cache.read_text())) == 4

    # a corrupt cache file is no decision, and is replaced by a good one
    cache.write_text("{not json")
    optimize_for_inference(segmenter, example_input=x, backend="torch")
    assert len(calls) == 5 and len(json.loads(cache.read_text())) == 1
    # use_cache=False neither reads nor writes
    optimize_for_inference(segmenter, example_input=x, backend="torch", use_cache=False)
    assert len(calls) == 6 and len(json.loads(cache.read_text())) == 1


def test_large_inputs_are_timed_on_a_proxy_and_progress_is_reported(segmenter, cache, monkeypatch):
    seen = []

    def timer(candidates, rounds, budget_s=chooser.TIME_BUDGET_S, device=None):
        return {name: [1.0 if name == "fold" else 2.0] for name in candidates}

    original = chooser.proxy_input
    monkeypatch.setattr(chooser, "time_candidates", timer)
    monkeypatch.setattr(chooser, "proxy_input", lambda x: seen.append(x.shape) or original(x))
    assert chooser.proxy_shape((4, 3, 1024, 2048)) == (1, 3, 256, 512)
    assert chooser.proxy_shape((2, 3, 96, 128)) == (1, 3, 96, 128)
    height, width = chooser.proxy_shape((1, 3, 720, 1280))[2:]
    assert height * width <= chooser.PROXY_PIXELS * 1.05 and height % 8 == width % 8 == 0
    lines: list[str] = []
    fast = fast_inference(segmenter, example_input=torch.randn(2, 3, 48, 64), progress=lines.append)
    assert seen and fast.choice.candidate == "fold"
    assert any("timing" in line for line in lines) and any("chose fold" in line for line in lines)
    # deferred to the first call, the progress callback set at start-up
    deferred = fast_inference(segmenter, backend="torch")
    lines.clear()
    deferred.prepare(torch.randn(1, 3, 48, 64), progress=lines.append)
    assert deferred.fast is not None and lines


def test_backend_names_come_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.delenv("DRNET_BACKEND", raising=False)
    assert resolve_backend(None) == "auto"
    monkeypatch.setenv("DRNET_BACKEND", "torch")
    assert resolve_backend(None) == "torch"
    assert resolve_backend("AUTO") == "auto"
    monkeypatch.setenv("DRNET_BACKEND", "tensorrt")
    with pytest.raises(DrnetError, match=r"\$DRNET_BACKEND 'tensorrt'"):
        resolve_backend(None)
    with pytest.raises(DrnetError, match="--backend 'tvm'"):
        resolve_backend("tvm")
    monkeypatch.setattr("drnet.speed.backends.backend_installed", lambda name: name == "torch")
    with pytest.raises(DrnetError, match=r"pip install 'drnet\[openvino\]'"):
        resolve_backend("openvino")


def test_cli_backend_flag_reaches_the_library(monkeypatch):
    from drnet.cli import build_parser

    monkeypatch.setenv("DRNET_BACKEND", "auto")  # restored afterwards
    args = build_parser().parse_args(
        ["segment", "predict", "x.png", "--weights", "w", "--backend", "torch"]
    )
    assert args.backend == "torch"
    assert os.environ["DRNET_BACKEND"] == "torch" and resolve_backend(None) == "torch"


BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(not backend_installed(name), reason=f"{name} not installed"),
    )
    for name in ("onnxruntime", "openvino")
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_segmentation_agrees_with_eager(segmenter, backend):
    x = torch.randn(2, 3, 45, 61)  # not multiples of 8: the crop after up-sampling
    fast = optimize_for_inference(segmenter, example_input=x, backend=backend)
    assert fast.core is not None and fast.choice.backend == backend
    assert fast.choice.name.startswith(backend)
    with torch.inference_mode():
        expected = segmenter(x)["out"]
        got = fast(x)["out"]
        labels = fast.labels(x)
        other = torch.randn(1, 3, 32, 40)  # another size: dynamic axes / another compile
        other_got = fast(other)["out"]
        other_expected = segmenter(other)["out"]
    rel = float((got - expected).abs().max() / expected.abs().max())
    assert rel < 1e-4, rel
    assert float((labels == expected.argmax(1)).float().mean()) >= 0.999
    assert float((other_got - other_expected).abs().max() / other_expected.abs().max()) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_classification_agrees_with_eager(backend):
    torch.manual_seed(1)
    model = drnet.create_model("drn_d_22", num_classes=10, channels=TINY).eval()
    x = torch.randn(3, 3, 64, 64)
    fast = build_candidate(model, backend)
    with torch.inference_mode():
        expected, got = model(x), fast(x)
        assert torch.equal(got.argmax(1), expected.argmax(1))  # top-1
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-4
        assert torch.allclose(fast.forward_map(x), model.forward_map(x), rtol=1e-4, atol=1e-5)
    twin = copy.deepcopy(fast)  # a copy opens its own session from the same export
    with torch.inference_mode():
        assert torch.allclose(twin(x), got, rtol=1e-5, atol=1e-6)


def test_far_slower_candidates_are_timed_once(monkeypatch):
    """A fake clock: each candidate's call advances it by that candidate's cost."""
    clock = [0.0]
    calls = {"fold": 0, "close": 0, "slow": 0}
    cost = {"fold": 1.0, "close": chooser.PRUNE - 0.05, "slow": chooser.PRUNE + 0.05}

    def candidate(name):
        def run():
            calls[name] += 1
            clock[0] += cost[name]

        return run

    monkeypatch.setattr(chooser.time, "perf_counter", lambda: clock[0])
    times = chooser.time_candidates({n: candidate(n) for n in cost}, rounds=4, budget_s=1e9)
    assert calls == {"fold": 5, "close": 5, "slow": 2}  # one warm-up each, then the rounds
    assert {n: len(t) for n, t in times.items()} == {"fold": 4, "close": 4, "slow": 1}
    assert chooser.pick(chooser.medians(times)) == "fold"
    # the budget ends the rounds after MIN_ROUNDS
    for name in calls:
        calls[name] = 0
    times = chooser.time_candidates({n: candidate(n) for n in cost}, rounds=5, budget_s=0.0)
    assert len(times["fold"]) == chooser.MIN_ROUNDS
