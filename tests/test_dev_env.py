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
    names = ("CUPAAS_TEST_REGISTRY", "CUPAAS_TEST_PYTHON_BASE_IMAGE")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run the tests with scripts/test (it runs scripts/dev-env up)")
    return {n: os.environ[n] for n in names}


@pytest.mark.docker
def test_up_when_running_prints_only_the_two_settings(settings: dict[str, str]) -> None:
    result = dev_env("up")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"registry={settings['CUPAAS_TEST_REGISTRY']}",
        f"python_base_image={settings['CUPAAS_TEST_PYTHON_BASE_IMAGE']}",
    ]
    assert "-----> " in result.stderr


@pytest.mark.docker
def test_status_when_running_exits_zero(settings: dict[str, str]) -> None:
    result = dev_env("status")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"python_base_image: {settings['CUPAAS_TEST_PYTHON_BASE_IMAGE']}" in result.stdout.splitlines()


@pytest.mark.docker
def test_up_and_down_leave_daemons_started_elsewhere_alone(settings: dict[str, str], tmp_path: pathlib.Path) -> None:
    up = dev_env("up", state=tmp_path)
    down = dev_env("down", state=tmp_path)

    assert up.returncode == 0, up.stderr
    assert up.stderr.count("not started by dev-env; left alone") == 2
    assert not list(tmp_path.glob("*.pid"))
    assert down.returncode == 0, down.stderr
    assert dev_env("status").returncode == 0


def test_unknown_command_prints_usage_and_exits_2() -> None:
    result = dev_env("start")

    assert (result.returncode, result.stderr.strip()) == (2, "usage: scripts/dev-env up|down|status")


DEB822 = """\
Types: deb deb-src
# a comment
URIs: http://mirror.example/debian http://other.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: https://deb.nodesource.example/node_20.x
Suites: nodistro
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main
deb-src http://mirror.example/debian bookworm main
deb http://old.example/debian bullseye main
"""


def test_apt_sources_reads_both_formats_and_keeps_bookworm_only(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "off.list.disabled").write_text("deb http://ignored.example/debian bookworm main\n")

    result = subprocess.run(
        ["bash", "-c", 'source "$1" && apt_sources "$2"', "bash", str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )

    assert result.stdout.splitlines() == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm main contrib",
        "deb http://mirror.example/debian bookworm-updates main contrib",
        "deb http://other.example/debian bookworm main contrib",
        "deb http://other.example/debian bookworm-updates main contrib",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]
