"""GitOpsRepo against real git: bare repos under tmp_path served by file:// URLs, real clones and pushes.

Every test runs with an empty global git config (as on a fresh CI machine); the forge is a recording
fake of the ForgeClient protocol (the HTTP forge clients are tested in test_forges.py).
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import git
import pytest

from generator.errors import CupaasError, TransientError, UserError
from generator.forges import PullRequest
from generator.gitops_repo import GitOpsRepo, Published, redact

BRANCH = "main"
REVIEW = "cupaas/tasks-production"
APP_FILE = "apps/tasks/overlays/production/kustomization.yaml"
AUTHOR = ("cupaas bot", "bot@cupaas.test")


@dataclass(frozen=True)
class Commit:
    sha: str
    parents: tuple[str, ...]
    message: str
    author: tuple[str, str]
    committer: tuple[str, str]


@dataclass
class RecordingForge:
    """ForgeClient that records each call and answers like a forge holding one pull request."""

    calls: list[dict[str, str]] = field(default_factory=list)

    def open_or_update_pull_request(self, head: str, base: str, title: str, body: str) -> PullRequest:
        self.calls.append({"head": head, "base": base, "title": title, "body": body})
        return PullRequest(number=7, url="https://forge.test/acme/gitops/pull/7", created=len(self.calls) == 1)


@pytest.fixture(autouse=True)
def fresh_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user, no hooks, nothing from this machine's ~/.gitconfig or /etc/gitconfig."""
    config = tmp_path / "global.gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return config


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    path = tmp_path / "gitops.git"
    git.Repo.init(path, bare=True).close()
    return path


@pytest.fixture
def url(bare: Path) -> str:
    return bare.as_uri()


def writer(files: dict[str, str], calls: list[Path] | None = None) -> Callable[[Path], Sequence[str]]:
    """An apply_change that writes ``files`` and reports them, as the renderer does."""

    def apply_change(worktree: Path) -> Sequence[str]:
        if calls is not None:
            calls.append(worktree)
        for rel, text in files.items():
            (worktree / rel).parent.mkdir(parents=True, exist_ok=True)
            (worktree / rel).write_text(text)
        return sorted(files)

    return apply_change


def new_repo(url: str, cache: Path, log: list[str] | None = None, max_attempts: int = 5) -> GitOpsRepo:
    sink = log.append if log is not None else (lambda _line: None)
    return GitOpsRepo(url, BRANCH, cache, author_name=AUTHOR[0], author_email=AUTHOR[1], log=sink,
                      max_attempts=max_attempts)  # fmt: skip


def seed(url: str, tmp_path: Path, files: dict[str, str] | None = None) -> str:
    published = new_repo(url, tmp_path / "seed-cache").publish(writer(files or {"seed.txt": "seed\n"}), "Seed")
    assert published.commit is not None
    return published.commit


def history(bare: Path, branch: str = BRANCH) -> list[Commit]:
    with git.Repo(bare) as repo:
        return [
            Commit(c.hexsha, tuple(p.hexsha for p in c.parents), str(c.message),
                   (str(c.author.name), str(c.author.email)), (str(c.committer.name), str(c.committer.email)))
            for c in repo.iter_commits(branch)
        ]  # fmt: skip


def branches(bare: Path) -> dict[str, str]:
    with git.Repo(bare) as repo:
        return {head.name: head.commit.hexsha for head in repo.heads}


def files(bare: Path, branch: str = BRANCH) -> dict[str, str]:
    with git.Repo(bare) as repo:
        names = repo.git.ls_tree("-r", "-z", "--name-only", branch).split("\0")
        return {name: repo.git.show(f"{branch}:{name}", strip_newline_in_stdout=False) for name in names if name}


def test_publish_into_empty_remote_creates_branch(bare: Path, url: str, tmp_path: Path) -> None:
    published = new_repo(url, tmp_path / "cache").publish(writer({APP_FILE: "a\n"}), "Deploy tasks")

    assert branches(bare) == {BRANCH: published.commit}
    assert files(bare) == {APP_FILE: "a\n"}
    assert published == Published(published.commit, BRANCH, (APP_FILE,), None)


def test_publish_rewriting_same_bytes_makes_no_commit(bare: Path, url: str, tmp_path: Path) -> None:
    head = seed(url, tmp_path, {APP_FILE: "a\n"})

    # The callback claims a change; the tree decides.
    published = new_repo(url, tmp_path / "cache").publish(writer({APP_FILE: "a\n"}), "Deploy tasks")

    assert published == Published(None, BRANCH, (), None, current=head)
    assert branches(bare) == {BRANCH: head}


