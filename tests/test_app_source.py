"""AppSource against real git: an app repo pushed to a bare repo under tmp_path, served by a file:// URL.

Every test runs with an empty global git config (as on a fresh CI machine); commits name their author
through the environment, so nothing depends on this machine's git identity.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import git
import pytest

from generator.app_source import AppSource, FetchedCommit
from generator.errors import TransientError, UserError

BRANCH = "main"


@pytest.fixture(autouse=True)
def fresh_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user, no hooks, nothing from this machine's ~/.gitconfig or /etc/gitconfig."""
    config = tmp_path / "global.gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "App Developer")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "dev@app.test")


class Upstream:
    """A bare app repo and a work repo that commits and pushes to it, as a developer would."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "app.git"
        git.Repo.init(self.bare, bare=True).close()
        self.url = self.bare.as_uri()
        self.work = root / "work"
        self.work.mkdir()
        self.git = git.Git(self.work)
        self.git.init("--quiet", f"--initial-branch={BRANCH}")

    def commit(self, files: dict[str, str | None], message: str, branch: str = BRANCH,
               executable: tuple[str, ...] = ()) -> str:  # fmt: skip
        """Write ``files`` (None deletes), commit on ``branch``, push it; the new commit's id."""
        self.git.checkout("--quiet", "-B", branch)
        for rel, text in files.items():
            path = self.work / rel
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755 if rel in executable else 0o644)
        self.git.add("--all")
        self.git.commit("--quiet", "--no-gpg-sign", "-m", message)
        self.git.push("--quiet", self.url, f"HEAD:refs/heads/{branch}")
        return str(self.git.rev_parse("HEAD"))

    def plumbing(self, args: list[str], stdin: str) -> str:
        """Run a git plumbing command that reads ``stdin``; its output's first line."""
        done = subprocess.run(["git", *args], cwd=self.work, input=stdin.encode(), capture_output=True, check=True)
        return done.stdout.decode().strip()

    def symlink(self, rel: str, target: str, message: str) -> str:
        (self.work / rel).symlink_to(target)
        return self.commit({}, message)


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path)


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative POSIX path -> text), symlinks as ``-> target``."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[rel] = path.read_text()
    return found


def test_export_without_commit_writes_the_branch_head(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.py": "v1\n"}, "First")
    head = upstream.commit({"app.py": "v2\n", "lib/util.py": "u\n"}, "Second\n\nWith a body.")
    fetched = AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, tmp_path / "src")
    assert fetched == FetchedCommit(head, "Second", BRANCH)
    assert tree(tmp_path / "src") == {"app.py": "v2\n", "lib/util.py": "u\n"}


def test_export_older_commit_writes_that_commits_files_not_the_heads(upstream: Upstream, tmp_path: Path) -> None:
    old = upstream.commit({"app.py": "v1\n", "removed-later.txt": "r\n"}, "Old")
    upstream.commit({"app.py": "v2\n", "removed-later.txt": None, "added-later.txt": "a\n"}, "New")
    fetched = AppSource(upstream.url, tmp_path / "cache").export(BRANCH, old, tmp_path / "src")
    assert fetched.sha == old
    assert tree(tmp_path / "src") == {"app.py": "v1\n", "removed-later.txt": "r\n"}


def test_export_abbreviated_commit_resolves_to_the_full_id(upstream: Upstream, tmp_path: Path) -> None:
    old = upstream.commit({"app.py": "v1\n"}, "Old")
    upstream.commit({"app.py": "v2\n"}, "New")
    fetched = AppSource(upstream.url, tmp_path / "cache").export(BRANCH, old[:7].upper(), tmp_path / "src")
    assert (fetched.sha, fetched.subject) == (old, "Old")
    assert tree(tmp_path / "src") == {"app.py": "v1\n"}


