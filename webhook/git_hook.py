"""A git ``post-receive`` hook that makes a plain bare repository send forge webhooks to cupaas.

Without a forge (a bare repo on a server, ``cupaas demo``, the end-to-end tests), nothing sends the push
webhook the service waits for. :func:`install_post_receive` writes a hook into a bare repository that,
after every ``git push``, sends one push delivery per updated ref to ``cupaas serve`` exactly as a forge
would, so the whole path (signature check, parsing, matching, queue) is the one real forges take::

    install_post_receive(Path("/srv/git/tasks.git"), "http://127.0.0.1:8080/hooks/github",
                         forge="github", secret_file=Path("/etc/cupaas/webhook-secret"))

and a push then shows the service's answer::

    remote: cupaas: 202 {"jobs":["5b0c..."]}

What the generated hook sends, per forge (``notes/forges.md`` sections 1 and 2):

========  ===================================================  ====================================================
forge     headers                                              body
========  ===================================================  ====================================================
github    ``X-GitHub-Event: push``, ``X-GitHub-Delivery``,     ``ref``, ``before``, ``after``, ``created``,
          ``X-Hub-Signature-256: sha256=<hex>`` (and the       ``deleted``, ``forced``, ``commits`` (newest 20),
          legacy ``X-Hub-Signature: sha1=<hex>``)              ``head_commit``, ``repository.clone_url``, ``pusher``
gitea     ``X-Gitea-Event``/``-Event-Type``/``-Delivery``/     GitHub's fields without ``created``/``deleted``/
          ``-Signature: <hex>``, plus the ``X-Gogs-*`` and     ``forced``, with ``total_commits``; a branch
          GitHub-named copies Gitea sends; unsigned: the       deletion is a ``delete`` event (Gitea sends no
          signature headers are sent empty, as Gitea does      push for it)
gitlab    ``X-Gitlab-Event: Push Hook`` (``Tag Push Hook``),   ``object_kind``, ``ref``, ``before``, ``after``,
          ``X-Gitlab-Token: <secret>``, ``Idempotency-Key``    ``checkout_sha`` (null on deletion), ``commits``,
          and ``X-Gitlab-Event-UUID`` (one delivery id)        ``total_commits_count``, ``project.git_http_url``
========  ===================================================  ====================================================

GitHub and Gitea sign with HMAC-SHA256 over the exact body bytes sent; GitLab sends its secret token
verbatim. The secret is read from ``secret_file`` each time the hook runs (surrounding whitespace
stripped) and is never written into the hook; with ``secret_file=None`` nothing is signed, for a service
started with ``--insecure-no-signature``. Bitbucket Cloud is not offered: its payload carries no clone
URL (cupaas derives ``bitbucket.org`` URLs from the repository's full name), so it cannot name a local
repository.

The repository URLs in the payload are the bare repository's own ``file://`` URL, as git reports its
directory (``git rev-parse --absolute-git-dir``, symlinks resolved), so the push matches an app
registered with ``repo: file:///path/to/app.git``. Pass ``repo_url`` to announce another URL, e.g. the
one clients clone the repository by over ssh.

The hook uses only Python's standard library and the ``git`` on PATH, so it runs under any Python 3.8+
given as ``python`` (the interpreter cupaas runs under, by default). Delivery is one POST per updated
ref with a fresh UUID as delivery id, straight to ``url`` (proxy variables are ignored: the service is
expected on this machine or network), with a timeout. The hook never makes a push fail (git has already
updated the refs when ``post-receive`` runs): it prints the answer, or why there is none, and exits 1
when a delivery failed so that the failure is visible in scripted pushes that check hook output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from generator.atomic_file import write_atomic

FORGES = ("github", "gitea", "gitlab")
HOOK_NAME = "post-receive"
DEFAULT_TIMEOUT = 10.0

# The hook's code, after its settings. Kept to the standard library and to Python 3.8 syntax: it runs
# under whichever interpreter the hook names, inside git's environment (GIT_DIR set, cwd = the repo).
_HOOK_BODY = r'''
import hashlib
import hmac
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ZERO = "0" * 40
MAX_COMMITS = 20  # GitHub and GitLab list the newest 20 commits of a push
SHOWN_ANSWER = 2000  # characters of the service's answer printed to the pusher


def git(*args):
    return subprocess.run(["git", *args], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True).stdout


def is_zero(sha):
    return set(sha) == {"0"}


def this_repo():
    """The repository's name, URL and default branch, as a forge describes it."""
    git_dir = Path(git("rev-parse", "--absolute-git-dir").strip()).resolve()
    url = REPO_URL or git_dir.as_uri()
    named = git_dir.parent if git_dir.name == ".git" else git_dir  # a work tree's repo: its directory
    name = named.name[:-4] if named.name.endswith(".git") else named.name
    try:
        default_branch = git("symbolic-ref", "--short", "HEAD").strip()
    except subprocess.CalledProcessError:
        default_branch = "main"
    return {"name": name, "full_name": "local/" + name, "url": url, "default_branch": default_branch}