def test_direct_publish_lands_one_commit_with_message_and_author(bare: Path, url: str, tmp_path: Path) -> None:
    base = seed(url, tmp_path)
    message = "Deploy tasks 1a2b3c4\n\n# kept verbatim, not stripped as a comment"

    published = new_repo(url, tmp_path / "cache").publish(writer({APP_FILE: "a\n"}), message)

    top, *rest = history(bare)
    assert (top.sha, top.parents, top.message) == (published.commit, (base,), message + "\n")
    assert top.author == top.committer == AUTHOR
    assert [c.sha for c in rest] == [base]


def test_racing_publishers_both_land_in_linear_history(bare: Path, url: str, tmp_path: Path) -> None:
    base = seed(url, tmp_path)
    log_a: list[str] = []
    repo_a, repo_b = new_repo(url, tmp_path / "cache-a", log_a), new_repo(url, tmp_path / "cache-b")
    results: list[Published] = []
    calls: list[Path] = []

    def apply_a(worktree: Path) -> Sequence[str]:
        if not calls:  # B gets in between A's fetch and A's push, once
            results.append(repo_b.publish(writer({"apps/b.yaml": "b\n"}), "Deploy b"))
        return writer({"apps/a.yaml": "a\n"}, calls)(worktree)

    published_a = repo_a.publish(apply_a, "Deploy a")

    commit_b = results[0].commit
    assert [(c.sha, c.parents) for c in history(bare)] == [
        (published_a.commit, (commit_b,)), (commit_b, (base,)), (base, ())
    ]  # fmt: skip
    assert files(bare) == {"seed.txt": "seed\n", "apps/a.yaml": "a\n", "apps/b.yaml": "b\n"}
    assert len(calls) == 2
    assert any("rejected" in line and "attempt 2 of 5" in line for line in log_a)


def test_exhausted_attempts_raise_and_push_nothing(bare: Path, url: str, tmp_path: Path) -> None:
    seed(url, tmp_path)
    repo_a, repo_b = new_repo(url, tmp_path / "cache-a", max_attempts=3), new_repo(url, tmp_path / "cache-b")
    others: list[Published] = []

    def apply_a(worktree: Path) -> Sequence[str]:
        # Another writer lands before every one of A's pushes.
        others.append(repo_b.publish(writer({f"apps/b{len(others)}.yaml": "b\n"}), "Deploy b"))
        return writer({"apps/a.yaml": "a\n"})(worktree)

    with pytest.raises(TransientError, match=r"after 3 attempts") as error:
        repo_a.publish(apply_a, "Deploy a")

    assert url in str(error.value)
    assert len(others) == 3
    assert branches(bare) == {BRANCH: others[-1].commit}
    assert "apps/a.yaml" not in files(bare)


def test_pr_mode_pushes_review_branch_on_newest_branch_and_calls_forge(bare: Path, url: str,
                                                                        tmp_path: Path) -> None:
    base = seed(url, tmp_path)
    forge = RecordingForge()

    published = new_repo(url, tmp_path / "cache").publish(
        writer({APP_FILE: "a\n"}), "Deploy tasks", review_branch=REVIEW, forge=forge, pr_title="Deploy tasks",
        pr_body=lambda changed: "Changed: " + ", ".join(changed),
    )

    assert branches(bare) == {BRANCH: base, REVIEW: published.commit}
    assert history(bare, REVIEW)[0].parents == (base,)
    assert forge.calls == [{"head": REVIEW, "base": BRANCH, "title": "Deploy tasks", "body": f"Changed: {APP_FILE}"}]
    assert published.pull_request == PullRequest(7, "https://forge.test/acme/gitops/pull/7", True)
    assert (published.branch, published.changed) == (REVIEW, (APP_FILE,))


def test_pr_mode_new_change_remakes_review_branch_on_moved_branch(bare: Path, url: str, tmp_path: Path) -> None:
    seed(url, tmp_path)
    forge = RecordingForge()
    repo = new_repo(url, tmp_path / "cache")
    first = repo.publish(writer({APP_FILE: "v1\n"}), "Deploy tasks v1", review_branch=REVIEW, forge=forge)
    moved = new_repo(url, tmp_path / "other").publish(writer({"apps/other.yaml": "o\n"}), "Deploy other")

    second = repo.publish(writer({APP_FILE: "v2\n"}), "Deploy tasks v2", review_branch=REVIEW, forge=forge)

    assert second.commit != first.commit
    assert branches(bare)[REVIEW] == second.commit
    assert history(bare, REVIEW)[0].parents == (moved.commit,)  # forced: v1 is no longer on the branch
    with git.Repo(bare) as remote:
        assert remote.git.diff("--name-only", BRANCH, REVIEW) == APP_FILE
    assert [call["head"] for call in forge.calls] == [REVIEW, REVIEW]


