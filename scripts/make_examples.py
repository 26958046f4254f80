"""Write the example images ``drnet serve`` offers (``drnet/assets/examples/``).

Three scenes rendered from the packaged assets (Fashion-MNIST *test* items on the CC0 textures,
see ``drnet/assets/LICENSES.md``) exactly as the demo renders its val scenes: two single-item
classification scenes at the demo's 64 px and one multi-item segmentation scene at 128 px.
Deterministic: run it again and the files are the same.

    python scripts/make_examples.py [--out drnet/assets/examples]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from drnet.data.scenes import ClassificationScenes, SegmentationScenes

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "drnet" / "assets" / "examples"
README = """# Example images for `drnet serve`

Made by `scripts/make_examples.py` from the packaged assets (Fashion-MNIST test items, MIT
licence, on CC0 textures: see `../LICENSES.md`), rendered as the demo renders its val scenes:

{lines}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    single = ClassificationScenes(
        "val", 20, canvas=64, scale=(1.0, 1.6), background="texture", seed=0, source=None
    )
    several = SegmentationScenes(
        "val", 4, canvas=128, items=(3, 3), scale=(1.0, 1.6), background="texture", seed=0,
        source=None,
    )  # fmt: skip
    names = single.classes
    lines = []
    for index in (5, 8):  # scene i shows class i % 10
        scene = single.render(index)
        name = f"scene-{names[index % 10]}.png"
        Image.fromarray(scene.image).save(args.out / name)
        lines.append(f"- `{name}`: one {names[index % 10]}, 64 x 64 (classification val scene)")
    scene = several.render(1)
    Image.fromarray(scene.image).save(args.out / "scene-three-items.png")
    lines.append("- `scene-three-items.png`: three items, 128 x 128 (segmentation val scene)")
    (args.out / "README.md").write_text(README.format(lines="\n".join(lines)), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
