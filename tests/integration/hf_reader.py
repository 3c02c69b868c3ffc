"""What huggingface_hub's offline readers do with a cache, written from the spec
(shared hf-hub.md, "What readers do offline"), so tests can check that our cache is
readable the same way. The real huggingface_hub is not installable here (no PyPI)."""

from __future__ import annotations

import os
import re
from pathlib import Path

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def repo_folder(repo_id: str, repo_type: str = "model") -> str:
    return f"{repo_type}s--" + repo_id.replace("/", "--")


def try_to_load_from_cache(cache: str, repo_id: str, filename: str, revision: str = "main",
                           repo_type: str = "model"):
    """Path of the cached file, the string '_CACHED_NO_EXIST', or None."""
    repo = Path(cache) / repo_folder(repo_id, repo_type)
    if not repo.is_dir():
        return None
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text()
    elif _COMMIT.match(revision):
        commit = revision
    else:
        return None
    if (repo / ".no_exist" / commit / filename).is_file():
        return "_CACHED_NO_EXIST"
    path = repo / "snapshots" / commit / filename
    return str(path) if path.is_file() else None


def snapshot_path_offline(cache: str, repo_id: str, revision: str = "main") -> str | None:
    """snapshot_download(local_files_only=True)."""
    repo = Path(cache) / repo_folder(repo_id)
    ref = repo / "refs" / revision
    commit = ref.read_text() if ref.is_file() else revision
    snap = repo / "snapshots" / commit
    return str(snap) if snap.is_dir() else None


def scan_cache_warnings(cache: str) -> list[str]:
    """The corruptions scan_cache_dir() reports; an empty list means a clean scan."""
    warnings = []
    for repo in sorted(Path(cache).iterdir()):
        # Exactly what huggingface_hub skips; anything else at the root must be a repo.
        if repo.name in (".locks", "CACHEDIR.TAG", ".DS_Store"):
            continue
        if not repo.is_dir():
            warnings.append(f"{repo}: repo path is not a directory")
            continue
        if "--" not in repo.name:
            warnings.append(f"{repo}: repo folder name without '--'")
            continue
        snaps = repo / "snapshots"
        if not snaps.is_dir():
            warnings.append(f"{repo}: no snapshots folder")
            continue
        for snap in snaps.iterdir():
            if not snap.is_dir():
                warnings.append(f"{snap}: file directly in snapshots/")
                continue
            for dirpath, _, files in os.walk(snap):
                for f in files:
                    p = Path(dirpath) / f
                    if not p.exists():
                        warnings.append(f"{p}: broken symlink")
        refs = repo / "refs"
        if refs.is_dir():
            for dirpath, _, files in os.walk(refs):
                for f in files:
                    commit = (Path(dirpath) / f).read_text()
                    if not (snaps / commit).is_dir():
                        warnings.append(f"{dirpath}/{f}: ref to a commit with no snapshot")
    return warnings
