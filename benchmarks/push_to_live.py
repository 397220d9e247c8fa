"""git push → the first answer of the new commit at the app's URL, on the local cluster, against the bare path.

    scripts/dev-env up && scripts/cluster up
    .venv/bin/python benchmarks/push_to_live.py [--rounds 3]

cupaas path, per round: a code-only commit of tests/apps/echo-app pushed to its bare repo, whose
post-receive hook posts to `cupaas serve` (loopback, unsigned); the job builds, pushes, commits to the
GitOps repo and follows the rollout (cupaas.yaml `cluster:`: Argo CD refreshed at once); a client
requests the URL through Traefik (`Host: echo.<domain>`) until the new release answers. Stages: accept
(the push, its hook included), the deploy steps from the service's step histogram (fetch, plan, build,
push, render, commit), Argo CD sync (the Application at the GitOps commit), rollout (the Deployment's
pods updated and available), first answer.

Bare path, same run, same app and Dockerfile: `docker build` + `docker push` + `kubectl set image` +
`kubectl rollout status` + the first answer through the same ingress, for a plain Deployment with the
same probes. The ratio and the difference say what cupaas adds on top of the floor of any build-based
deploy to Kubernetes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from deploy_support import export, make_app_repo  # noqa: E402
from webhook_support import commit_and_push, served  # noqa: E402

from generator.init import EXAMPLE_APP  # noqa: E402
from webhook.demo import argocd_bootstrap  # noqa: E402
from webhook.git_hook import install_post_receive  # noqa: E402

ECHO_APP = ROOT / "tests" / "apps" / "echo-app"
DOMAIN = "apps.bench.cupaas.test"
ENV = "production"
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
STEP_LINE = re.compile(r'^cupaas_deploy_step_seconds_sum\{step="([^"]+)"\} ([0-9.e+-]+)$', re.MULTILINE)


def setting(name: str, flag: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"push_to_live.py: set {name} (or {flag}): the output of scripts/dev-env up / scripts/cluster up")
    return value


class Kube:
    def __init__(self, kubectl: str, kubeconfig: str) -> None:
        self.base = [kubectl, "--kubeconfig", kubeconfig]

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, input=input, timeout=600)
        if check and done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def json(self, *args: str) -> dict[str, Any]:
        out = self.run(*args, "-o", "json", check=False)
        return json.loads(out) if out.strip() else {}


def answer(ingress: str, host: str) -> str | None:
    """The release the URL answers with, or None."""
    entry = urllib.parse.urlsplit(ingress)
    import http.client

    conn = http.client.HTTPConnection(entry.hostname or "127.0.0.1", entry.port or 80, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        body = response.read()
        return str(json.loads(body)["release"]) if response.status == 200 else None
    except (OSError, ValueError, KeyError):
        return None
    finally:
        conn.close()


def wait_answer(ingress: str, host: str, release: str, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer(ingress, host) == release:
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"{host} did not answer release {release} within {timeout:.0f}s")


def step_sums(service_base: str) -> dict[str, float]:
    with HTTP.open(f"{service_base}/metrics", timeout=10) as r:
        return {step: float(value) for step, value in STEP_LINE.findall(r.read().decode())}


def release_source(release: str) -> str:
    return (ECHO_APP / "app.py").read_text().replace('RELEASE = "1"', f'RELEASE = "{release}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    registry = setting("CUPAAS_TEST_REGISTRY", "registry=")
    mirror = setting("CUPAAS_TEST_PYPI_MIRROR", "pypi_mirror=")
    kubeconfig = setting("CUPAAS_TEST_KUBECONFIG", "kubeconfig=")
    cert = setting("CUPAAS_TEST_SEALING_CERT", "sealing_cert=")
    ingress = setting("CUPAAS_TEST_INGRESS", "ingress=")
    ingress_class = os.environ.get("CUPAAS_TEST_INGRESS_CLASS", "traefik")
    kube = Kube(os.environ.get("CUPAAS_TEST_CLUSTER_KUBECTL", "kubectl"), kubeconfig)
    cupaas = [str(ROOT / ".venv" / "bin" / "cupaas")]

    with tempfile.TemporaryDirectory(prefix="cupaas-bench-live-") as tmp:
        root = Path(tmp)
        control, gitops, gitops_bare = root / "control", root / "gitops", root / "gitops.git"
        subprocess.run([*cupaas, "init", str(control), str(gitops), "--domain", DOMAIN, "--registry", registry,
                        "--gitops-repo", gitops_bare.as_uri(), "--sealing-cert", cert, "--pypi-mirror", mirror,
                        "--ingress-class", ingress_class], check=True, capture_output=True)
        platform = yaml.safe_load((control / "cupaas.yaml").read_text())
        platform["cluster"] = {"kubeconfig": kubeconfig, "ingress": ingress, "rollout_timeout": 600}
        (control / "cupaas.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
        (control / "apps" / f"{EXAMPLE_APP}.yaml").unlink(missing_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(gitops_bare)], check=True)
        subprocess.run(["git", "push", "-q", gitops_bare.as_uri(), "HEAD:main"], cwd=gitops, check=True)
        app = make_app_repo(root, "echo", ECHO_APP)
        (control / "apps" / "echo.yaml").write_text(yaml.safe_dump({"repo": app.url, "branch": "main"}))
        kube.run("apply", "-k", str(argocd_bootstrap(root / "argocd", gitops_bare.as_uri(), "main", ENV)))
        host = f"echo.{DOMAIN}"
        # Every release of a run is new content: no build of this run hits a layer cached by an earlier run.
        run = uuid.uuid4().hex[:8]
        rows: list[dict[str, float]] = []
        bare_rows: list[dict[str, float]] = []
        try:
            with served(control, root / "state", workers=1, secret=None) as service:
                install_post_receive(app.bare, service.hook_url("github"), "github", None)
                print("first deploy (dependencies into the build cache, pods created) ...", flush=True)
                first_start = time.monotonic()
                push_round(service, app, kube, ingress, host, f"warm-up-{run}")
                print(f"  live in {time.monotonic() - first_start:.1f}s", flush=True)
                for i in range(args.rounds):
                    rows.append(push_round(service, app, kube, ingress, host, f"r{i}-{run}"))
                    print(f"  round {i}: " + ", ".join(f"{k} {v:.1f}s" for k, v in rows[-1].items()), flush=True)
            dockerfile = generated_dockerfile(control, app, root)
            bare_setup(kube, registry, ingress_class, dockerfile, app, root, run)
            for i in range(args.rounds):
                bare_rows.append(bare_round(kube, registry, ingress, dockerfile, app, root, f"b{i}-{run}"))
                print(f"  bare {i}: " + ", ".join(f"{k} {v:.1f}s" for k, v in bare_rows[-1].items()), flush=True)
        finally:
            kube.run("-n", "argocd", "delete", "application", "cupaas-root", "--ignore-not-found", "--wait=true",
                     check=False)
            kube.run("-n", "argocd", "delete", "applicationset", "--all", "--wait=true", check=False)
            for namespace in (f"echo-{ENV}", "bench-bare"):
                kube.run("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", check=False)
    report(rows, bare_rows)


def push_round(service: Any, app: Any, kube: Kube, ingress: str, host: str, release: str) -> dict[str, float]:
    before = step_sums(service.base)
    seen: dict[str, float] = {}
    stop = threading.Event()
    gitops_commit: dict[str, str] = {}

    def watch() -> None:
        while not stop.is_set():
            commit = gitops_commit.get("sha")
            if commit and "sync" not in seen:
                status = kube.json("-n", "argocd", "get", "application", f"echo-{ENV}").get("status", {})
                if status.get("sync", {}).get("revision") == commit and status["sync"].get("status") == "Synced":
                    seen["sync"] = time.monotonic()
            if "sync" in seen and "rollout" not in seen:
                d = kube.json("-n", f"echo-{ENV}", "get", "deployment", "echo")
                st, want = d.get("status", {}), d.get("spec", {}).get("replicas", 1)
                if (st.get("updatedReplicas") == want and st.get("availableReplicas") == want
                        and st.get("replicas") == want and st.get("observedGeneration") == d["metadata"]["generation"]):
                    seen["rollout"] = time.monotonic()
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    _, pushed = commit_and_push(app, f"Release {release}", {"app.py": release_source(release)})
    accepted = time.monotonic()
    [job_id] = pushed.job_ids
    while True:
        job = service.job(job_id)
        if job["state"] in ("committed", "live", "failed", "succeeded", "superseded"):
            break
        time.sleep(0.05)
    committed = time.monotonic()
    if job["state"] not in ("committed", "live"):
        raise SystemExit(f"job {job_id} ended {job['state']}: {job.get('error')}")
    gitops_commit["sha"] = job["gitops_commit"]
    first = wait_answer(ingress, host, release)
    while time.monotonic() - first < 120 and service.job(job_id)["state"] == "committed":
        time.sleep(0.1)
    live = time.monotonic()
    stop.set()
    watcher.join(5)
    after = step_sums(service.base)
    row = {"accept": accepted - start}
    row.update({step: after[step] - before.get(step, 0.0) for step in sorted(after)
                if after[step] - before.get(step, 0.0) > 0.0005})
    row["to commit"] = committed - start
    if "sync" in seen:
        row["argo sync"] = seen["sync"] - committed
    if "rollout" in seen and "sync" in seen:
        row["rollout"] = seen["rollout"] - seen["sync"]
    row["first answer"] = first - start
    row["job live"] = live - start
    return row


def generated_dockerfile(control: Path, app: Any, root: Path) -> str:
    from generator.loading import load_control_repo
    from generator.plugins import PluginRegistry
    from generator.releases import plan_app
    from generator.source import DirectorySource

    tree = export(app.bare, "main", root / "plan-src")
    _config, plan = plan_app(load_control_repo(control), "echo", DirectorySource(tree), PluginRegistry())
    return plan.dockerfile


BARE = """
apiVersion: v1
kind: Namespace
metadata: {name: bench-bare}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: bench-bare}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: IMAGE
        command: ["/bin/sh", "-c", "exec gunicorn app:app --bind 0.0.0.0:8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 5, timeoutSeconds: 3}
        startupProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 120}
        lifecycle: {preStop: {sleep: {seconds: 5}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench-bare}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: bench-bare}
