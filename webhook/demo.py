"""`cupaas demo`: the whole loop on one machine, with local stand-ins for a forge and a cluster.

Bare git repos play the forge (a post-receive hook posts a signed push, as GitHub would), the local
registry and Docker engine from scripts/dev-env play the cluster's registry and builder, and the
built image is started locally where Argo CD would roll it out. Everything lives under one
directory; a second run reuses it and redeploys a code-only change.

With a cluster (`cupaas demo --cluster`, the settings `scripts/cluster up` prints), nothing is started
locally: Argo CD is bootstrapped with the project's argocd/ folder, syncs the GitOps commit, the node runs
the pods, and the demo stores and lists a task through the ingress controller at <app>.<domain>.
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

from generator.atomic_file import write_atomic
from generator.errors import UserError
from generator.images.base_images import BaseImages
from generator.loading import load_platform
from generator.plugins import builtin_dir

from .events import app_secret
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


@dataclass(frozen=True)
class ClusterTarget:
    """Where `cupaas demo --cluster` deploys: what `scripts/cluster up` prints."""

    kubeconfig: Path
    sealing_cert: Path
    ingress: str  # http://127.0.0.1:PORT, the ingress controller's entry point
    ingress_class: str
    mongodb_image: str | None = None
    kubectl: str = "kubectl"
    environment: str = "production"


@dataclass
class Demo:
    root: Path
    registry: str
    pypi_mirror: str
    echo: Echo = print
    kubectl: str = "kubectl"
    cluster: ClusterTarget | None = None
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
        """The cluster controller's certificate, or a local stand-in for it (kept under the demo dir)."""
        if self.cluster:
            try:
                return self.cluster.sealing_cert.read_bytes()
            except OSError as e:
                raise DemoError(f"cannot read the cluster's sealing certificate {self.cluster.sealing_cert}: "
                                f"{e.strerror}; `scripts/cluster up` prints its path (sealing_cert=)") from None
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

    def app_secret_file(self, app: str) -> Path:
        """The secret of ``app``'s hook, derived from the master secret as `cupaas webhook-secret` prints it."""
        path = self.root / f"webhook-secret-{app}"
        write_atomic(path, app_secret(self.secret_file().read_bytes(), app), mode=0o600)
        return path

    def seed_control(self, work: Path) -> None:
        platform = {
            "domain": DEMO_DOMAIN,
            "registry": f"{self.registry}/cupaas-demo",
            "environment": "production",
            "gitops": {"repo": self.bare("gitops").as_uri(), "branch": "main", "review": "direct"},
            "ingress": {"class": self.cluster.ingress_class if self.cluster else "nginx"},
            "sealing": {"cert": "sealing-cert.pem"},
            # The only index builds reach; the base images are the defaults `cupaas images build` makes.
            "mirrors": {"pypi": self.pypi_mirror},
        }
        if self.cluster and self.cluster.mongodb_image:
            platform["addons"] = {"mongodb": {"image": self.cluster.mongodb_image}}
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

    # --- on a cluster -------------------------------------------------------------------------------
    def kubectl_run(self, *args: str, input: str | None = None) -> str:
        assert self.cluster
        command = [self.cluster.kubectl, "--kubeconfig", str(self.cluster.kubeconfig), *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, input=input, timeout=120,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DemoError(f"kubectl {args[0]} failed: {e}") from None
        if done.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args[:3])} failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def check_cluster(self) -> None:
        assert self.cluster
        if not self.cluster.kubeconfig.is_file():
            raise DemoError(f"no kubeconfig at {self.cluster.kubeconfig}; start the cluster with `scripts/cluster up`")
        self.kubectl_run("get", "--raw", "/readyz")

    def bootstrap_argocd(self) -> None:
        """What docs/install.md has a user do once: the argocd/ folder, its params.yaml filled in, applied."""
        assert self.cluster
        target = argocd_bootstrap(self.root / "argocd", self.bare("gitops").as_uri(), "main",
                                  self.cluster.environment)
        self.kubectl_run("apply", "-k", str(target))

    def application(self) -> dict[str, Any]:
        assert self.cluster
        name = f"{APP}-{self.cluster.environment}"
        done = subprocess.run([self.cluster.kubectl, "--kubeconfig", str(self.cluster.kubeconfig), "-n", "argocd",
                               "get", "application", name, "-o", "json"], capture_output=True, text=True, timeout=60)
        found: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {}
        return found

    def wait_live(self, gitops_commit: str, timeout: float = 600) -> None:
        """Until Argo CD has synced that commit and counts the app Healthy; progress every 10 s."""
        start = last_note = time.monotonic()
        while True:
            status = self.application().get("status", {})
            sync, health = status.get("sync", {}), status.get("health", {})
            if sync.get("revision") == gitops_commit and sync.get("status") == "Synced" \
                    and health.get("status") == "Healthy":
                return
            now = time.monotonic()
            if now - start > timeout:
                raise DemoError(f"Argo CD did not report {APP} Synced and Healthy at {gitops_commit[:12]} within "
                                f"{timeout:.0f}s (sync {sync.get('status')}, health {health.get('status')}: "
                                f"{health.get('message', '')}); see `kubectl -n argocd get application "
                                f"{APP}-{self.cluster.environment if self.cluster else ''} -o yaml`")
            if now - last_note > 10:
                self.echo(f"       ... sync {sync.get('status', '-')}, health {health.get('status', '-')} "
                          f"for {now - start:.0f}s")
                last_note = now
            time.sleep(1)

    def ingress_request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import http.client
        import urllib.parse

        assert self.cluster
        entry = urllib.parse.urlsplit(self.cluster.ingress)
        conn = http.client.HTTPConnection(entry.hostname or "127.0.0.1", entry.port or 80, timeout=10)
        try:
            headers = {"Host": f"{APP}.{DEMO_DOMAIN}", "Content-Type": "application/json"}
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def store_a_task(self, title: str, timeout: float = 120) -> list[str]:
        """POST a task through the ingress (retrying while the database starts), then list the tasks."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, body = self.ingress_request("POST", "/api/tasks", json.dumps({"title": title}).encode())
            except OSError as e:
                status, body = 0, str(e).encode()
            if status == 201:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"POST /api/tasks through {self.cluster.ingress if self.cluster else ''} answered "
                                f"{status}: {body[:300].decode(errors='replace')}")
            time.sleep(1)
        status, body = self.ingress_request("GET", "/api/tasks")
        if status != 200:
            raise DemoError(f"GET /api/tasks answered {status}: {body[:300].decode(errors='replace')}")
        return [str(task["title"]) for task in json.loads(body)]

    def stop_all(self) -> None:
        while self.started:
            self.started.pop()()


def argocd_bootstrap(target: Path, gitops_repo: str, branch: str, environment: str) -> Path:
    """The project's argocd/ folder copied to ``target`` with params.yaml filled in, ready for
    `kubectl apply -k` (docs/install.md's one-time step)."""
    source = builtin_dir("argocd")
    if not (source / "kustomization.yaml").is_file():
        raise DemoError(f"the Argo CD bootstrap folder is missing at {source}")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"].update(gitopsRepo=gitops_repo, gitopsBranch=branch, environment=environment)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def run_demo(root: Path, registry: str, pypi_mirror: str, once: bool, echo: Echo = print,
             kubectl: str = "kubectl", cluster: ClusterTarget | None = None) -> int:
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root=root, registry=registry, pypi_mirror=pypi_mirror, echo=echo, kubectl=kubectl, cluster=cluster)
    try:
        with demo.step(f"Checking the local registry ({registry}) and Docker engine"):
            demo.check_infrastructure()
        if cluster:
            with demo.step(f"Checking the cluster ({cluster.kubeconfig})"):
                demo.check_cluster()
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
        if cluster:
            with demo.step("Bootstrapping Argo CD with the argocd/ folder (kubectl apply -k)"):
                demo.bootstrap_argocd()
        with demo.step("Starting the webhook service (cupaas serve) on loopback"):
            service = demo.start_service(_free_port())
            echo(f"       {service} (log: {root}/service.log)")
        install_post_receive(demo.bare(APP), f"{service}/hooks/github", forge="github",
                             secret_file=demo.app_secret_file(APP))
        with demo.step("git push: a new commit of the app (the post-receive hook posts a signed push)"):
            commit, job_id = demo.push_change()
        echo(f"-----> Following job {job_id} (commit {commit[:12]})")
        job = demo.follow(service, job_id)
        if job["state"] != "succeeded":
            raise DemoError(f"the deploy job ended {job['state']}: {job.get('error')}")
        with demo.step("The GitOps repo now holds the deploy commit"):
            tree = demo.summarize_gitops(job.get("gitops_commit"))
        if cluster:
            with demo.step("Argo CD syncs the commit; the node runs the pods"):
                demo.wait_live(str(job["gitops_commit"]))
            host = f"{APP}.{DEMO_DOMAIN}"
            with demo.step(f"Storing a task through the ingress ({cluster.ingress}, Host: {host})"):
                title = f"stored by cupaas demo at {dt.datetime.now(dt.UTC):%H:%M:%S}"
                titles = demo.store_a_task(title)
                echo(f"       GET /api/tasks lists {len(titles)} task(s), the newest: {titles[0]!r}")
            echo(f"-----> {APP} answers at http://{host} through the ingress: "
                 f"curl -H 'Host: {host}' {cluster.ingress}/")
        else:
            with demo.step("Starting the built image locally (Argo CD would roll it out on a cluster)"):
                url = demo.run_app(tree)
            echo(f"-----> {APP} answers at {url}  (GET {url}/healthz: 200)")
        echo(f"       image {job['image']}")
        kept = " (the app stays deployed on the cluster)" if cluster else ""
        if once:
            echo(f"-----> Demo complete; stopping everything it started{kept}")
            return 0
        echo("       Open the URL in a browser. Edit the app under "
             f"{demo.work(APP)} and run the demo again for a code-only redeploy. "
             f"Ctrl-C stops everything the demo started{kept}.")
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