def test_pr_mode_without_change_pushes_nothing_and_skips_forge(bare: Path, url: str, tmp_path: Path) -> None:
    base = seed(url, tmp_path, {APP_FILE: "a\n"})
    forge = RecordingForge()

    published = new_repo(url, tmp_path / "cache").publish(
        writer({APP_FILE: "a\n"}), "Deploy tasks", review_branch=REVIEW, forge=forge
    )

    assert published == Published(None, REVIEW, (), None, current=base)
    assert branches(bare) == {BRANCH: base}
    assert forge.calls == []


def test_pr_mode_same_proposal_is_not_pushed_again(bare: Path, url: str, tmp_path: Path) -> None:
    seed(url, tmp_path)
    forge = RecordingForge()
    repo = new_repo(url, tmp_path / "cache")
    first = repo.publish(writer({APP_FILE: "a\n"}), "Deploy tasks", review_branch=REVIEW, forge=forge)

    again = repo.publish(writer({APP_FILE: "a\n"}), "Deploy tasks again", review_branch=REVIEW, forge=forge)

    assert again.commit == first.commit == branches(bare)[REVIEW]
    # Still asked: the pull request may be missing if a run died between push and forge call.
    assert len(forge.calls) == 2


def test_pr_mode_without_gitops_branch_is_user_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        new_repo(url, tmp_path / "cache").publish(writer({APP_FILE: "a\n"}), "Deploy", review_branch=REVIEW)


def test_server_refusal_is_user_error_without_retry(bare: Path, url: str, tmp_path: Path) -> None:
    seed(url, tmp_path)
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'main is protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    calls: list[Path] = []

    with pytest.raises(UserError, match="refused the push") as error:
        new_repo(url, tmp_path / "cache").publish(writer({APP_FILE: "a\n"}, calls), "Deploy")

    assert "main is protected" in str(error.value)
    assert len(calls) == 1


def test_unreachable_remote_error_names_url(tmp_path: Path) -> None:
    missing = (tmp_path / "missing.git").as_uri()

    with pytest.raises(CupaasError) as error:
        new_repo(missing, tmp_path / "cache").publish(writer({APP_FILE: "a\n"}), "Deploy")

    assert missing in str(error.value)
    assert "Traceback" not in str(error.value)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_credentials_in_url_never_shown(refusing_port: int, tmp_path: Path) -> None:
    log: list[str] = []
    secret_url = f"http://deployer:s3cr3t-Zm9v@127.0.0.1:{refusing_port}/acme/gitops.git"

    with pytest.raises(TransientError) as error:
        new_repo(secret_url, tmp_path / "cache", log).publish(writer({APP_FILE: "a\n"}), "Deploy")

    assert f"http://deployer:***@127.0.0.1:{refusing_port}/acme/gitops.git" in str(error.value)
    assert log and all("s3cr3t" not in line for line in log)
    assert "s3cr3t" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("fatal: 'https://me:tok@h/r.git'", "fatal: 'https://me:***@h/r.git'"),
        ("https://ghp_token@github.com/a/b.git", "https://***@github.com/a/b.git"),
        ("ssh://git@host/r.git", "ssh://git@host/r.git"),
        ("git@github.com:acme/gitops.git", "git@github.com:acme/gitops.git"),
        # The userinfo ends at the last "@" before the host: a password may hold "@" and ":".
        ("fatal: 'http://deployer:p@ssW0rdTail@host/a.git/'", "fatal: 'http://deployer:***@host/a.git/'"),
        ("http://deployer:a:b@c:d@e@127.0.0.1:3000/acme/gitops.git", "http://deployer:***@127.0.0.1:3000/acme/gitops.git"),
        ("https://tok@en@github.com/a/b.git", "https://***@github.com/a/b.git"),
        ("clone of https://u:p@ss@host failed", "clone of https://u:***@host failed"),
    ],
)
def test_redact_hides_url_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert "ssW0rdTail" not in redact(text) and "@ss" not in redact(text)


def test_crash_leftovers_in_cache_are_discarded(bare: Path, url: str, tmp_path: Path) -> None:
    seed(url, tmp_path, {"seed.txt": "seed\n"})
    repo = new_repo(url, tmp_path / "cache")
    repo.publish(writer({APP_FILE: "a\n"}), "Deploy tasks")
    # What a run killed mid-render leaves behind: edits, strays, and git's own lock.
    (repo.worktree / "seed.txt").write_text("half-written\n")
    (repo.worktree / APP_FILE).unlink()
    (repo.worktree / "stray.tmp").write_text("junk\n")
    (repo.worktree / ".git" / "index.lock").write_text("")

    published = repo.publish(writer({"apps/b.yaml": "b\n"}), "Deploy b")

    assert published.changed == ("apps/b.yaml",)
    assert files(bare) == {"seed.txt": "seed\n", APP_FILE: "a\n", "apps/b.yaml": "b\n"}


