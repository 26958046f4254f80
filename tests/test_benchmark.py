"""``drnet benchmark`` in a tiny configuration: it runs and its figures hang together."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import TINY_ARG, TINY_CHANNELS

from drnet.cli import main
from drnet.speed.benchmark import BenchmarkConfig, markdown_table, run_benchmark


def test_benchmark_cli_inference_tiny(tmp_path, capsys) -> None:
    code = main(
        ["benchmark", "--channels", TINY_ARG, "--size", "32", "--repeats", "1",
         "--num-classes", "3", "--out", str(tmp_path), "--name", "quick", "--quiet", "--no-peak"]
    )  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "quick.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["eager", "fast"]
    assert rows[1]["labels_equal"] == 1.0 and rows[1]["max_rel_diff"] < 1e-4
    assert "| inference | fast |" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_cli_both_modes_tiny(tmp_path, capsys) -> None:
    code = main(
        ["benchmark", "--model", "drn_d_22", "--channels", TINY_ARG,
         "--size", "32x48", "--batch", "2", "--mode", "both", "--repeats", "1",
         "--num-classes", "4", "--out", str(tmp_path), "--name", "tiny", "--quiet",
         "--variants", "eager,fast,fast_nchw",
         "--train-variants", "eager,channels_last,grad_checkpoint"]
    )  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert (tmp_path / "tiny.md").read_text().startswith("**drn_d_22 segmentation")
    rows = {(r["mode"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {
        ("inference", "eager"),
        ("inference", "fast"),
        ("inference", "fast_nchw"),
        ("training", "eager"),
        ("training", "channels_last"),
        ("training", "grad_checkpoint"),
    }
    assert result["conv_peak"]["peak"] > 0 and result["gflop_per_img"] > 0
    assert rows[("inference", "eager")]["speedup"] == 1.0
    for (mode, _variant), row in rows.items():
        assert row["ms_per_img"] > 0 and row["gflops"] > 0
        if mode == "inference":
            assert row["max_rel_diff"] < 1e-4 and row["labels_equal"] == 1.0
    assert rows[("training", "grad_checkpoint")]["max_rel_diff"] < 1e-5
    assert "BN buffers max rel diff 0.0e+00" in rows[("training", "grad_checkpoint")]["note"]
    assert "| inference | fast |" in capsys.readouterr().out


def test_benchmark_classification_library_call(caplog) -> None:
    config = BenchmarkConfig(
        model="drn_c_26",
        task="classification",
        height=32,
        width=32,
        batch=1,
        num_classes=10,
        channels=TINY_CHANNELS,
        repeats=1,
        inference_variants=("eager", "fast_channels_last"),
        measure_peak=False,
        measure_memory=False,
    )
    with caplog.at_level(logging.INFO, logger="drnet"):
        result = run_benchmark(config)
    assert [r["variant"] for r in result["rows"]] == ["eager", "fast_channels_last"]
    # without a ``log`` callback the progress goes to the library's logger
    progress = [r.getMessage() for r in caplog.records if r.name == "drnet.speed.benchmark"]
    assert "warm-up eager" in progress and "round 1/1" in progress
    assert result["rows"][1]["max_rel_diff"] < 1e-4
    assert "not measured" in markdown_table(result)


def test_benchmark_rejects_unknown_variant(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["benchmark", "--variants", "eager,warp"])
    assert "unknown variant" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_benchmark_training_amp_on_gpu(tmp_path) -> None:
    config = BenchmarkConfig(
        model="drn_d_22", channels=TINY_CHANNELS, height=64, width=64, batch=2, num_classes=4,
        mode="training", training_variants=("eager", "amp"), repeats=1, device="cuda",
    )  # fmt: skip
    rows = run_benchmark(config)["rows"]
    assert [r["variant"] for r in rows] == ["eager", "amp"]


@pytest.mark.parametrize("native", [False, True])
def test_training_amp_variant_on_cpu_needs_native_bf16(monkeypatch, caplog, native) -> None:
    """`--train-variants eager,amp` times bf16 autocast on a CPU with native bf16, and skips it
    with a note elsewhere (capability mocked)."""
    import drnet.engine.precision as precision

    flags = frozenset({"avx512_bf16"} if native else {"avx2"})
    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(precision, "onednn_bf16", lambda: True)  # as if not capped
    config = BenchmarkConfig(
        model="drn_d_22", task="classification", height=32, width=32, batch=2, num_classes=4,
        channels=TINY_CHANNELS, repeats=1, mode="training",
        training_variants=("eager", "amp", "bf16"), measure_peak=False, measure_memory=False,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="drnet"):
        result = run_benchmark(config)
    variants = [r["variant"] for r in result["rows"]]
    assert variants == (["eager", "amp", "bf16"] if native else ["eager"])
    assert ("amp skipped: this CPU has no native bfloat16" in caplog.text) is not native
    assert ("bf16 skipped: this CPU has no native bfloat16" in caplog.text) is not native


@pytest.mark.parametrize("native", [False, True])
def test_bf16_inference_variant_and_its_peak(monkeypatch, native) -> None:
    """`--variants eager,bf16` times the bf16 fast path beside eager fp32 (labels compared), says
    when bf16 is emulated, and measures a bf16 conv peak only where bf16 is native (mocked)."""
    import drnet.engine.precision as precision

    flags = frozenset({"avx512_bf16"} if native else {"avx2"})
    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(precision, "onednn_bf16", lambda: True)  # as if not capped
    config = BenchmarkConfig(
        model="drn_d_22", task="classification", height=32, width=32, batch=2, num_classes=4,
        channels=TINY_CHANNELS, repeats=1, inference_variants=("eager", "bf16"),
        measure_memory=False,
    )  # fmt: skip
    monkeypatch.setattr(
        "drnet.speed.benchmark.conv_peak_gflops",
        lambda device, repeats=5: {"nchw": 10.0, "channels_last": 20.0, "peak": 20.0,
                                   **({"bf16": 40.0} if native else {})},
    )  # fmt: skip
    result = run_benchmark(config)
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"eager", "bf16"} and rows["bf16"]["note"].endswith("bf16" if native else
                                                                            "native bf16)")
    assert rows["bf16"]["max_rel_diff"] < 0.05
    bf16_peak = 40.0 if native else 20.0
    assert rows["bf16"]["pct_peak"] == pytest.approx(100 * rows["bf16"]["gflops"] / bf16_peak)
    assert rows["eager"]["pct_peak"] == pytest.approx(100 * rows["eager"]["gflops"] / 20.0)


def test_benchmark_has_a_winograd_row_agreeing_with_eager() -> None:
    config = BenchmarkConfig(
        model="drn_d_22",
        task="segmentation",
        height=48,
        width=64,
        batch=1,
        num_classes=5,
        channels=(16, 16, 32, 64, 64, 64, 64, 64),
        repeats=1,
        inference_variants=("eager", "winograd"),
        measure_peak=False,
        measure_memory=False,
    )
    rows = {r["variant"]: r for r in run_benchmark(config)["rows"]}
    assert "winograd" in rows["winograd"]["note"]
    assert rows["winograd"]["max_rel_diff"] < 1e-4 and rows["winograd"]["labels_equal"] == 1.0
