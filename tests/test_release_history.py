"""Reading the GitOps history in one pass: `CacheClone.files_at` and `history_of` on long histories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from deploy_support import git

from generator.commands.history import history_of
from generator.git_cache import CacheClone
from generator.layout import AppLayout


def clone_of(repo: Path) -> CacheClone:
    return CacheClone(repo, str(repo), (), "")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "gitops"
    root.mkdir()
    git("init", "-q", "-b", "main", cwd=root)
    return root


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    for path, text in files.items():
        target = repo / path
        if text is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).strip()


def test_files_at_reads_each_commits_file_and_says_what_is_missing(repo: Path) -> None:
    first = commit(repo, {"a.yaml": "one\n", "dir/b.yaml": ""}, "first")
    second = commit(repo, {"a.yaml": "two words\nand a line\n"}, "second")
    os.symlink("a.yaml", repo / "link.yaml")
    third = commit(repo, {}, "a link")

    found = clone_of(repo).files_at([(first, "a.yaml"), (second, "a.yaml"), (first, "missing.yaml"),
                                     (first, "dir"), (first, "dir/b.yaml"), (third, "link.yaml"), ("0" * 40, "a.yaml")])

    assert found == [b"one\n", b"two words\nand a line\n", None, None, b"", b"a.yaml", None]
    assert clone_of(repo).files_at([]) == []


def test_history_reads_the_releases_in_a_fixed_number_of_git_processes(repo: Path, tmp_path: Path) -> None:
    layout = AppLayout("shop", "production")
    commit(repo, {"README.md": "gitops\n"}, "Init")
    image = "reg/shop@sha256:" + "a" * 64
    for n in range(1, 31):  # 30 deploys, each also touching the overlay: a long history, in short
        image = f"reg/shop@sha256:{n:064x}"
        commit(repo, {layout.release: f"commit: '{n:040x}'\nimage: {image}\n",
                      f"{layout.overlay}/configmap.yaml": f"n: {n}\n"}, f"Deploy shop {n}")
    commit(repo, {layout.release: f"commit: '{30:040x}'\nimage: {image}\n",
                  layout.overlay_kustomization: "replicas:\n- {name: shop, count: 3}\n"}, "Scale shop")
    commit(repo, {f"{layout.overlay}/configmap.yaml": "n: changed\n"}, "Config shop")
    counter = tmp_path / "git-calls"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True, check=True).stdout.strip()
    wrapper.write_text(f"#!/bin/sh\necho \"$1\" >> '{counter}'\nexec '{real}' \"$@\"\n")
    wrapper.chmod(0o755)
    head = git("rev-parse", "HEAD", cwd=repo).strip()

    import git as gitpython

    gitpython.Git.GIT_PYTHON_GIT_EXECUTABLE = str(wrapper)
    try:
        entries = history_of(clone_of(repo), head, layout)
    finally:
        gitpython.Git.GIT_PYTHON_GIT_EXECUTABLE = real

    assert [e.kind for e in entries] == ["deploy"] * 30 + ["scale", "config"]
    assert [e.version for e in entries] == list(range(1, 33))
    assert entries[-3].image == image and entries[0].commit == f"{1:040x}"
    assert counter.read_text().split() == ["log", "cat-file", "cat-file"]  # not one or two per release