def commit_info(sha):
    """One commit in the form the forges list commits: id, message, author, committer, timestamp."""
    fields = git("show", "-s", "--format=%T%x00%an%x00%ae%x00%cn%x00%ce%x00%cI%x00%B", sha).split("\0", 6)
    tree, author, author_email, committer, committer_email, timestamp, message = fields
    message = message.rstrip("\n") + "\n"
    return {"id": sha, "tree_id": tree, "message": message, "title": message.split("\n", 1)[0],
            "timestamp": timestamp, "url": "", "author": {"name": author, "email": author_email},
            "committer": {"name": committer, "email": committer_email}}


def pushed_commits(old, new):
    """The commits the push brought, oldest first, at most MAX_COMMITS (the newest), and their count."""
    if is_zero(new):
        return [], 0
    span = new if is_zero(old) else old + ".." + new
    ids = git("rev-list", span).split() if not is_zero(old) else [new]
    return [commit_info(sha) for sha in reversed(ids[:MAX_COMMITS])], len(ids)


def is_forced(old, new):
    if is_zero(old) or is_zero(new):
        return False
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", old, new], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    return ancestor.returncode != 0


def pusher():
    name = os.environ.get("GL_USERNAME") or os.environ.get("USER") or os.environ.get("LOGNAME") or "git"
    return {"name": name, "login": name, "username": name, "email": ""}


def hex_hmac(secret, body, digest):
    return hmac.new(secret, body, digest).hexdigest() if secret is not None else ""


def github_delivery(old, new, ref, repo, secret, delivery):
    commits, _total = pushed_commits(old, new)
    payload = {
        "ref": ref, "before": old, "after": new,
        "created": is_zero(old), "deleted": is_zero(new), "forced": is_forced(old, new),
        "base_ref": None, "compare": "", "commits": commits,
        "head_commit": commit_info(new) if not is_zero(new) else None,
        "repository": {"name": repo["name"], "full_name": repo["full_name"], "clone_url": repo["url"],
                       "url": repo["url"], "default_branch": repo["default_branch"]},
        "pusher": {"name": pusher()["name"], "email": ""}, "sender": {"login": pusher()["name"]},
    }
    body = json.dumps(payload).encode("utf-8")
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery}
    if secret is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hex_hmac(secret, body, hashlib.sha256)
        headers["X-Hub-Signature"] = "sha1=" + hex_hmac(secret, body, hashlib.sha1)
    return headers, body


def gitea_delivery(old, new, ref, repo, secret, delivery):
    repository = {"name": repo["name"], "full_name": repo["full_name"], "clone_url": repo["url"],
                  "default_branch": repo["default_branch"]}
    if is_zero(new) and ref.startswith("refs/heads/"):
        # Gitea reports a deleted branch with a "delete" event (short ref name) and no push.
        event = "delete"
        payload = {"ref": ref[len("refs/heads/"):], "ref_type": "branch", "pusher_type": "user",
                   "repository": repository, "sender": pusher()}
    else:
        event = "push"
        commits, total = pushed_commits(old, new)
        payload = {"ref": ref, "before": old, "after": new, "compare_url": "", "commits": commits,
                   "total_commits": total, "head_commit": None if is_zero(new) else commit_info(new),
                   "repository": repository, "pusher": pusher(), "sender": pusher()}
    body = json.dumps(payload).encode("utf-8")
    sha256, sha1 = hex_hmac(secret, body, hashlib.sha256), hex_hmac(secret, body, hashlib.sha1)
    # Gitea's deliver.go sends its own headers and the Gogs- and GitHub-named copies; a hook without a
    # secret still sends the signature headers, empty.
    headers = {"X-Hub-Signature": "sha1=" + sha1, "X-Hub-Signature-256": "sha256=" + sha256}
    for name in ("Gitea", "Gogs", "GitHub"):
        headers["X-%s-Event" % name] = event
        headers["X-%s-Event-Type" % name] = event
        headers["X-%s-Delivery" % name] = delivery
        if name != "GitHub":
            headers["X-%s-Signature" % name] = sha256
    return headers, body


def gitlab_delivery(old, new, ref, repo, secret, delivery):
    tag = ref.startswith("refs/tags/")
    commits, total = pushed_commits(old, new)
    user = pusher()
    payload = {
        "object_kind": "tag_push" if tag else "push", "event_name": "tag_push" if tag else "push",
        "before": old, "after": new, "ref": ref, "ref_protected": False,
        "checkout_sha": None if is_zero(new) else new, "message": None,
        "user_name": user["name"], "user_username": user["username"], "user_email": "",
        "project": {"name": repo["name"], "path_with_namespace": repo["full_name"],
                    "git_http_url": repo["url"], "default_branch": repo["default_branch"]},
        "commits": commits, "total_commits_count": total,
        "repository": {"name": repo["name"], "url": repo["url"], "git_http_url": repo["url"]},
    }
    body = json.dumps(payload).encode("utf-8")
    # Idempotency-Key (GitLab 17.4+) and X-Gitlab-Event-UUID (14.8+) both carry the delivery id.
    headers = {"X-Gitlab-Event": "Tag Push Hook" if tag else "Push Hook", "X-Gitlab-Event-UUID": delivery,
               "Idempotency-Key": delivery,
               "X-Gitlab-Webhook-UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, URL + "#" + repo["url"]))}
    if secret is not None:
        headers["X-Gitlab-Token"] = secret.decode("utf-8")
    return headers, body


DELIVERIES = {"github": github_delivery, "gitea": gitea_delivery, "gitlab": gitlab_delivery}


def read_secret():
    if SECRET_FILE is None:
        return None
    secret = Path(SECRET_FILE).read_bytes().strip()
    if not secret:
        raise ValueError("the file is empty")
    return secret


def send(headers, body):
    """POST one delivery; (status, answer text). Proxy variables are ignored on purpose."""
    request = urllib.request.Request(URL, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "cupaas-post-receive/1", **headers})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=TIMEOUT) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:  # 4xx/5xx still carry the service's explanation
        with error:
            return error.code, error.read().decode("utf-8", "replace")


