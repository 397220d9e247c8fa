"""`cupaas demo`: the whole loop on one machine, with local stand-ins for a forge and a cluster.

Bare git repos play the forge (a post-receive hook posts a signed push, as GitHub would), the local
registry and Docker engine from scripts/dev-env play the cluster's registry and builder, and the
built image is started locally where Argo CD would roll it out. Everything lives under one
directory; a second run reuses it and redeploys a code-only change.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from generator.errors import UserError
from generator.images.base_images import BaseImages
from generator.loading import load_platform
from generator.plugins import builtin_dir

from .git_hook import install_post_receive

APP = "tasks"
DEMO_DOMAIN = "apps.localhost"
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never via a proxy
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "cupaas demo", "GIT_AUTHOR_EMAIL": "demo@cupaas.localhost",
                "GIT_COMMITTER_NAME": "cupaas demo", "GIT_COMMITTER_EMAIL": "demo@cupaas.localhost"}
Echo = Callable[[str], None]


class DemoError(UserError):
    """A demo step failed; the message says which and what to do."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_IDENTITY, "GIT_TERMINAL_PROMPT": "0"})
    if done.returncode != 0:
        raise DemoError(f"git {args[0]} failed in {cwd}: {done.stderr.strip()[-500:]}")
    return done.stdout + done.stderr


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with HTTP.open(url, timeout=timeout) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


