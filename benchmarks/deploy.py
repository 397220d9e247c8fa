"""Push-to-commit time of `cupaas deploy` for a code-only change, against a plain docker build + push.

    scripts/dev-env up        # dockerd, the registry on 127.0.0.1:5000, the Python base image
    .venv/bin/python benchmarks/deploy.py [--rounds 5]

Each round commits a code-only change to the sample app (examples/tasks-app) in a local bare repo,
then runs the whole pipeline (fetch, plan, build, push, render, commit to a local GitOps repo) with
warm caches. The baseline, in the same run, is `docker build` + `docker push` of the same commit's
files with the same Dockerfile: the floor any build-based deploy pays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from deploy_support import AppRepo, export, make_app_repo, make_control, make_gitops_repo  # noqa: E402

from generator.builder import DockerBuilder  # noqa: E402
from generator.deploy import Deployer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--registry", default=os.environ.get("CUPAAS_TEST_REGISTRY", "127.0.0.1:5000"))
    parser.add_argument("--base-image", default=os.environ.get(
        "CUPAAS_TEST_PYTHON_BASE_IMAGE", "127.0.0.1:5000/cupaas/python-base:bookworm"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cupaas-bench-deploy-") as tmp:
        root = Path(tmp)
        app = make_app_repo(root, "benchapp")
        gitops = make_gitops_repo(root)
        control = make_control(root, args.registry, args.base_image, gitops.as_uri(), {"benchapp": app.url})
        deployer = Deployer(control_dir=control, builder=DockerBuilder(), state_dir=root / "state",
                            log=lambda s: None)
        start = time.perf_counter()
        deployer.deploy("benchapp")
        print(f"first deploy (the engine may already cache the dependency layer): {time.perf_counter() - start:6.2f} s")
        dockerfile = root / "Dockerfile.bench"
        dockerfile.write_text(generated_dockerfile(root, app, deployer))

        cupaas_times, plain_times = [], []
        for i in range(args.rounds):
            app.commit(f"Code-only change {i}", {"templates/bench.txt": f"round {i}\n"})
            start = time.perf_counter()
            result = deployer.deploy("benchapp")
            cupaas_times.append(time.perf_counter() - start)
            assert result.gitops_commit is not None

            context = export(app.bare, "main", root / f"ctx{i}")
            tag = f"{args.registry}/cupaas-bench/plain:{i}"
            start = time.perf_counter()
            build = ["docker", "build", "--network", "host", "-q", "-f", str(dockerfile), "-t", tag, str(context)]
            subprocess.run(build, check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
            subprocess.run(["docker", "push", "-q", tag], check=True, capture_output=True)
            plain_times.append(time.perf_counter() - start)

        c, p = statistics.median(cupaas_times), statistics.median(plain_times)
        print(f"code-only change, warm caches, median of {args.rounds} rounds:")
        for label, value, times in (("cupaas deploy, push to GitOps commit:", c, cupaas_times),
                                    ("baseline: docker build + docker push:", p, plain_times)):
            print(f"  {label:<38} {value:6.3f} s   (min {min(times):.3f}, max {max(times):.3f})")
        print(f"  ratio cupaas / baseline: {c / p:.2f}; cupaas overhead: {c - p:+.3f} s")


def generated_dockerfile(root: Path, app: AppRepo, deployer: Deployer) -> str:
    """The Dockerfile cupaas generated for the app, so the baseline builds exactly the same thing."""
    from generator.loading import load_control_repo
    from generator.plugins import PluginRegistry
    from generator.releases import plan_app
    from generator.source import DirectorySource

    tree = export(app.bare, "main", root / "plan-src")
    control = load_control_repo(deployer.control_dir)
    _config, plan = plan_app(control, "benchapp", DirectorySource(tree), PluginRegistry())
    return plan.dockerfile


if __name__ == "__main__":
    main()
