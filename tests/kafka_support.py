"""A Kafka broker of the tests' own (scripts/kafka on another port and directory), and `cupaas worker` processes.

Used by tests/test_kafka_queue.py and benchmarks/job_queue.py. The broker is never the developer's one on
19092: the tests reset and stop theirs, on port 19192 with its data in .state/kafka-test/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from deploy_support import GIT_ENV, AppRepo, make_app_repo, make_control, make_gitops_repo
from webhook_support import ROOT, cupaas_command

KAFKA_PORT = int(os.environ.get("CUPAAS_TEST_KAFKA_PORT", "19192"))
KAFKA_DIR = ROOT / ".state" / "kafka-test"
KAFKA_URL = f"kafka://127.0.0.1:{KAFKA_PORT}"
_JOB_LINE = re.compile(r"^-----> Job ([0-9a-f]{32}): ", re.MULTILINE)


def kafka_script(command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``scripts/kafka COMMAND`` for the tests' broker; fails with its output if it fails."""
    env = {**os.environ, "CUPAAS_KAFKA_DIR": str(KAFKA_DIR), "CUPAAS_KAFKA_PORT": str(KAFKA_PORT)}
    done = subprocess.run([str(ROOT / "scripts" / "kafka"), command], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0 and command != "status":
        raise RuntimeError(f"scripts/kafka {command} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return done


@contextmanager
def broker() -> Iterator[str]:
    """A fresh broker (no topics, no groups) for the block; yields its ``kafka://`` URL."""
    kafka_script("reset")
    try:
        up = kafka_script("up")
        assert f"bootstrap=127.0.0.1:{KAFKA_PORT}" in up.stdout.splitlines(), up.stdout
        yield KAFKA_URL
    finally:
        kafka_script("down")


class Worker:
    """``cupaas worker CONTROL --queue URL`` in a process group of its own, with a stub or Docker builder."""

    def __init__(self, control: Path, state_dir: Path, queue: str, *, stub_build: float | None = 0.2,
                 threads: int = 1, name: str = "worker", metrics_port: int | None = None) -> None:
        self.control, self.state_dir, self.queue = control, state_dir, queue
        self.stub_build, self.threads, self.name = stub_build, threads, name
        self.metrics_port = metrics_port
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Worker:
        command = [*cupaas_command(), "worker", str(self.control), "--queue", self.queue, "--state-dir",
                   str(self.state_dir), "--threads", str(self.threads)]
        if self.stub_build is not None:
            command += ["--stub-build", str(self.stub_build)]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **GIT_ENV}, cwd=ROOT, start_new_session=True)
        self.wait_for("took partitions", timeout)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {text!r} within {timeout:g}s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def started_jobs(self) -> list[str]:
        return _JOB_LINE.findall(self.log())

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10)

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM (running jobs may end), then SIGKILL what is left."""
        self._signal(signal.SIGTERM, timeout)
        self._signal(signal.SIGKILL, 10)

    def _signal(self, sig: int, wait: float) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(wait)
            self.process = None


@contextmanager
def workers(control: Path, root: Path, queue: str, count: int, **options: object) -> Iterator[list[Worker]]:
    """``count`` workers, each with a state directory of its own (its git caches), stopped after the block."""
    started: list[Worker] = []
    try:
        for n in range(count):
            started.append(Worker(control, root / f"worker-{n + 1}", queue, name=f"worker {n + 1}",
                                  **options).start())  # type: ignore[arg-type]
        yield started
    finally:
        for worker in started:
            worker.stop()


def make_world(root: Path, apps: list[str]) -> tuple[Path, Path, dict[str, AppRepo]]:
    """App repos, an empty GitOps repo and a control repo registering the apps: (control, gitops, repos).

    The builds are stubs, so the registry and base image are names only and the PyPI mirror is never asked.
    """
    repos = {app: make_app_repo(root, app) for app in apps}
    gitops = make_gitops_repo(root)
    control = make_control(root, "127.0.0.1:5000", "127.0.0.1:5000/cupaas/python:3.11", gitops.as_uri(),
                           {app: repo.url for app, repo in repos.items()}, pypi="http://127.0.0.1:9/simple/")
    return control, gitops, repos


def serve_env(queue: str) -> Mapping[str, str]:
    return {"CUPAAS_QUEUE": queue}