@dataclass
class Demo:
    root: Path
    registry: str
    pypi_mirror: str
    echo: Echo = print
    kubectl: str = "kubectl"
    started: list[Callable[[], None]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    # --- layout -------------------------------------------------------------------------------------
    @property
    def git_dir(self) -> Path:
        return self.root / "git"

    def bare(self, name: str) -> Path:
        return self.git_dir / f"{name}.git"

    def work(self, name: str) -> Path:
        return self.root / "work" / name

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.monotonic()
        self.echo(f"-----> {title}")
        yield
        took = time.monotonic() - start
        if took >= 1:
            self.echo(f"       done in {took:.1f}s")

    # --- pieces -------------------------------------------------------------------------------------
    def check_infrastructure(self) -> None:
        try:
            status, _ = _get(f"http://{self.registry}/v2/", timeout=3)
        except OSError:
            status = 0
        if status != 200:
            raise DemoError(f"no registry answers at {self.registry}; start it with `scripts/dev-env up`")
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoError("the Docker engine does not answer; start it with `scripts/dev-env up`")

    def ensure_repo(self, name: str, seed: Callable[[Path], None]) -> bool:
        """A bare repo plus a work clone; seeded and pushed once. True when it was created now."""
        bare, work = self.bare(name), self.work(name)
        if bare.is_dir() and work.is_dir():
            return False
        shutil.rmtree(bare, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=self.root)
        work.mkdir(parents=True)
        _git("init", "-q", "-b", "main", cwd=work)
        _git("remote", "add", "origin", bare.as_uri(), cwd=work)
        seed(work)
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "--allow-empty", "-m", f"Create the {name} repo", cwd=work)
        _git("push", "-q", "origin", "main", cwd=work)
        return True

    def sealing_cert(self) -> bytes:
        """A local stand-in for the cluster's sealed-secrets controller key (kept under the demo dir)."""
        key_file, cert_file = self.root / "sealing-key.pem", self.root / "sealing-cert.pem"
        if not cert_file.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cupaas demo sealing key")])
            now = time.time()
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(dt.datetime.fromtimestamp(now - 60, dt.UTC))
                    .not_valid_after(dt.datetime.fromtimestamp(now + 3650 * 86400, dt.UTC))
                    .sign(key, hashes.SHA256()))
            key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
            key_file.chmod(0o600)
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_file.read_bytes()

    def secret_file(self) -> Path:
        path = self.root / "webhook-secret"
        if not path.exists():
            path.write_text(secrets.token_hex(24))
            path.chmod(0o600)
        return path

    def seed_control(self, work: Path) -> None:
        platform = {
            "domain": DEMO_DOMAIN,
            "registry": f"{self.registry}/cupaas-demo",
            "environment": "production",
            "gitops": {"repo": self.bare("gitops").as_uri(), "branch": "main", "review": "direct"},
            "ingress": {"class": "nginx"},
            "sealing": {"cert": "sealing-cert.pem"},
            # The only index builds reach; the base images are the defaults `cupaas images build` makes.
            "mirrors": {"pypi": self.pypi_mirror},
        }
        text = "# cupaas demo platform settings\n" + yaml.safe_dump(platform, sort_keys=False)
        (work / "cupaas.yaml").write_text(text)
        (work / "apps").mkdir(exist_ok=True)
        (work / "sealing-cert.pem").write_bytes(self.sealing_cert())

    def base_images(self) -> None:
        """`cupaas images build` for the demo platform: seconds when the images are already there."""
        platform = load_platform(self.work("control"), "cupaas.yaml")
        for image in BaseImages(platform, log=lambda line: self.echo(f"       {line.removeprefix('-----> ')}")
                                ).build(["3.13"]):
            self.echo(f"       image={image}")

    def register_app(self) -> bool:
        """Commit apps/tasks.yaml to the control repo, exactly as a user would. True if it was new."""
        work = self.work("control")
        entry = work / "apps" / f"{APP}.yaml"
        if entry.exists():
            return False
        entry.write_text(yaml.safe_dump({"repo": self.bare(APP).as_uri(), "branch": "main",
                                         "env": {"LOG_LEVEL": "info"}, "replicas": 1}, sort_keys=False))
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", f"Register {APP}", cwd=work)
        _git("push", "-q", "origin", "main", cwd=work)
        return True

    def start_service(self, port: int) -> str:
        log = open(self.root / "service.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        env = {**os.environ, "CUPAAS_WEBHOOK_SECRET": self.secret_file().read_text()}
        command = [sys.executable, "-m", "webhook.cli", "serve", self.bare("control").as_uri(), "--host",
                   "127.0.0.1", "--port", str(port), "--state-dir", str(self.root / "state"), "--workers", "1"]
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

        def stop() -> None:
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(35)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()

        self.started.append(stop)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.poll() is not None:
                tail = (self.root / "service.log").read_text(errors="replace")[-1500:]
                raise DemoError(f"the webhook service exited at start; its log ends with:\n{tail}")
            with suppress(OSError):
                if _get(f"{url}/healthz", timeout=1)[0] == 200:
                    return url
            time.sleep(0.2)
        raise DemoError(f"the webhook service did not answer on {url} within 60 s (log: {self.root}/service.log)")

    def push_change(self) -> tuple[str, str]:
        """Commit and push a change to the app; return (commit, job id) from the hook's answer."""
        work = self.work(APP)
        runs = len(list((work / "demo-runs").glob("*.txt"))) if (work / "demo-runs").is_dir() else 0
        (work / "demo-runs").mkdir(exist_ok=True)
        (work / "demo-runs" / f"{runs + 1:03d}.txt").write_text(f"cupaas demo run {runs + 1}\n")
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", f"Demo change {runs + 1}", cwd=work)
        output = _git("push", "origin", "main", cwd=work)
        commit = _git("rev-parse", "HEAD", cwd=work).strip()
        for line in output.splitlines():
            if "cupaas:" in line:
                self.echo(f"       {line.strip()}")
                _, _, rest = line.partition("cupaas:")
                status, _, body = rest.strip().partition(" ")
                if status in ("200", "202"):
                    jobs = json.loads(body).get("jobs") or []
                    if jobs:
                        return commit, str(jobs[0])
                raise DemoError(f"the webhook refused the push: {rest.strip()}")
        raise DemoError(f"the post-receive hook gave no answer; git push said:\n{output}")

    def follow(self, service: str, job_id: str) -> dict[str, Any]:
        shown = 0
        start = time.monotonic()
        last_note = start
        while True:
            status, body = _get(f"{service}/jobs/{job_id}")
            if status != 200:
                raise DemoError(f"GET /jobs/{job_id} answered {status}")
            job: dict[str, Any] = json.loads(body)
            lines = (job.get("log") or "").splitlines()
            for line in lines[shown:]:
                self.echo(line)
            shown = len(lines)
            if job["state"] in ("succeeded", "failed", "superseded"):
                return job
            if time.monotonic() - last_note > 10:
                self.echo(f"       ... {job['state']} for {time.monotonic() - start:.0f}s")
                last_note = time.monotonic()
            time.sleep(0.4)

    def summarize_gitops(self, gitops_commit: str | None) -> Path:
        bare = self.bare("gitops")
        shown = _git("show", "--stat", "--format=%h %s", gitops_commit or "main", cwd=bare)
        for line in shown.strip().splitlines():
            self.echo(f"       {line}")
        tree = self.root / "gitops-checkout"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        archive = subprocess.run(["git", "archive", "main"], cwd=bare, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        overlay = tree / "apps" / APP / "overlays" / "production"
        built = subprocess.run([self.kubectl, "kustomize", str(overlay)], capture_output=True, text=True)
        if built.returncode != 0:
            raise DemoError(f"kubectl kustomize {overlay} failed: {built.stderr.strip()}")
        kinds: dict[str, int] = {}
        for doc in yaml.safe_load_all(built.stdout):
            if doc:
                kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        self.echo("       kubectl kustomize builds: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        return tree

    def run_app(self, tree: Path) -> str:
        record = yaml.safe_load((tree / "apps" / APP / "release.yaml").read_text())
        registration = yaml.safe_load((self.work("control") / "apps" / f"{APP}.yaml").read_text())
        port = _free_port()
        command = str(record["start_command"]).replace("0.0.0.0", "127.0.0.1")
        name = f"cupaas-demo-{APP}-{port}"
        env = [arg for k, v in sorted((registration.get("env") or {}).items()) for arg in ("-e", f"{k}={v}")]
        run = ["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "-e", f"PORT={port}", *env,
               str(record["image"]), "/bin/sh", "-c", f"exec {command}"]
        done = subprocess.run(run, capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoError(f"docker run failed: {done.stderr.strip()}")

        def stop() -> None:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)

        self.started.append(stop)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with suppress(OSError):
                if _get(f"{url}/healthz", timeout=1)[0] == 200:
                    return url
            time.sleep(0.2)
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        tail = (logs.stdout + logs.stderr)[-1500:]
        raise DemoError(f"the app did not answer on {url}/healthz; its log ends with:\n{tail}")

    def stop_all(self) -> None:
        while self.started:
            self.started.pop()()


def run_demo(root: Path, registry: str, pypi_mirror: str, once: bool, echo: Echo = print,
             kubectl: str = "kubectl") -> int:
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root=root, registry=registry, pypi_mirror=pypi_mirror, echo=echo, kubectl=kubectl)
    try:
        with demo.step(f"Checking the local registry ({registry}) and Docker engine"):
            demo.check_infrastructure()
        with demo.step(f"Preparing git repos under {root}/git (they stand in for your forge)"):
            seeds: list[tuple[str, Callable[[Path], None]]] = [
                ("gitops", lambda w: None), ("control", demo.seed_control), (APP, _seed_app)]
            for name, seed in seeds:
                created = demo.ensure_repo(name, seed)
                echo(f"       {'created' if created else 'reusing'} {demo.bare(name)}")
        with demo.step("Base images from Debian packages (cupaas images build)"):
            demo.base_images()
        with demo.step("Registering the app: apps/tasks.yaml in the control repo"):
            echo("       committed and pushed" if demo.register_app() else "       already registered")
        with demo.step("Starting the webhook service (cupaas serve) on loopback"):
            service = demo.start_service(_free_port())
            echo(f"       {service} (log: {root}/service.log)")
        install_post_receive(demo.bare(APP), f"{service}/hooks/github", forge="github",
                             secret_file=demo.secret_file())
        with demo.step("git push: a new commit of the app (the post-receive hook posts a signed push)"):
            commit, job_id = demo.push_change()
        echo(f"-----> Following job {job_id} (commit {commit[:12]})")
        job = demo.follow(service, job_id)
        if job["state"] != "succeeded":
            raise DemoError(f"the deploy job ended {job['state']}: {job.get('error')}")
        with demo.step("The GitOps repo now holds the deploy commit"):
            tree = demo.summarize_gitops(job.get("gitops_commit"))
        with demo.step("Starting the built image locally (Argo CD would roll it out on a cluster)"):
            url = demo.run_app(tree)
        echo(f"-----> {APP} answers at {url}  (GET {url}/healthz: 200)")
        echo(f"       image {job['image']}")
        if once:
            echo("-----> Demo complete; stopping everything it started")
            return 0
        echo("       Open the URL in a browser. Edit the app under "
             f"{demo.work(APP)} and run the demo again for a code-only redeploy. Ctrl-C stops everything.")
        with suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
        echo("-----> Stopping everything the demo started")
        return 0
    finally:
        demo.stop_all()


def _seed_app(work: Path) -> None:
    source = builtin_dir("examples") / "tasks-app"
    if not source.is_dir():
        raise DemoError(f"the sample app is missing at {source}")
    shutil.copytree(source, work, dirs_exist_ok=True)
