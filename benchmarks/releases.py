"""`cupaas releases` on a long GitOps history: one `git log` and two batched reads, against one `git` call per
release (how it read them before; the baseline, run here on the same repo).

    .venv/bin/python benchmarks/releases.py [--releases 1000]

The repo is made with `git fast-import`: N deploys of one app (its release.yaml and a ConfigMap of its
overlay), every tenth followed by a config change.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.commands.history import history_of  # noqa: E402
from generator.git_cache import CacheClone  # noqa: E402
from generator.layout import AppLayout  # noqa: E402


def make_history(repo: Path, layout: AppLayout, releases: int) -> str:
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    stream: list[str] = []
    mark = 0

    def add(files: dict[str, str], message: str) -> None:
        nonlocal mark
        mark += 1
        stream.append(f"commit refs/heads/main\nmark :{mark}\n"
                      f"committer cupaas <c@example> {1_700_000_000 + mark} +0000\n"
                      f"data {len(message.encode())}\n{message}\n")
        if mark > 1:
            stream.append(f"from :{mark - 1}\n")
        for path, text in files.items():
            stream.append(f"M 100644 inline {path}\ndata {len(text.encode())}\n{text}\n")

    for n in range(1, releases + 1):
        image = f"reg/shop@sha256:{n:064x}"
        add({layout.release: f"commit: 'c{n:039x}'\nimage: {image}\n",
             f"{layout.overlay}/configmap.yaml": f"n: {n}\n"}, f"Deploy shop {n}")
        if n % 10 == 0:
            add({f"{layout.overlay}/configmap.yaml": f"n: {n} changed\n"}, f"Config shop {n}")
    subprocess.run(["git", "fast-import", "--quiet"], input="".join(stream).encode(), cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "main"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def one_call_per_release(repo: Path, head: str, layout: AppLayout) -> int:
    """The baseline: the log, then `git show <commit>:<release>` for each commit (the old reads)."""
    log = subprocess.run(["git", "log", "--first-parent", "--reverse", "--format=%H", head, "--", f"{layout.root}/"],
                         cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    for sha in log:
        subprocess.run(["git", "show", f"{sha}:{layout.release}"], cwd=repo, capture_output=True, check=True)
    return len(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=1000)
    args = parser.parse_args()
    layout = AppLayout("shop", "production")
    with tempfile.TemporaryDirectory(prefix="cupaas-bench-releases-") as tmp:
        repo = Path(tmp) / "gitops"
        head = make_history(repo, layout, args.releases)
        clone = CacheClone(repo, str(repo), (), "")
        started = time.monotonic()
        entries = history_of(clone, head, layout)
        batched = time.monotonic() - started
        started = time.monotonic()
        commits = one_call_per_release(repo, head, layout)
        baseline = time.monotonic() - started
    kinds = {k: sum(e.kind == k for e in entries) for k in sorted({e.kind for e in entries})}
    print(f"{len(entries)} releases ({kinds}) over {commits} GitOps commits")
    print(f"  cupaas releases (one log, two batched reads): {batched:6.2f} s")
    print(f"  baseline, one git call per release:           {baseline:6.2f} s (reads only, no parsing)")
    print(f"  ratio baseline / cupaas: {baseline / batched:.1f}")


if __name__ == "__main__":
    main()
