"""Builds reach the package mirror and nothing else (issue: isolated builds; design, section 9).

A hostile app tries, from its `setup.py` (run by pip during the build) and from `RUN` lines of its own
Dockerfile, every service a build could abuse on this machine: the engine's socket and TCP ports, the
registry's catalogue, `cupaas serve`, and a canary listener this test starts. All targets are on loopback:
even if isolation broke, no probe would leave the machine. The probes print what they saw and then
fail the build on purpose, so the deploy log carries their report and nothing may be committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import heads, make_app_repo, make_control, make_gitops_repo
from loopback import HTTP, free_port
from webhook_support import commit_and_push, cupaas_command, served, write_app_secret

from webhook.git_hook import install_post_receive

pytestmark = pytest.mark.docker

REGISTRY_CATALOG = "http://127.0.0.1:5000/v2/_catalog"


class Canary:
    """A loopback listener that counts every connection made to it (none may come from a build)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            client.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    listener = Canary()
    yield listener
    listener.close()


def probe_program(targets: dict[str, tuple[str, int]]) -> str:
    """Python that tries each target, prints one `PROBE name: ...` line each, and exits 1."""
    return textwrap.dedent(f"""\
        import socket, sys, urllib.request
        lines = []
        for name, (host, port) in {json.dumps(targets)}.items():
            try:
                socket.create_connection((host, port), timeout=3).close()
                lines.append("PROBE " + name + ": REACHED")
            except OSError as e:
                lines.append("PROBE " + name + ": blocked (" + type(e).__name__ + ")")
        for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(3)
                s.connect(path)
                lines.append("PROBE unix " + path + ": REACHED")
            except OSError as e:
                lines.append("PROBE unix " + path + ": blocked (" + type(e).__name__ + ")")
        try:
            urllib.request.urlopen({REGISTRY_CATALOG!r}, timeout=3).read()
            lines.append("PROBE registry catalog: REACHED")
        except OSError as e:
            lines.append("PROBE registry catalog: blocked (" + type(e).__name__ + ")")
        import os
        index = os.environ.get("PIP_INDEX_URL", "")
        try:
            urllib.request.urlopen(index + "pip/", timeout=10).read()
            lines.append("PROBE mirror: ok")
        except (OSError, ValueError) as e:
            lines.append("PROBE mirror: failed (" + type(e).__name__ + ") at " + repr(index))
        routes = [l for l in open("/proc/net/route").read().splitlines()[1:] if l.strip()]
        lines.append("PROBE routes: " + (str(len(routes)) if routes else "none"))
        print("\\n".join(lines), flush=True)
        sys.exit(1)
        """)


def targets(serve_port: int, canary: Canary) -> dict[str, tuple[str, int]]:
    return {"engine tcp 2375": ("127.0.0.1", 2375), "engine tcp 2376": ("127.0.0.1", 2376),
            "registry": ("127.0.0.1", 5000), "cupaas serve": ("127.0.0.1", serve_port),
            "canary": ("127.0.0.1", canary.port)}


def setup_py_app(root: Path, program: str) -> Path:
    """A python app whose requirements.txt installs itself (`-e .`), so pip runs its setup.py."""
    source = root / "hostile-setup-src"
    source.mkdir()
    (source / ".cupaas").write_text("runtime: python\nrun: python -m http.server $PORT\n")
    (source / "requirements.txt").write_text("-e .\n")
    (source / "setup.py").write_text(program)
    return source


def dockerfile_app(root: Path, program: str, base_image: str) -> Path:
    """An app built with its own Dockerfile, whose RUN line runs the probes."""
    source = root / "hostile-dockerfile-src"
    source.mkdir()
    (source / ".cupaas").write_text("runtime: python\ndockerfile: Dockerfile\n")
    (source / "probe.py").write_text(program)
    (source / "Dockerfile").write_text(
        f"FROM {base_image}\nARG PIP_INDEX_URL\nCOPY probe.py /probe.py\nRUN python3 /probe.py\n")
    return source


def assert_everything_blocked(log: str, canary: Canary) -> None:
    probes = sorted(line.strip() for line in log.splitlines() if line.strip().startswith("PROBE "))
    names = {line.split(":")[0] for line in probes}
    assert {"PROBE engine tcp 2375", "PROBE registry", "PROBE cupaas serve", "PROBE canary",
            "PROBE unix /var/run/docker.sock", "PROBE registry catalog", "PROBE routes"} <= names, log
    assert [line for line in probes if "REACHED" in line] == [], log
    assert "PROBE routes: none" in probes, log
    assert "PROBE mirror: ok" in probes, log  # the one thing a build reaches
    assert canary.connections == 0


