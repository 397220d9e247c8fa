"""generator/live.py without a cluster: its settings and how it words a failure (the rollout itself is
followed on the local cluster in tests/test_cluster_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from generator.live import ClusterSettings, RolloutWatcher, _telling_line, cluster_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "control" / "cupaas.yaml"


def control_with(tmp_path: Path, cluster: object | None) -> Path:
    platform = yaml.safe_load(EXAMPLE.read_text())
    if cluster is not None:
        platform["cluster"] = cluster
    (tmp_path / "cupaas.yaml").write_text(yaml.safe_dump(platform))
    return tmp_path


def test_no_cluster_block_means_no_following(tmp_path: Path) -> None:
    assert cluster_settings(control_with(tmp_path, None)) is None


def test_cluster_block_gives_the_settings_with_defaults(tmp_path: Path) -> None:
    got = cluster_settings(control_with(tmp_path, {"ingress": "http://127.0.0.1:17080"}))

    assert got == ClusterSettings(kubeconfig=None, argocd_namespace="argocd", rollout_timeout=300.0,
                                  ingress="http://127.0.0.1:17080")


@pytest.mark.parametrize(("lines", "expected"), [
    (["Traceback (most recent call last):", "  File \"app.py\", line 3", "ModuleNotFoundError: No module named 'x'",
      "[2026-12-02 02:53:33 +0000] [1] [ERROR] Reason: Worker failed to boot."],
     "ModuleNotFoundError: No module named 'x'"),
    (["panic: runtime error: index out of range", "goroutine 1 [running]:"],
     "panic: runtime error: index out of range"),
    (["listening on :8080", "  ", "bye"], "bye"),
    ([], ""),
])
def test_the_line_that_says_why_a_pod_crashed(lines: list[str], expected: str) -> None:
    assert _telling_line(lines) == expected


COMMIT = "c" * 40


@pytest.mark.parametrize(("status", "expected"), [
    ({"operationState": {"phase": "Failed", "message": "one or more objects failed to apply",
                         "syncResult": {"revision": COMMIT}}}, "one or more objects failed to apply"),
    ({"operationState": {"phase": "Failed", "message": "an older sync", "syncResult": {"revision": "d" * 40}}}, None),
    ({"operationState": {"phase": "Succeeded", "syncResult": {"revision": COMMIT}}}, None),
    ({"conditions": [{"type": "ComparisonError", "message": "rpc error:\n kustomize build failed"}]},
     "ComparisonError: rpc error: kustomize build failed"),
    ({"conditions": [{"type": "SharedResourceWarning", "message": "ok"}]}, None),
    # Argo CD retrying a sync whose release hook failed: the operation is still Running.
    ({"operationState": {"phase": "Running", "message": "one or more synchronization tasks completed "
                         "unsuccessfully. Retrying attempt #2", "operation": {"sync": {"revision": COMMIT}},
                         "syncResult": {"revision": COMMIT, "resources": [
                             {"kind": "Job", "name": "procs-release", "hookPhase": "Failed",
                              "message": "Job has reached the specified backoff limit"}]}}},
     "the Job procs-release failed: Job has reached the specified backoff limit"),
    ({"operationState": {"phase": "Running", "syncResult": {"revision": "d" * 40, "resources": [
        {"kind": "Job", "name": "procs-release", "hookPhase": "Failed"}]}}}, None),
])
def test_argo_cd_failures_of_this_commit_only(status: dict[str, object], expected: str | None) -> None:
    assert RolloutWatcher._sync_failure(status, COMMIT) == expected


def test_a_failed_operation_without_a_revision_counts_when_it_started_after_the_commit() -> None:
    from datetime import UTC, datetime

    failed = {"operationState": {"phase": "Failed", "message": "Job has reached the specified backoff limit",
                                 "startedAt": "2026-12-02T03:20:05Z"}}
    commit_time = datetime(2026, 12, 2, 3, 20, 0, tzinfo=UTC)

    assert RolloutWatcher._sync_failure(failed, COMMIT, commit_time) == "Job has reached the specified backoff limit"
    assert RolloutWatcher._sync_failure(failed, COMMIT, datetime(2026, 12, 2, 3, 21, tzinfo=UTC)) is None
    assert RolloutWatcher._sync_failure(failed, COMMIT) is None
