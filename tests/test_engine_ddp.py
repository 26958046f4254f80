"""Two-process DDP (gloo, CPU) through torchrun: ranks agree, and match one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import run_torchrun

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    from torch.utils.data import Dataset
    from drnet.engine import Task, TrainConfig, train

    class Points(Dataset):
        def __init__(self, n=32):
            g = torch.Generator().manual_seed(1)
            self.y = torch.arange(n) % 2
            self.x = torch.randn(n, 8, generator=g) + 2.0 * self.y[:, None].float()
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):
            return self.x[i] + 0.3 * torch.randn(8), self.y[i]

    class Toy(Task):
        name = "toy"
        def build_model(self):
            return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        def train_dataset(self):
            return Points()
        def loss(self, output, target):
            return nn.functional.cross_entropy(output, target)

    out = sys.argv[1]
    model_holder = {}
    orig = Toy.build_model
    def build(self):
        model_holder["m"] = orig(self)
        return model_holder["m"]
    Toy.build_model = build
    cfg = TrainConfig(output_dir=out, epochs=2, batch_size=8, lr=0.1, workers=0,
                      device="cpu", progress=False, seed=3)
    train(Toy(), cfg)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(model_holder["m"].state_dict(), os.path.join(out, f"rank{rank}.pt"))
    """
)


@pytest.mark.slow
def test_two_process_ddp_ranks_agree_and_match_single_process(tmp_path):
    script = tmp_path / "ddp_toy.py"
    script.write_text(SCRIPT)
    run_torchrun(str(script), [str(tmp_path / "ddp")])
    r0 = torch.load(tmp_path / "ddp/rank0.pt")
    r1 = torch.load(tmp_path / "ddp/rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # the global batch of 8 is split 4 + 4: same samples, same mean gradient as one process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single")], env=env, check=True, timeout=120
    )
    single = torch.load(tmp_path / "single/rank0.pt")
    for k in r0:
        torch.testing.assert_close(r0[k], single[k], rtol=1e-5, atol=1e-6)


STOP_SCRIPT = SCRIPT.replace(
    "\ntrain(Toy(), cfg)\n",
    textwrap.dedent(
        """
        import json
        calls = []
        def should_stop():  # only rank 1 asks, after its 3rd iteration
            calls.append(1)
            return int(os.environ["RANK"]) == 1 and len(calls) >= 3
        cfg.resume = "auto" if len(sys.argv) > 2 else None
        cfg.log_interval = 1  # under torchrun the stop votes travel with the syncs
        summary = train(Toy(), cfg, should_stop=None if cfg.resume else should_stop)
        keys = ("iterations", "stop_reason", "samples_seen")
        with open(os.path.join(out, f"summary{os.environ['RANK']}.json"), "w") as f:
            json.dump({k: summary[k] for k in keys}, f)
        """
    ),
)
assert STOP_SCRIPT != SCRIPT


@pytest.mark.slow
def test_two_process_stop_is_agreed_and_resumes_bit_identically(tmp_path):
    """One rank's should_stop() stops both after the same iteration; --resume auto then ends
    with the weights of an uninterrupted two-process run."""
    import json

    from drnet.engine import load_checkpoint

    script = tmp_path / "ddp_stop.py"
    script.write_text(STOP_SCRIPT)
    run_torchrun(str(script), [str(tmp_path / "ref"), "resume"])  # no checkpoint: a full run
    run_torchrun(str(script), [str(tmp_path / "run")])
    for rank in (0, 1):
        summary = json.loads((tmp_path / f"run/summary{rank}.json").read_text())
        assert summary == {"iterations": 3, "stop_reason": "should_stop", "samples_seen": 24}
    state = load_checkpoint(tmp_path / "run/checkpoint_last.pth")
    assert (state["epoch"], state["iteration"]) == (0, 3)
    run_torchrun(str(script), [str(tmp_path / "run"), "resume"])
    ref, out = torch.load(tmp_path / "ref/rank0.pt"), torch.load(tmp_path / "run/rank0.pt")
    for k in ref:
        assert torch.equal(ref[k], out[k]), k
