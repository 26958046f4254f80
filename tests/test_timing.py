"""The one timing helper (drnet.timing) and the one machine-info helper (drnet.machine): what
they return, and that the old homes re-export them."""

from __future__ import annotations

import math
import time

import torch

from drnet import machine, timing


def test_measure_times_the_repeats_after_the_warmup() -> None:
    calls = []
    times = timing.measure(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(times) == 4 and all(t >= 0 for t in times)


def test_measure_gives_up_on_a_call_slower_than_the_limit() -> None:
    calls = []

    def slow() -> None:
        calls.append(1)
        time.sleep(0.02)

    assert timing.measure(slow, repeats=5, warmup=1, give_up_after=0.001) == [math.inf]
    assert len(calls) == 1  # the (timed) warm-up call already ends it
    assert timing.median([3.0, 1.0, 2.0]) == 2.0


def test_stage_clock_sums_each_stage_against_the_budget() -> None:
    clock = timing.StageClock(budget_s=100.0, start=time.monotonic() - 10.0)
    assert 10.0 <= clock.elapsed() < 100.0 and clock.left() <= 90.0
    for _ in range(2):
        with clock.stage("probe"):
            time.sleep(0.001)
    try:
        with clock.stage("failing"):
            raise ValueError
    except ValueError:
        pass
    assert set(clock.stages) == {"probe", "failing"} and clock.stages["probe"] >= 0.002
    with timing.Stopwatch() as watch:
        time.sleep(0.001)
    assert watch.seconds >= 0.001
    assert timing.process_age() >= 0.0


def test_machine_info_names_the_cpu_threads_load_and_versions() -> None:
    name, flags = machine.cpu_name_and_flags()
    assert isinstance(name, str) and set(flags.split()) <= set(machine.CPU_FLAGS)
    assert machine.cpu_signature() == f"{name} [{flags}]"
    load = machine.load_average()
    assert load is None or (len(load) == 3 and all(v >= 0 for v in load))
    cpu = torch.device("cpu")
    device = machine.device_info(cpu)
    assert device["type"] == "cpu" and device["torch_threads"] == torch.get_num_threads()
    assert set(machine.versions()) == {"drnet", "python", "torch", "torchvision", "numpy", "pillow"}
    info = machine.machine_info(cpu)
    assert info["cpu"] == name and info["torch"] == torch.__version__


def test_the_old_homes_re_export_the_helpers() -> None:
    from drnet.engine import layout
    from drnet.speed import timing as speed_timing

    assert speed_timing.measure is timing.measure and speed_timing.median is timing.median
    assert layout.cpu_name_and_flags is machine.cpu_name_and_flags
    assert layout.cpu_signature is machine.cpu_signature
