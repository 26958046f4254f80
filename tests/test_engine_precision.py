"""Mixed precision on the CPU: bf16 autocast where the CPU has native bf16, float32 with a one-line
note where it has not (the capability check is mocked: both paths run on any CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine import ToyTask, assert_same, config, weights

import drnet.engine.precision as precision
from drnet.engine import TrainingInterrupted, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cpu_flags(monkeypatch):
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision, "onednn_bf16", lambda: True)  # as if not capped

    return set_flags


class DtypeSpy(ToyTask):
    """Records the dtype of the model output the loss sees."""

    def __init__(self, hook=None) -> None:
        super().__init__(hook)
        self.dtypes: set[torch.dtype] = set()

    def loss(self, output, target):
        self.dtypes.add(output.dtype)
        return super().loss(output.float(), target)


def test_capability_check_reads_the_cpu_flags(cpu_flags):
    cpu_flags("avx2", "fma")
    assert not precision.native_bf16("cpu") and precision.amp_dtype("cpu") is None
    assert "no native bfloat16" in precision.amp_unavailable_reason("cpu")
    cpu_flags("avx512f", "avx512_bf16")
    assert precision.native_bf16("cpu") and precision.amp_dtype("cpu") is torch.bfloat16
    assert precision.amp_unavailable_reason("cpu") is None
    cpu_flags("amx_bf16")
    assert precision.native_bf16("cpu")


def test_bf16_is_not_native_where_onednn_is_capped_below_it(cpu_flags, monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX2 on a CPU with avx512_bf16: oneDNN emulates bf16, so float32
    cpu_flags("avx512f", "avx512_bf16")
    monkeypatch.setattr(precision, "onednn_bf16", lambda: False)
    assert not precision.native_bf16("cpu") and precision.amp_dtype("cpu") is None
    assert precision.inference_dtype("auto", "cpu") == (torch.float32, None)


def test_bf16_training_on_a_cpu_with_native_bf16(tmp_path, cpu_flags):
    cpu_flags("avx512_bf16")
    task = DtypeSpy()
    train(task, config(tmp_path, amp=True, epochs=1))
    assert task.dtypes == {torch.bfloat16}
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["amp_dtype"] == "bfloat16"


def test_without_native_bf16_amp_falls_back_with_one_line(tmp_path, cpu_flags, caplog):
    cpu_flags("avx2")
    task = DtypeSpy()
    with caplog.at_level("WARNING", logger="drnet"):
        train(task, config(tmp_path, amp=True, epochs=1))
    assert task.dtypes == {torch.float32}
    notes = [r.getMessage() for r in caplog.records if "--amp ignored" in r.getMessage()]
    assert len(notes) == 1 and "no native bfloat16" in notes[0] and "\n" not in notes[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["amp_dtype"] is None


def test_bf16_training_resumes_bit_identically(tmp_path, cpu_flags):
    cpu_flags("avx512_bf16")
    train(DtypeSpy(), config(tmp_path / "a", amp=True))

    def crash(calls: int) -> None:
        if calls == 5:  # mid-run: the resume starts from the last epoch checkpoint
            raise TrainingInterrupted("simulated crash")

    with pytest.raises(TrainingInterrupted):
        train(DtypeSpy(crash), config(tmp_path / "b", amp=True))
    train(DtypeSpy(), config(tmp_path / "b", amp=True, resume="auto"))
    assert_same(
        weights(tmp_path / "a/run/checkpoint_last.pth"),
        weights(tmp_path / "b/run/checkpoint_last.pth"),
    )