def main():
    try:
        secret = read_secret()
    except (OSError, ValueError) as e:
        print("cupaas: webhook not sent: cannot read the webhook secret from %s: %s" % (SECRET_FILE, e))
        return 1
    repo = this_repo()
    failed = 0
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 3:
            continue
        old, new, ref = parts
        delivery = str(uuid.uuid4())
        headers, body = DELIVERIES[FORGE](old, new, ref, repo, secret, delivery)
        try:
            status, answer = send(headers, body)
        except (OSError, ValueError) as e:  # refused, timed out, unreachable
            print("cupaas: webhook for %s not delivered to %s: %s" % (ref, URL, getattr(e, "reason", e)))
            failed += 1
            continue
        answer = " ".join(answer.split())
        if len(answer) > SHOWN_ANSWER:
            answer = answer[:SHOWN_ANSWER - 3] + "..."
        print("cupaas: %d %s" % (status, answer))
        failed += status >= 300
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
'''


def post_receive_script(url: str, forge: str = "github", secret_file: Path | None = None,
                        python: str = sys.executable, *, repo_url: str | None = None,
                        timeout: float = DEFAULT_TIMEOUT) -> str:
    """The text of a ``post-receive`` hook that sends ``forge``-format push webhooks to ``url``.

    ``url`` is the service's hook endpoint (``http://127.0.0.1:8080/hooks/github``); ``forge`` is one of
    :data:`FORGES` and should match the endpoint. ``secret_file`` holds the webhook secret (read when the
    hook runs, never copied into it); None sends unsigned deliveries. ``python`` is the absolute path of
    the interpreter in the ``#!`` line. ``repo_url`` overrides the repository URL the payload announces
    (default: the repository's ``file://`` URL). ``timeout`` bounds each delivery, in seconds.
    """
    if forge not in FORGES:
        raise ValueError(f"unknown forge {forge!r}; the hook speaks {', '.join(FORGES)}")
    if not url.startswith(("http://", "https://")) or any(ch.isspace() for ch in url):
        raise ValueError(f"the webhook URL must be an http:// or https:// URL, not {url!r}")
    if not os.path.isabs(python) or any(ch.isspace() for ch in python):
        raise ValueError(f"python must be an absolute path without spaces (it goes in the #! line), not {python!r}")
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    secret_path = None if secret_file is None else str(Path(secret_file).absolute())
    settings = "\n".join([
        f"URL = {url!r}",
        f"FORGE = {forge!r}",
        f"SECRET_FILE = {secret_path!r}  # read at every run; None: deliveries are not signed",
        f"REPO_URL = {repo_url!r}  # None: this repository's file:// URL",
        f"TIMEOUT = {float(timeout)!r}  # seconds per delivery",
    ])
    return (f"#!{python}\n"
            f'"""cupaas post-receive hook: sends a {forge}-format push webhook per updated ref to cupaas.\n\n'
            "Written by webhook/git_hook.py (install_post_receive); regenerate it rather than editing it.\n"
            '"""\n'
            f"{settings}\n{_HOOK_BODY}")


def install_post_receive(bare_repo: Path, url: str, forge: str = "github", secret_file: Path | None = None,
                         python: str = sys.executable, *, repo_url: str | None = None,
                         timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Write the hook of :func:`post_receive_script` as ``hooks/post-receive`` of ``bare_repo``, executable.

    ``bare_repo`` is a bare repository (or a work tree, whose ``.git`` is used). An existing
    ``post-receive`` hook is replaced; the file is written under a temporary name and renamed, so a push
    running meanwhile sees the old hook or the new one, never half of one. Returns the hook's path.
    """
    repo = Path(bare_repo)
    git_dir = repo / ".git" if (repo / ".git").is_dir() else repo
    if not (git_dir / "HEAD").is_file() or not (git_dir / "objects").is_dir():
        raise ValueError(f"{repo} is not a git repository")
    script = post_receive_script(url, forge, secret_file, python, repo_url=repo_url, timeout=timeout)
    target = git_dir / "hooks" / HOOK_NAME
    write_atomic(target, script.encode("utf-8"), mode=0o755)
    return target
