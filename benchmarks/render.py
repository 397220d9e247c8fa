"""Render N generated apps and compare with `kubectl kustomize` building the same overlays in one batch.

    .venv/bin/python benchmarks/render.py [--apps 1000] [--kubectl kubectl]

Prints apps/second for each rendering phase, then the time kustomize needs to build every overlay in
batched calls (the fastest way to build many overlays), and the ratio of the two.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.gitops_tree import apply  # noqa: E402
from generator.loading import load_control_repo  # noqa: E402
from generator.models import ImageRef  # noqa: E402
from generator.plugins import PluginRegistry  # noqa: E402
from generator.releases import cert_sealer, release_from_source, render_control  # noqa: E402
from generator.sealing import SealingCert  # noqa: E402
from generator.source import DirectorySource  # noqa: E402


def make_control(root: Path, apps: int) -> Path:
    control = root / "control"
    (control / "apps").mkdir(parents=True)
    (control / "cupaas.yaml").write_text(
        "domain: apps.example.com\nregistry: 127.0.0.1:5000/cupaas\n"
        "gitops: {repo: 'file:///srv/gitops.git', review: direct}\n"
        "ingress: {class: nginx, cluster_issuer: letsencrypt-prod}\n")
    shutil.copy(ROOT / "examples/control/sealing-cert.pem", control / "sealing-cert.pem")
    for i in range(apps):
        (control / "apps" / f"app{i:04d}.yaml").write_text(
            f"repo: https://git.example.com/acme/app{i}.git\nbranch: main\n"
            f"env: {{LOG_LEVEL: info, INDEX: '{i}'}}\nreplicas: {1 + i % 3}\n")
    return control


def make_sources(root: Path) -> tuple[Path, Path]:
    plain, with_db = root / "src-plain", root / "src-db"
    for src, services in ((plain, ""), (with_db, "services: [mongodb]\n")):
        src.mkdir()
        (src / ".cupaas").write_text(f"runtime: python\n{services}healthcheck: /healthz\n")
        (src / "requirements.txt").write_text("flask\ngunicorn\n")
        (src / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    return plain, with_db


def timed(label: str, apps: int, func):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = func()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:8.3f} s   {apps / seconds:10.0f} apps/s")
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="overlays per kustomize call")
    parser.add_argument("--kubectl", default=os.environ.get("CUPAAS_KUBECTL", "kubectl"))
    args = parser.parse_args()
    n = args.apps
    with tempfile.TemporaryDirectory(prefix="cupaas-bench-") as tmp:
        root = Path(tmp)
        control_dir = make_control(root, n)
        plain, with_db = make_sources(root)
        out = root / "gitops"
        print(f"rendering {n} apps (every other one with the mongodb add-on)")
        control, _ = timed("load + validate control repo", n, lambda: load_control_repo(control_dir))
        registry = PluginRegistry()
        image = ImageRef.parse("127.0.0.1:5000/cupaas/app:" + "a" * 40 + "@sha256:" + "b" * 64)

        def releases():  # type: ignore[no-untyped-def]
            return {name: release_from_source(control, name, DirectorySource(with_db if i % 2 else plain), image,
                                              None, registry) for i, name in enumerate(control.apps)}

        resolved, t_plan = timed("read .cupaas + plan builds", n, releases)
        sealer = cert_sealer(SealingCert.load(control_dir / "sealing-cert.pem"))
        result, t_first = timed("render in memory (first: seals new creds)", n,
                                lambda: render_control(control, out, resolved, None, registry, sealer))
        _, t_write = timed("write tree", n, lambda: apply(out, result.files, result.rendered_apps, (), result.seeded))
        again, t_again = timed("re-render (reuses sealed values)", n,
                               lambda: render_control(control, out, resolved, None, registry, sealer))
        changed, _ = timed("apply re-render (nothing changes)", n,
                           lambda: apply(out, again.files, again.rendered_apps, (), again.seeded))
        assert changed == [], f"re-render changed {len(changed)} files"
        files = len(result.files)
        total = t_plan + t_first + t_write
        print(f"{'total, first render':<44} {total:8.3f} s   {n / total:10.0f} apps/s   ({files} files)")

        overlays = sorted(out.glob("apps/*/overlays/*"))
        # One kustomize call per chunk: a single call over 1000 overlays is superlinear (measured 206 s).
        start = time.perf_counter()
        docs = 0
        for first in range(0, len(overlays), args.batch):
            batch = out / f"batch{first}"
            batch.mkdir()
            (batch / "kustomization.yaml").write_text("resources:\n" + "".join(
                f"- ../{o.relative_to(out).as_posix()}\n" for o in overlays[first:first + args.batch]))
            built = subprocess.run([args.kubectl, "kustomize", str(batch)], capture_output=True, text=True,
                                   check=True)
            docs += built.stdout.count("\nkind: ") + built.stdout.startswith("kind: ")
        t_kustomize = time.perf_counter() - start
        print(f"{'baseline: kubectl kustomize, batches of ' + str(args.batch):<44} {t_kustomize:8.3f} s   "
              f"{n / t_kustomize:10.0f} apps/s   ({len(overlays)} overlays, {docs} objects)")
        print(f"ratio: cupaas first render / kustomize build = {total / t_kustomize:.2f}; "
              f"re-render / kustomize build = {t_again / t_kustomize:.2f}")


if __name__ == "__main__":
    main()
