"""The demo classifier's training throughput: today's engine against the engine before it.

Everything a training step of ``drnet demo``'s classifier costs on the CPU is timed, the data
pipeline included (scene drawing, per-sample seeding, collation), in interleaved rounds within one
process, and reported as medians of images per second with ratios against ``before``:

* ``before``: the engine as it was: every sample seeded with ``torch.manual_seed`` (which also
  queues a lazy seed of every accelerator's generator), NCHW, the loss read back every step,
  64 px scenes;
* ``engine``: today's engine on the same 64 px scenes: the CPU generator seeded per sample, the
  layout measured (:func:`drnet.engine.layout.choose_channels_last`), the loss read back every
  ``--log-interval`` steps;
* ``demo``: today's engine on the demo's 48 px scenes (the recipe's canvas).

The scenes are drawn once before timing and reused, as the demo reuses one set of training scenes
every epoch, so each round measures what epochs 2 and later cost.

    python benchmarks/demo_training.py --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from drnet.data.scenes import ClassificationScenes
from drnet.demo.data import ClassificationSceneData
from drnet.demo.recipes import default_recipe
from drnet.engine.data import SeededDataset, sample_seed
from drnet.engine.layout import choose_channels_last, cpu_name_and_flags
from drnet.models import create_model

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class TorchSeededDataset(SeededDataset):
    """The engine's per-sample seeding as it was: ``torch.manual_seed`` for every sample."""

    def _get(self, index: int):
        torch.manual_seed(sample_seed(self.seed, self.epoch, index))
        return self.dataset[index]


@dataclass
class Setting:
    name: str
    canvas: int
    legacy_seeding: bool
    measured_layout: bool
    read_every: int


SETTINGS = (
    Setting("before", 64, True, False, 1),
    Setting("engine", 64, False, True, 10),
    Setting("demo", 48, False, True, 10),
)


class Runner:
    """One setting's model, optimizer and loader; :meth:`run` trains ``steps`` steps."""

    def __init__(self, setting: Setting, batch: int, steps: int, seed: int) -> None:
        recipe = default_recipe()
        torch.manual_seed(seed)
        self.setting = setting
        scenes = ClassificationScenes(
            "train", -(-batch * steps // 10) * 10, canvas=setting.canvas, seed=seed
        )
        data = ClassificationSceneData(scenes, MEAN, STD, train=True, rounds=1)
        wrap = TorchSeededDataset if setting.legacy_seeding else SeededDataset
        self.dataset = wrap(data, seed=seed)
        self.loader = DataLoader(self.dataset, batch_size=batch, shuffle=True, drop_last=True)
        self.model = create_model(
            "drn_d_22", num_classes=10, channels=recipe.model_channels("drn_d_22")
        )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4
        )
        self.channels_last = False
        if setting.measured_layout:
            example = torch.randn(batch, 3, setting.canvas, setting.canvas)
            self.channels_last, _ = choose_channels_last(
                self.model, self._loss, example, torch.device("cpu"), use_cache=False
            )
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.run()  # draw every scene once (the cache of the demo's reused scenes)

    def _loss(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        target = torch.zeros(len(x), dtype=torch.long)
        return nn.functional.cross_entropy(model(x), target, label_smoothing=0.1)

    def run(self) -> float:
        """Seconds for one pass over the loader (one ``steps``-step epoch)."""
        self.dataset.epoch += 1
        start = time.perf_counter()
        pending = []
        for i, (x, y) in enumerate(self.loader):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(self.model(x), y, label_smoothing=0.1)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            pending.append(loss.detach())
            if (i + 1) % self.setting.read_every == 0:
                torch.stack(pending).tolist()  # the host sync of a log interval
                pending.clear()
        if pending:
            torch.stack(pending).tolist()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    name, flags = cpu_name_and_flags()
    print(f"cpu: {name}; flags: {flags}; torch {torch.__version__}, {args.threads} thread(s)")
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    runners = [Runner(s, args.batch_size, args.steps, args.seed) for s in SETTINGS]
    for runner in runners:
        runner.run()  # warm-up round, untimed
    seconds: dict[str, list[float]] = {r.setting.name: [] for r in runners}
    for _ in range(args.rounds):
        for runner in runners:  # interleaved: a change of load hits every setting alike
            seconds[runner.setting.name].append(runner.run())
    images = args.batch_size * args.steps
    base = images / statistics.median(seconds["before"])
    print(f"{args.rounds} rounds of {args.steps} steps of batch {args.batch_size}, medians:")
    print("| setting | canvas | layout | images/s | vs before |")
    print("|---|---|---|---|---|")
    for runner in runners:
        rate = images / statistics.median(seconds[runner.setting.name])
        layout = "channels_last" if runner.channels_last else "NCHW"
        print(
            f"| {runner.setting.name} | {runner.setting.canvas} px | {layout} | {rate:.1f} | "
            f"{rate / base:.2f}x |"
        )
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
