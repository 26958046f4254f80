"""Segmentation under torchrun: 2 processes (gloo, CPU) train DRNSeg and end with equal weights;
distributed evaluation equals single-process evaluation."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from helpers import make_list_dataset, run_torchrun

from drnet.engine import load_checkpoint
from drnet.tasks.segment import run_evaluation

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from drnet.engine import TrainConfig, train
    from drnet.tasks.segment import SegmentationTask, SegmentOptions, run_evaluation

    data, out = sys.argv[1], sys.argv[2]
    holder = {}

    class Task(SegmentationTask):
        def build_model(self):
            holder["model"] = super().build_model()
            return holder["model"]

    options = SegmentOptions(data_dir=data, channels=(8, 8, 16, 16, 32, 32, 32, 32),
                             crop_size=32, random_scale=1.5, random_rotate=10)
    config = TrainConfig(output_dir=out, epochs=2, batch_size=4, lr=0.05, workers=0,
                         device="cpu", progress=False, seed=5, bn_sync=True)
    train(Task.from_options(options), config)
    rank = int(os.environ["RANK"])
    torch.save(holder["model"].state_dict(), os.path.join(out, f"rank{rank}.pt"))
    run_evaluation(os.path.join(out, "checkpoint_last.pth"), data, "val",
                   os.path.join(out, "eval"), device="cpu", progress=False, print_table=False)
    """
)


@pytest.mark.slow
def test_two_process_segmentation_ranks_agree(tmp_path):
    data = make_list_dataset(tmp_path / "data", n_train=8, n_val=3, size=32)
    script = tmp_path / "ddp_segment.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    run_torchrun(str(script), [str(data), str(out)])
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    saved = load_checkpoint(out / "checkpoint_last.pth")
    assert saved["config"]["world_size"] == 2 and saved["config"]["batch_per_process"] == 2
    for k in r0:
        assert torch.equal(saved["model"][k], r0[k]), k
    # evaluation sharded over 2 processes == evaluation in one
    ddp_metrics = json.load(open(out / "eval/metrics.json"))
    single = run_evaluation(
        out / "checkpoint_last.pth",
        data,
        "val",
        tmp_path / "eval1",
        device="cpu",
        progress=False,
        print_table=False,
    )
    assert ddp_metrics["confusion_matrix"] == single["confusion_matrix"]
    assert ddp_metrics["num_images"] == 3
