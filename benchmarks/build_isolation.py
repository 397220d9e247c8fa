"""What isolated builds cost, and what the PyPI mirror's cache saves (issue: builds reach only the mirror).

Measured in one run, on the real engine, registry and devpi of `scripts/dev-env up`:

1. a cold build of the tasks sample (no build cache) through a devpi-server with an EMPTY cache, started
   here on its own port and directory, against the same cold build through the warm dev-env mirror;
2. a code-only rebuild (dependency layer cached) in the isolated network (holder container + relay),
   against the same rebuild with no network at all (`network_mode=none`, which needs no holder): the
   difference is what isolation adds to a code-only redeploy.

    .venv/bin/python benchmarks/build_isolation.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.builder import DockerBuilder  # noqa: E402
from generator.isolation.mirrors import BuildNetwork, build_network  # noqa: E402
from generator.loading import load_app_config  # noqa: E402
from generator.models import GitOpsSettings, Mirrors, Platform  # noqa: E402
from generator.plugins import PluginRegistry  # noqa: E402
from generator.runtimes import plan_build  # noqa: E402
from generator.source import DirectorySource  # noqa: E402

DEVPI = ROOT / ".state" / "dev-env" / "devpi" / "venv" / "bin"
REGISTRY = os.environ.get("CUPAAS_TEST_REGISTRY", "127.0.0.1:5000")
BASE = os.environ.get("CUPAAS_TEST_PYTHON_BASE_IMAGE", f"{REGISTRY}/cupaas/python:3.11")
WARM_MIRROR = os.environ.get("CUPAAS_TEST_PYPI_MIRROR", "http://127.0.0.1:3141/root/pypi/+simple/")
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_empty_devpi(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = root / "devpi"
    subprocess.run([str(DEVPI / "devpi-init"), "--serverdir", str(server)], check=True, capture_output=True)
    port = free_port()
    child = subprocess.Popen([str(DEVPI / "devpi-server"), "--serverdir", str(server), "--host", "127.0.0.1",
                              "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/root/pypi/+simple/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            HTTP.open(f"http://127.0.0.1:{port}/+api", timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    # The first request of a new devpi loads PyPI's project list: outside the measured build.
    HTTP.open(url + "pip/", timeout=600).read()
    return child, url


def plan(source: Path, mirror: str) -> tuple[str, BuildNetwork]:
    platform = Platform(domain="bench.example", registry=f"{REGISTRY}/cupaas-bench",
                        gitops=GitOpsSettings(repo="file:///unused"), runtimes={"python": {"base_image": BASE}},
                        mirrors=Mirrors(pypi=mirror))
    tree = DirectorySource(source)
    built = plan_build(PluginRegistry().runtime("python"), tree, load_app_config(tree), platform)
    return built.dockerfile, build_network(platform.mirrors, built.base_image)


def build(source: Path, dockerfile: str, network: BuildNetwork, tag: str) -> float:
    started = time.monotonic()
    DockerBuilder().build_and_push(source, dockerfile, f"{REGISTRY}/cupaas-bench/tasks", tag, {}, lambda _: None,
                                   network)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cupaas-bench-") as tmp:
        root = Path(tmp)
        source = root / "tasks"
        shutil.copytree(ROOT / "examples" / "tasks-app", source)
        child, empty_mirror = start_empty_devpi(root)
        try:
            dockerfile, empty_net = plan(source, empty_mirror)
            cold_empty = build(source, dockerfile.replace("WORKDIR /app", "WORKDIR /app\nRUN true # a"),
                               empty_net, "cold-empty")
        finally:
            child.terminate()
            child.wait(30)
        dockerfile, warm_net = plan(source, WARM_MIRROR)
        cold_warm = []
        for i in range(args.runs):
            marker = f"WORKDIR /app\nRUN true # warm {i} {time.time()}"
            cold_warm.append(build(source, dockerfile.replace("WORKDIR /app", marker), warm_net, f"cold-warm-{i}"))
        print(f"cold build of the tasks sample, empty mirror cache: {cold_empty:.2f} s")
        print(f"cold build of the tasks sample, warm mirror cache:  median {statistics.median(cold_warm):.2f} s "
              f"over {args.runs} (min {min(cold_warm):.2f}, max {max(cold_warm):.2f}); "
              f"ratio {cold_empty / statistics.median(cold_warm):.2f}")
        # Code-only rebuilds: the dependency layer is cached; only COPY . . and later steps run.
        build(source, dockerfile, warm_net, "warmup")
        # Same build arguments (they key the dependency layer), but no holder: the build reaches nothing.
        no_network = BuildNetwork(build_args=warm_net.build_args)
        isolated, unnetworked = [], []
        for i in range(args.runs):
            (source / "code-change.txt").write_text(f"{i} {time.time()}\n")
            isolated.append(build(source, dockerfile, warm_net, f"code-iso-{i}"))
            (source / "code-change.txt").write_text(f"{i} {time.time()} b\n")
            unnetworked.append(build(source, dockerfile, no_network, f"code-none-{i}"))
        iso, none = statistics.median(isolated), statistics.median(unnetworked)
        print(f"code-only rebuild + push, isolated network (holder + relay): median {iso:.3f} s")
        print(f"code-only rebuild + push, no network at all (baseline):      median {none:.3f} s")
        print(f"isolation adds {iso - none:+.3f} s per build (ratio {iso / none:.2f})")


if __name__ == "__main__":
    main()
