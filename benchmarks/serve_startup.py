"""How long `drnet serve` takes from its start to its first answer, fresh and with the cache.

Starts ``drnet serve --weights RUN ... --port 0`` as a user would, stamps every line it prints,
and once it says where it listens posts an example scene to each model
(``POST /api/predict?model=mN``); the figure is the time from starting the process to the last
model's first answer. "fresh" starts with an empty fast-path cache (every candidate built and
timed), "cached" starts again with the decisions of the fresh start. Medians of ``--runs``
starts of each, interleaved (fresh, cached, fresh, cached, ...).

    python benchmarks/serve_startup.py --weights demo-out/models/drn_d_22/classification \\
        --weights demo-out/models/drn_d_22/segmentation --runs 3 -o benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from drnet.atomic import atomic_write_json

EXAMPLE = Path(__file__).resolve().parents[1] / "drnet" / "assets" / "examples"
LISTENING = re.compile(r"open (http://\S+)")


def start_once(weights: list[str], cache: str, threads: int | None) -> dict:
    """One start: the stamped lines, when it listened and when each model first answered."""
    env = {**os.environ, "DRNET_CACHE_DIR": cache, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "drnet", "serve", "--port", "0"]
    for source in weights:
        command += ["--weights", source]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[tuple[float, str]] = []
    url = None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((round(time.perf_counter() - start, 2), line.rstrip()))
            if match := LISTENING.search(line):
                url = match.group(1).rstrip("/")
                break
        if url is None:
            printed = "\n".join(text for _, text in lines)
            raise SystemExit(f"drnet serve exited before listening:\n{printed}")
        image = (EXAMPLE / "scene-three-items.png").read_bytes()
        answers = {}
        for number in range(1, len(weights) + 1):
            request = urllib.request.Request(
                f"{url}/api/predict?model=m{number}", data=image,
                headers={"Content-Type": "image/png"}, method="POST",
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=120) as response:
                json.loads(response.read())
            answers[f"m{number}"] = round(time.perf_counter() - start, 2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "listening_s": lines[-1][0],
        "first_answers_s": answers,
        "ready_s": max(answers.values()),
        "lines": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", action="append", required=True, help="as drnet serve's")
    parser.add_argument("--runs", type=int, default=3, help="starts of each kind (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for serve")
    parser.add_argument(
        "-o", "--output-dir", "--out", dest="out", type=Path, default=None, metavar="DIR",
        help="folder for serve_startup.json (written atomically)",
    )  # fmt: skip
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {"fresh": [], "cached": []}
    for index in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            for kind in ("fresh", "cached"):
                result = start_once(args.weights, cache, args.threads)
                runs[kind].append(result)
                print(f"run {index + 1} {kind}: first answers at {result['first_answers_s']} s "
                      f"(listening at {result['listening_s']} s)", flush=True)  # fmt: skip
    summary = {
        kind: statistics.median(r["ready_s"] for r in results) for kind, results in runs.items()
    }
    print("\nlines of the first fresh start (seconds since the process started):")
    for stamp, line in runs["fresh"][0]["lines"]:
        print(f"  {stamp:6.2f}  {line}")
    print(f"\nmedian start to the last model's first answer: fresh {summary['fresh']:.1f} s, "
          f"cached {summary['cached']:.1f} s; load {load_before[0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"weights": args.weights, "median_ready_s": summary, "runs": runs,
                  "load_before": load_before, "load_after": os.getloadavg()}  # fmt: skip
        atomic_write_json(args.out / "serve_startup.json", record, indent=1)


if __name__ == "__main__":
    main()