def deploy_with_the_cli(control: Path, state: Path) -> str:
    done = subprocess.run([*cupaas_command(), "deploy", str(control), "hostile", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Failed at step build" in done.stderr and "Traceback" not in done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("surface", ["cupaas deploy", "cupaas serve"])
@pytest.mark.parametrize("kind", ["setup.py", "Dockerfile RUN"])
def test_hostile_build_reaches_only_the_mirror(
    kind: str, surface: str, tmp_path: Path, registry: str, base_image: str, canary: Canary
) -> None:
    """The attack of the issue: pip runs the app's setup.py (`-e .`), or the app's Dockerfile runs its own code."""
    port = free_port()  # `cupaas serve` listens here in the serve case; the probes try it in both
    program = probe_program(targets(port, canary))
    source = setup_py_app(tmp_path, program) if kind == "setup.py" else dockerfile_app(tmp_path, program, base_image)
    app = make_app_repo(tmp_path, "hostile", source)
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"hostile": app.url})
    before = heads(gitops)

    if surface == "cupaas deploy":
        log = deploy_with_the_cli(control, tmp_path / "state")
    else:
        with served(control, tmp_path / "state", port=port) as service:
            install_post_receive(app.bare, service.hook_url("github"), "github", write_app_secret(tmp_path, "hostile"))
            _sha, answer = commit_and_push(app, "Hostile probes", {"probe-again.txt": "1\n"})
            [job_id] = answer.job_ids
            job = service.wait_job(job_id, timeout=300)
            assert job["state"] == "failed", job["log"]
            log = job["log"]
            with HTTP.open(f"{service.base}/healthz", timeout=5) as health:
                assert health.status == 200  # the service the build tried to reach stays healthy
            assert service.problems() == []

    assert_everything_blocked(log, canary)
    assert heads(gitops) == before  # a failed hostile build commits nothing
    with pytest.raises(OSError):  # and pushes nothing
        HTTP.open(f"http://{registry}/v2/cupaas-test/hostile/manifests/{app.head()}", timeout=10).read()


def test_build_with_the_mirror_stopped_fails_naming_the_mirror_and_commits_nothing(
    tmp_path: Path, registry: str, base_image: str
) -> None:
    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    stopped = f"http://127.0.0.1:{free_port()}/root/pypi/+simple/"  # a mirror that is not running
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url}, pypi=stopped)
    before = heads(gitops)

    done = subprocess.run([*cupaas_command(), "deploy", str(control), "tasks", "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"package mirror {stopped} (cupaas.yaml mirrors.pypi) is unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert heads(gitops) == before


def test_build_through_the_mirror_appears_in_its_access_log(tmp_path: Path, registry: str, base_image: str,
                                                            pypi_mirror: str) -> None:
    """Every package pip fetched came from the mirror: its log names the requirements of the tasks app."""
    log = Path(__file__).resolve().parent.parent / ".state" / "dev-env" / "devpi-server.log"
    assert log.is_file(), f"{log} is missing: scripts/dev-env up starts devpi-server and logs there"
    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url})
    requirements = (app.work / "requirements.txt").read_text().split()
    offset = log.stat().st_size
    # A new dependency line: the dependency layer is rebuilt, so pip asks the mirror again.
    app.commit("Force the dependency layer", {"requirements.txt": "\n".join(requirements) + f"\n# {uuid.uuid4()}\n"})

    done = subprocess.run([*cupaas_command(), "deploy", str(control), "tasks", "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)

    assert done.returncode == 0, done.stdout + done.stderr
    with log.open("rb") as f:
        f.seek(offset)
        requests = f.read().decode("utf-8", "replace")
    first = requirements[0].split("=")[0].split("[")[0].lower()
    assert f"GET /root/pypi/+simple/{first}/" in requests, done.stdout[-3000:]
    assert pypi_mirror.startswith("http://127.0.0.1:")


def test_app_with_dependencies_and_no_pypi_mirror_is_refused_before_its_build(
    tmp_path: Path, registry: str, base_image: str
) -> None:
    import yaml

    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url})
    platform = yaml.safe_load((control / "cupaas.yaml").read_text())
    del platform["mirrors"]
    (control / "cupaas.yaml").write_text(yaml.safe_dump(platform))
    before = heads(gitops)

    done = subprocess.run([*cupaas_command(), "deploy", str(control), "tasks", "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "cupaas.yaml: mirrors.pypi: is not set, but tasks installs its dependencies from requirements.txt" \
        in done.stderr
    assert "Failed at step plan" in done.stderr and "Building" not in done.stdout
    assert heads(gitops) == before


def test_a_holder_left_by_a_killed_cupaas_is_removed_by_the_next_build(
    tmp_path: Path, registry: str, base_image: str
) -> None:
    import docker

    from generator.isolation.sandbox import LABEL

    dead = subprocess.Popen(["true"])
    dead.wait()
    client = docker.from_env()
    orphan = client.containers.create(base_image, ["sleep", "600"], network_mode="none",
                                      labels={LABEL: f"{socket.gethostname()}:{dead.pid}"})
    app = make_app_repo(tmp_path, "tasks")
    gitops = make_gitops_repo(tmp_path, initial_commit=True)
    control = make_control(tmp_path, registry, base_image, gitops.as_uri(), {"tasks": app.url})
    try:
        done = subprocess.run([*cupaas_command(), "deploy", str(control), "tasks", "--state-dir",
                               str(tmp_path / "s")], capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(orphan.id)
        # and the build's own holder is gone too (spares of this test process's own services may remain)
        mine = [c for c in client.containers.list(all=True, filters={"label": LABEL})
                if c.labels[LABEL].startswith(f"{socket.gethostname()}:")
                and c.labels[LABEL] != f"{socket.gethostname()}:{os.getpid()}"]
        assert mine == []
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            orphan.remove(force=True)
        client.close()
