"""Print drnet's package import graph and its longest functions (for reviews of the layout).

    python scripts/code_report.py [--root drnet] [--top 10]

Import graph: one line per subpackage (``drnet.tasks`` ...) with the drnet subpackages it imports
(module-level and function-level imports alike). Longest functions: lines from ``def`` to the end of
the body, the ``top`` longest.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path


def _package_of(module: str, depth: int = 2) -> str:
    return ".".join(module.split(".")[:depth])


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".")[: -node.level]
                found.add(".".join([*base, node.module or ""]).rstrip("."))
            elif node.module:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    ours = {name for name in found if name == "drnet" or name.startswith("drnet.")}
    return {name for name in ours if not name.split(".")[-1].startswith("__")}  # no __version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="drnet", help="package folder (default: drnet)")
    parser.add_argument("--top", type=int, default=10, help="how many long functions (10)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    graph: dict[str, set[str]] = defaultdict(set)
    lengths = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        source = _package_of(module)
        for name in _imports(tree, module):
            target = _package_of(name)
            if target != source and target != "drnet":
                graph[source].add(target)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                lengths.append((lines, where))
    print("import graph (subpackage -> drnet subpackages it imports):")
    for source in sorted(graph):
        print(f"  {source} -> {', '.join(sorted(graph[source]))}")
    print(f"\n{args.top} longest functions (lines):")
    for lines, where in sorted(lengths, reverse=True)[: args.top]:
        print(f"  {lines:4d}  {where}")


if __name__ == "__main__":
    main()
