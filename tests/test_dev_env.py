"""scripts/dev-env: its stdout contract, that it leaves daemons it did not start alone, its apt parsing.

The docker-marked tests expect the environment to be up already (scripts/test starts it), so `up` here
is the fast path and nothing is stopped that other tests use.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "dev-env"


def dev_env(*args: str, state: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if state is not None:
        env["CUPAAS_DEV_ENV_DIR"] = str(state)
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    """The values the test command exported from `scripts/dev-env up`."""
    names = ("CUPAAS_TEST_REGISTRY", "CUPAAS_TEST_PYTHON_BASE_IMAGE", "CUPAAS_TEST_PYTHON_BASE_IMAGE_3_13",
             "CUPAAS_TEST_PYPI_MIRROR")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run the tests with scripts/test (it runs scripts/dev-env up)")
    return {n: os.environ[n] for n in names}


@pytest.mark.docker
def test_up_when_running_prints_only_the_settings(settings: dict[str, str]) -> None:
    result = dev_env("up")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"registry={settings['CUPAAS_TEST_REGISTRY']}",
        f"python_base_image={settings['CUPAAS_TEST_PYTHON_BASE_IMAGE']}",
        f"python_base_image_3_13={settings['CUPAAS_TEST_PYTHON_BASE_IMAGE_3_13']}",
        f"pypi_mirror={settings['CUPAAS_TEST_PYPI_MIRROR']}",
    ]
    assert "is up to date" in result.stderr  # the base images: a second run only checks the registry
    assert "-----> " in result.stderr


@pytest.mark.docker
def test_status_when_running_exits_zero(settings: dict[str, str]) -> None:
    result = dev_env("status")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"python_base_image: {settings['CUPAAS_TEST_PYTHON_BASE_IMAGE']}" in result.stdout.splitlines()
    assert f"python_base_image: {settings['CUPAAS_TEST_PYTHON_BASE_IMAGE_3_13']}" in result.stdout.splitlines()
    mirror = f"pypi_mirror: {settings['CUPAAS_TEST_PYPI_MIRROR']}"
    assert any(line.startswith(mirror) for line in result.stdout.splitlines())


@pytest.mark.docker
def test_up_and_down_leave_daemons_started_elsewhere_alone(settings: dict[str, str], tmp_path: pathlib.Path) -> None:
    up = dev_env("up", state=tmp_path)
    down = dev_env("down", state=tmp_path)

    assert up.returncode == 0, up.stderr
    assert up.stderr.count("not started by dev-env; left alone") == 3  # dockerd, registry, PyPI mirror
    assert not list(tmp_path.glob("*.pid"))
    assert down.returncode == 0, down.stderr
    assert dev_env("status").returncode == 0


def test_unknown_command_prints_usage_and_exits_2() -> None:
    result = dev_env("start")

    assert (result.returncode, result.stderr.strip()) == (2, "usage: scripts/dev-env up|down|status")