def test_export_commit_of_another_branch_is_user_error(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.py": "v1\n"}, "Main")
    other = upstream.commit({"app.py": "feature\n"}, "Feature", branch="feature")
    expected = f"commit {other[:9]} is not on branch main of {upstream.url}: it exists"
    with pytest.raises(UserError, match=re.escape(expected)):
        AppSource(upstream.url, tmp_path / "cache").export(BRANCH, other[:9], tmp_path / "src")
    assert list((tmp_path / "src").iterdir()) == []


def test_export_unknown_commit_is_user_error(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.py": "v1\n"}, "Main")
    with pytest.raises(UserError, match=f"commit {'0' * 40} is not on branch main of .*: no commit with that id"):
        AppSource(upstream.url, tmp_path / "cache").export(BRANCH, "0" * 40, tmp_path / "src")


@pytest.mark.parametrize("commit", ["HEAD~1", "main", "--upload-pack=touch", "abc", "a" * 41, "g123456"])
def test_export_commit_that_is_not_a_hex_id_is_user_error(upstream: Upstream, tmp_path: Path, commit: str) -> None:
    upstream.commit({"app.py": "v1\n"}, "Main")
    with pytest.raises(UserError, match="is not a commit id"):
        AppSource(upstream.url, tmp_path / "cache").export(BRANCH, commit, tmp_path / "src")


def test_export_unknown_branch_is_user_error_naming_the_branches(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.py": "v1\n"}, "Main")
    upstream.commit({"app.py": "v2\n"}, "Dev", branch="develop")
    with pytest.raises(UserError, match=r"branch 'production' does not exist on .*its branches: develop, main$"):
        AppSource(upstream.url, tmp_path / "cache").export("production", None, tmp_path / "src")


def test_export_fetches_a_push_made_after_the_previous_export(upstream: Upstream, tmp_path: Path) -> None:
    source = AppSource(upstream.url, tmp_path / "cache")
    upstream.commit({"app.py": "v1\n"}, "First")
    source.export(BRANCH, None, tmp_path / "src1")
    second = upstream.commit({"app.py": "v2\n"}, "Second")
    by_head = source.export(BRANCH, None, tmp_path / "src2")
    by_id = source.export(BRANCH, second, tmp_path / "src3")
    assert (by_head.sha, by_id.sha) == (second, second)
    assert tree(tmp_path / "src2") == tree(tmp_path / "src3") == {"app.py": "v2\n"}


def test_export_logs_the_fetch_with_the_url_redacted(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.py": "v1\n"}, "First")
    lines: list[str] = []
    AppSource(upstream.url, tmp_path / "cache", lines.append).export(BRANCH, None, tmp_path / "src")
    assert lines == [f"       fetched {upstream.url}"]


def test_export_has_no_git_dir_and_keeps_the_executable_bit(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"bin/start": "#!/bin/sh\n", "app.py": "a\n"}, "Scripts", executable=("bin/start",))
    AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, tmp_path / "src")
    assert not (tmp_path / "src" / ".git").exists()
    modes = {rel: stat.S_IMODE((tmp_path / "src" / rel).stat().st_mode) & 0o111 for rel in ("bin/start", "app.py")}
    assert modes == {"bin/start": 0o111, "app.py": 0}


def test_export_ignores_gitattributes_that_would_change_files(upstream: Upstream, tmp_path: Path) -> None:
    attributes = "tests export-ignore\nversion.txt export-subst\n*.sh text eol=crlf\n"
    files = {".gitattributes": attributes, "tests/test_a.py": "t\n", "version.txt": "$Format:%H$\n",
             "run.sh": "a\nb\n"}  # fmt: skip
    upstream.commit(dict(files), "Attributes")
    AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, tmp_path / "src")
    assert tree(tmp_path / "src") == files


def test_export_keeps_a_symlink_that_stays_inside(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"config/base.yaml": "x: 1\n"}, "Config")
    upstream.symlink("current.yaml", "config/base.yaml", "Link")
    AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, tmp_path / "src")
    assert tree(tmp_path / "src") == {"config/base.yaml": "x: 1\n", "current.yaml": "-> config/base.yaml"}


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside"])
def test_export_refuses_a_symlink_leaving_the_repo(upstream: Upstream, tmp_path: Path, target: str) -> None:
    upstream.commit({"a/app.py": "a\n"}, "App")
    upstream.symlink("a/escape", target, "Escape")
    with pytest.raises(UserError, match=r"cannot be exported: .*'a/escape'"):
        AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, tmp_path / "src")
    assert list((tmp_path / "src").iterdir()) == []


def test_export_refuses_a_planted_git_folder(upstream: Upstream, tmp_path: Path) -> None:
    # A tree git itself would never commit from a working tree: made by hand and pushed as it is.
    blob = upstream.plumbing(["hash-object", "-w", "--stdin"], "[core]\n")
    inner = upstream.plumbing(["mktree"], f"100644 blob {blob}\tconfig\n")
    root = upstream.plumbing(["mktree"], f"040000 tree {inner}\t.git\n")
    commit = upstream.plumbing(["commit-tree", root, "-m", "Planted"], "")
    upstream.git.push("--quiet", upstream.url, f"{commit}:refs/heads/{BRANCH}")
    with pytest.raises(UserError, match=r"cannot be exported: error: invalid path '\.git/config'"):
        AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, tmp_path / "src")
    assert list((tmp_path / "src").iterdir()) == []


def test_export_into_non_empty_dest_is_refused(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.py": "v1\n"}, "First")
    dest = tmp_path / "src"
    dest.mkdir()
    (dest / "leftover.txt").write_text("old\n")
    with pytest.raises(ValueError, match="is not empty"):
        AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, dest)
    assert tree(dest) == {"leftover.txt": "old\n"}


def test_export_of_empty_repo_is_user_error(upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(f"{upstream.url} has no branches yet")):
        AppSource(upstream.url, tmp_path / "cache").export(BRANCH, None, tmp_path / "src")


@pytest.mark.parametrize(
    ("url", "error", "shown"),
    [
        ("file:///nonexistent/app.git", UserError, "file:///nonexistent/app.git"),
        ("http://deployer:s3cr3t-t0ken@127.0.0.1:1/app.git", TransientError, "http://deployer:***@127.0.0.1:1/app.git"),
    ],
)
def test_export_from_unreachable_remote_names_the_redacted_url(
    tmp_path: Path, url: str, error: type[Exception], shown: str
) -> None:
    lines: list[str] = []
    with pytest.raises(error) as raised:
        AppSource(url, tmp_path / "cache", lines.append).export(BRANCH, None, tmp_path / "src")
    assert shown in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
    assert lines == []


def test_concurrent_exports_of_one_repo_each_get_their_commit(upstream: Upstream, tmp_path: Path) -> None:
    commits = [upstream.commit({"app.py": f"v{n}\n"}, f"Commit {n}") for n in range(4)]
    source = AppSource(upstream.url, tmp_path / "cache")
    with ThreadPoolExecutor(max_workers=4) as pool:
        fetched = list(pool.map(lambda n: source.export(BRANCH, commits[n], tmp_path / f"src{n}"), range(4)))
    assert [f.sha for f in fetched] == commits
    assert [tree(tmp_path / f"src{n}") for n in range(4)] == [{"app.py": f"v{n}\n"} for n in range(4)]
