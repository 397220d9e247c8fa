"""A builder that builds nothing: `cupaas worker --stub-build SECONDS`, for tests and benchmarks of the queue.

Everything else of a deploy is real (fetch, plan, render, the GitOps commit); only the image is made up,
after ``seconds`` of waiting that stand for a build. Its digest depends on the repository and tag only, so
re-running a job yields the same image and, with it, the same GitOps tree.
"""

from __future__ import annotations

import hashlib
import pathlib
import time
from collections.abc import Callable, Mapping

from generator.isolation.mirrors import BuildNetwork
from generator.models import ImageRef


class StubBuilder:
    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def build_and_push(self, context: pathlib.Path, dockerfile: str, repository: str, tag: str,
                       labels: Mapping[str, str], log: Callable[[str], None],
                       network: BuildNetwork | None = None) -> ImageRef:
        log(f"-----> Stub build of {repository}:{tag} ({self.seconds:g}s, nothing is built or pushed)")
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:  # log as a build does, so an abandoned job unwinds
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
            log("       building ...")
        digest = hashlib.sha256(f"{repository}:{tag}".encode()).hexdigest()
        return ImageRef(repository, f"sha256:{digest}", tag)
