"""Lays the package out in the build tree as a wheel installs it: mx/'s Python files and a
mx-<version>.dist-info whose entry_points.txt comes from pyproject.toml, so importlib.metadata
finds the vLLM plugin entry points when the tests put the tree on sys.path.

usage: build_tree.py SOURCE_DIR DEST_DIR STAMP"""

import shutil
import sys
import tomllib
from pathlib import Path


def main(src: Path, dest: Path, stamp: Path) -> None:
    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    pkg = dest / "mx"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in (src / "mx").iterdir():
        if f.suffix in (".py", ".pyi") or f.name == "py.typed":
            shutil.copyfile(f, pkg / f.name)
    for old in dest.glob("mx-*.dist-info"):
        shutil.rmtree(old)
    info = dest / f"mx-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, points in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in points.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    stamp.write_text("ok\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