def test_threads_through_one_cache_all_land_one_at_a_time(bare: Path, url: str, tmp_path: Path) -> None:
    seed(url, tmp_path)
    active, most = [0], [0]
    guard = threading.Lock()

    def publish(i: int) -> Published:
        def apply_change(worktree: Path) -> Sequence[str]:
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                threading.Event().wait(0.02)  # long enough for another thread to barge in if it could
                return writer({f"apps/app{i}.yaml": f"{i}\n"})(worktree)
            finally:
                with guard:
                    active[0] -= 1

        return new_repo(url, tmp_path / "shared-cache").publish(apply_change, f"Deploy app{i}")

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(publish, range(5)))

    assert most[0] == 1
    assert {f"apps/app{i}.yaml" for i in range(5)} < set(files(bare))
    commits = history(bare)
    assert len(commits) == 6 and all(len(c.parents) == 1 for c in commits[:-1])
    assert {r.commit for r in results} == {c.sha for c in commits[:-1]}


def test_publish_waits_for_another_process_holding_the_cache_lock(url: str, tmp_path: Path) -> None:
    repo = new_repo(url, tmp_path / "cache")
    repo.lock_path.parent.mkdir(parents=True)
    done: list[Published] = []
    fd = os.open(repo.lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a separate open file: to flock, another process
        thread = threading.Thread(target=lambda: done.append(repo.publish(writer({APP_FILE: "a\n"}), "Deploy")))
        thread.start()
        thread.join(timeout=0.3)
        assert thread.is_alive() and not done
    finally:
        os.close(fd)
    thread.join(timeout=10)
    assert done and done[0].commit is not None


def test_publish_ignores_machine_hooks_and_git_config(bare: Path, url: str, tmp_path: Path,
                                                      fresh_git_config: Path) -> None:
    hooks = tmp_path / "machine-hooks"
    hooks.mkdir()
    ran = tmp_path / "hook-ran"
    for name in ("pre-commit", "commit-msg", "post-commit", "pre-push", "post-checkout", "post-index-change"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
        (hooks / name).chmod(0o755)
    fresh_git_config.write_text(
        f"[core]\n\thooksPath = {hooks}\n\tautocrlf = true\n[init]\n\ttemplateDir = {tmp_path}/none\n"
        "[commit]\n\tgpgSign = true\n[user]\n\tuseConfigOnly = true\n"
    )

    published = new_repo(url, tmp_path / "cache").publish(writer({APP_FILE: "a\nb\n"}), "Deploy")

    assert not ran.exists()
    assert history(bare)[0].author == AUTHOR and published.commit is not None
    with git.Repo(bare) as remote:
        assert remote.git.cat_file("blob", f"{BRANCH}:{APP_FILE}", stdout_as_string=False,
                                    strip_newline_in_stdout=False) == b"a\nb\n"


def test_read_file_sees_newest_remote_content(url: str, tmp_path: Path) -> None:
    seed(url, tmp_path, {APP_FILE: "v1\n"})
    reader = new_repo(url, tmp_path / "cache")
    assert reader.read_file(APP_FILE) == "v1\n"

    new_repo(url, tmp_path / "other").publish(writer({APP_FILE: "v2\n"}), "Deploy v2")

    assert reader.read_file(APP_FILE) == "v2\n"


@pytest.mark.parametrize("seeded", [False, True], ids=["empty-remote", "missing-path"])
def test_read_file_missing_is_none(url: str, tmp_path: Path, seeded: bool) -> None:
    if seeded:
        seed(url, tmp_path)

    assert new_repo(url, tmp_path / "cache").read_file("apps/nope/release.yaml") is None


def test_read_file_refuses_a_symlink(url: str, tmp_path: Path) -> None:
    """A release record that is a link in the GitOps repo is refused, not read as its target's name."""

    def link(worktree: Path) -> Sequence[str]:
        (worktree / "apps/tasks").mkdir(parents=True)
        (worktree / "apps/tasks/release.yaml").symlink_to("/etc/passwd")
        return ["apps/tasks/release.yaml"]

    new_repo(url, tmp_path / "writer").publish(link, "Link the release record")
    with pytest.raises(UserError, match=r"^apps/tasks/release.yaml: is a symbolic link on main of "):
        new_repo(url, tmp_path / "cache").read_file("apps/tasks/release.yaml")


@pytest.mark.parametrize("name", ["", "-x", "a..b", "a b", "cupaas/", "x.lock", "a:b"])
def test_invalid_review_branch_is_user_error(url: str, tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="not a valid git branch name"):
        new_repo(url, tmp_path / "cache").publish(writer({}), "Deploy", review_branch=name)