spec:
  ingressClassName: CLASS
  rules:
  - host: bare.bench.cupaas.test
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}]}
"""


def bare_build(registry: str, dockerfile: str, app: Any, root: Path, release: str) -> str:
    context = root / f"bare-{release}"
    shutil.rmtree(context, ignore_errors=True)
    export(app.bare, "main", context)
    (context / "app.py").write_text(release_source(release))
    (context / "Dockerfile.bare").write_text(dockerfile)
    tag = f"{registry}/cupaas-bench/bare-echo:{release}"
    subprocess.run(["docker", "build", "--network", "host", "-q", "-f", str(context / "Dockerfile.bare"), "-t", tag,
                    str(context)], check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    pushed = subprocess.run(["docker", "push", tag], check=True, capture_output=True, text=True).stdout
    digest = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed)
    assert digest, pushed
    return f"{tag}@{digest.group(1)}"


def bare_setup(kube: Kube, registry: str, ingress_class: str, dockerfile: str, app: Any, root: Path,
               run: str) -> None:
    image = bare_build(registry, dockerfile, app, root, f"bare-{run}")
    kube.run("apply", "-f", "-", input=BARE.replace("IMAGE", image).replace("CLASS", ingress_class))
    kube.run("-n", "bench-bare", "rollout", "status", "deployment/web", "--timeout=300s")


def bare_round(kube: Kube, registry: str, ingress: str, dockerfile: str, app: Any, root: Path,
               release: str) -> dict[str, float]:
    start = time.monotonic()
    image = bare_build(registry, dockerfile, app, root, release)
    built = time.monotonic()
    kube.run("-n", "bench-bare", "set", "image", "deployment/web", f"web={image}")
    kube.run("-n", "bench-bare", "rollout", "status", "deployment/web", "--timeout=300s")
    rolled = time.monotonic()
    first = wait_answer(ingress, "bare.bench.cupaas.test", release)
    return {"build+push": built - start, "set image+rollout": rolled - built, "first answer": first - start}


def report(rows: list[dict[str, float]], bare_rows: list[dict[str, float]]) -> None:
    def median(values: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in values if key in r)

    print(f"\ncode-only change, warm caches, median of {len(rows)} rounds:")
    keys = [k for k in rows[0] if k not in ("first answer", "job live")]
    for key in keys:
        print(f"  cupaas  {key:<18} {median(rows, key):6.2f} s")
    c, b = median(rows, "first answer"), median(bare_rows, "first answer")
    print(f"  cupaas  git push -> first answer of the new commit: {c:6.2f} s "
          f"(job live at {median(rows, 'job live'):.2f} s)")
    for key in ("build+push", "set image+rollout"):
        print(f"  bare    {key:<18} {median(bare_rows, key):6.2f} s")
    print(f"  bare    docker build -> first answer:               {b:6.2f} s")
    print(f"  ratio cupaas / bare: {c / b:.2f}; cupaas adds {c - b:+.2f} s")


if __name__ == "__main__":
    main()
