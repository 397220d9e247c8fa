"""The webhook service as a real process on a loopback port, and git pushes that reach it through a hook.

Used by tests/test_webhook_e2e.py and benchmarks/webhook.py. `ServedCupaas` runs ``cupaas serve`` (gunicorn
master + one worker) in a process group of its own, so it can be SIGKILLed as a whole and never outlives
the test; its output goes to a file, shown when it does not come up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from deploy_support import GIT_ENV, AppRepo, git
from loopback import HTTP, free_port

from webhook.app import SECRET_ENV
from webhook.events import app_secret

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cupaas-e2e-secret-8d41f0c2"
# Never through a proxy: everything here is on loopback.
ENDED = ("succeeded", "failed", "superseded")
_HOOK_LINE = re.compile(r"^remote: cupaas: (\d{3}) (.*)$", re.MULTILINE)
_SERVER_ERROR = re.compile(r'" 5\d\d \d+ "')  # gunicorn's access log: "GET /path HTTP/1.1" 500 123 "-" ...




def write_secret(directory: Path, secret: str = SECRET, name: str = "webhook-secret") -> Path:
    path = directory / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def write_app_secret(directory: Path, app: str, master: str = SECRET) -> Path:
    """The secret file of ``app``'s hook: its secret derived from the service's master secret."""
    return write_secret(directory, app_secret(master.encode(), app).decode(), name=f"webhook-secret-{app}")


def cupaas_command() -> list[str]:
    """The installed console script next to this interpreter, else the module (same entry point)."""
    script = Path(sys.executable).with_name("cupaas")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from webhook.cli import main; main()"]


class ServedProcess:
    """An HTTP server started as ``command`` in a new session (process group) on 127.0.0.1:``port``.

    Ready once GET /healthz answers 200 with ``{"status": "ok"}``; stdout and stderr go to ``log_path``.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None, name: str = "server") -> None:
        self.port = port or free_port()
        self.name = name
        self.log_path = log_path or Path(os.devnull)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment to start; subclasses say what they serve."""
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            raise RuntimeError(f"{self.name} is already started")
        command, env = self.command()
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"===== start {self.starts}: {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=ROOT, start_new_session=True)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            try:
                if self.get_json("/healthz", timeout=1.0).get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout:g}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn master, worker and anything they started)."""
        self._signal_group(signal.SIGKILL, wait=10.0)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL whatever is left after ``timeout``."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self._signal_group(signal.SIGKILL, wait=10.0)

    def _signal_group(self, sig: int, wait: float) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)  # the group outlives its leader while a member is alive
        self.process.wait(wait)
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        with HTTP.open(self.base + path, timeout=timeout) as answer:
            return json.loads(answer.read())

    def post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float = 10.0) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, data=body, headers=dict(headers), method="POST")
        try:
            with HTTP.open(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def __enter__(self) -> ServedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServedCupaas(ServedProcess):
    """``cupaas serve CONTROL`` with its state in ``state_dir``; its log goes next to the state directory."""

    def __init__(self, control: Path | str, state_dir: Path, *, port: int | None = None, workers: int = 2,
                 secret: str | None = SECRET, log_path: Path | None = None,
                 extra_env: Mapping[str, str] | None = None) -> None:
        port = port or free_port()
        super().__init__(port, log_path or state_dir.parent / f"cupaas-serve-{port}.log", "cupaas serve")
        self.control = str(control)
        self.state_dir = state_dir
        self.workers = workers
        self.secret = secret
        self.extra_env = dict(extra_env or {})

    def command(self) -> tuple[list[str], dict[str, str]]:
        command = [*cupaas_command(), "serve", self.control, "--host", "127.0.0.1", "--port", str(self.port),
                   "--state-dir", str(self.state_dir), "--workers", str(self.workers)]
        env = {**os.environ, **GIT_ENV, **self.extra_env}
        env.pop(SECRET_ENV, None)
        if self.secret is None:
            command.append("--insecure-no-signature")
        else:
            env[SECRET_ENV] = self.secret
        return command, env

    def hook_url(self, forge: str) -> str:
        return f"{self.base}/hooks/{forge}"

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.get_json(f"/jobs/{job_id}")
        return job

    def wait_job(self, job_id: str, timeout: float = 120.0, states: tuple[str, ...] = ENDED) -> dict[str, Any]:
        """Poll GET /jobs/<id> until the job is in one of ``states``; fails with its log if it is not in time."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout:g}s; log:\n{job['log']}"
                                     f"\nservice log:\n{self.log_tail()}")
            time.sleep(0.1)

    def problems(self) -> list[str]:
        """Access-log lines of 5xx answers and logged tracebacks: the service must never show any."""
        text = self.log_tail(chars=10_000_000)
        return [line for line in text.splitlines() if _SERVER_ERROR.search(line) or "Traceback" in line]


@contextmanager
def served(control: Path | str, state_dir: Path, **kwargs: Any) -> Iterator[ServedCupaas]:
    service = ServedCupaas(control, state_dir, **kwargs)
    try:
        service.start()
        yield service
    finally:
        service.stop()


# --- pushing through the hook ---------------------------------------------------------------------------


class PushAnswer:
    """What ``git push`` showed of the hook's deliveries: (status, answer) per delivery."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.answers = [(int(status), json.loads(body)) for status, body in _HOOK_LINE.findall(output)]

    @property
    def job_ids(self) -> list[str]:
        return [job for status, body in self.answers if status == 202 for job in body["jobs"]]


def commit(repo: AppRepo, message: str, files: Mapping[str, str] | None = None) -> str:
    """Commit in the work tree without pushing (the test pushes through the hook); returns the new sha."""
    return repo.commit(message, files, push=False)


def push(repo: AppRepo, refspec: str = "HEAD:main") -> PushAnswer:
    """``git push`` to the bare repo; its post-receive hook's lines come back as ``remote: cupaas: ...``."""
    done = subprocess.run(["git", "push", "origin", refspec], cwd=repo.work, env={**os.environ, **GIT_ENV},
                          capture_output=True, text=True, check=True, timeout=60)
    return PushAnswer(done.stdout + done.stderr)


def commit_and_push(repo: AppRepo, message: str, files: Mapping[str, str] | None = None) -> tuple[str, PushAnswer]:
    sha = commit(repo, message, files)
    return sha, push(repo)


# --- the GitOps repo --------------------------------------------------------------------------------------


def release(gitops: Path, app: str, ref: str = "main") -> dict[str, Any]:
    """apps/<app>/release.yaml as the GitOps branch has it."""
    record: dict[str, Any] = yaml.safe_load(git("show", f"{ref}:apps/{app}/release.yaml", cwd=gitops))
    return record


def deploy_commits(gitops: Path, app: str, ref: str = "main") -> list[str]:
    """The app commits that the deploy commits of ``app`` on the GitOps branch deploy, oldest first.

    A deploy commit is titled ``Deploy <app> <sha12>: <subject>`` and names the full sha as ``Commit: <sha>``.
    """
    commits = []
    for entry in git("log", "--reverse", "--format=%s%x1f%b%x1e", ref, cwd=gitops).split("\x1e"):
        subject, _sep, body = entry.strip().partition("\x1f")
        if subject.startswith(f"Deploy {app} "):
            [sha] = [line.removeprefix("Commit: ") for line in body.splitlines() if line.startswith("Commit: ")]
            commits.append(sha)
    return commits


def deploy_commit_count(gitops: Path, app: str, sha: str, ref: str = "main") -> int:
    """How many GitOps commits deploy commit ``sha`` of ``app``."""
    return deploy_commits(gitops, app, ref).count(sha)


# --- signed deliveries built by hand (the benchmark) -------------------------------------------------------


def github_push(repo_url: str, after: str, before: str = "1" * 40, branch: str = "main",
                secret: str | None = SECRET, delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A GitHub push delivery for ``repo_url``: (body, headers), signed as GitHub signs it."""
    payload = {"ref": f"refs/heads/{branch}", "before": before, "after": after, "created": False,
               "deleted": False, "forced": False,
               "head_commit": {"id": after, "message": "Benchmark push\n", "author": {"name": "Dev"}},
               "repository": {"full_name": "local/app", "clone_url": repo_url}, "pusher": {"name": "dev"}}
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
               "X-GitHub-Delivery": delivery or str(uuid.uuid4())}
    if secret is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, headers
