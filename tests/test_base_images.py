"""`cupaas images build`: the Debian mirror it uses, its recipe hash, and real builds (docker tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from webhook_support import cupaas_command

from generator.errors import UserError
from generator.images.apt_sources import host_debian_mirror
from generator.images.base_images import FLAVORS, debian_mirror, flavors_for, recipe_of
from generator.models import GitOpsSettings, Mirrors, Platform

DEB822 = """\
Types: deb deb-src
# a comment
URIs: http://mirror.example/debian http://other.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

SECURITY_ONLY = """\
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
deb https://deb.nodesource.example/node_20.x nodistro main
deb [arch=amd64 signed-by=/k.gpg] http://one-line.example/debian/ bookworm main
deb-src http://src.example/debian bookworm main
"""


def platform(**mirrors: str) -> Platform:
    return Platform(domain="apps.example.com", registry="registry.example.com/cupaas",
                    gitops=GitOpsSettings(repo="file:///gitops.git"), mirrors=Mirrors(**mirrors))


def apt_dir(tmp_path: Path, one_line: str | None = None, **sources: str) -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True)
    if one_line is not None:
        (tmp_path / "sources.list").write_text(one_line)
    for name, text in sources.items():
        (tmp_path / "sources.list.d" / f"{name}.sources").write_text(text)
    return tmp_path


def test_host_mirror_prefers_the_one_line_sources_archive(tmp_path: Path) -> None:
    assert host_debian_mirror(apt_dir(tmp_path, ONE_LINE, debian=DEB822)) == "http://one-line.example/debian"


def test_host_mirror_reads_deb822_archives_and_skips_security_disabled_and_third_party(tmp_path: Path) -> None:
    assert host_debian_mirror(apt_dir(tmp_path, a=SECURITY_ONLY, b=DEB822)) == "http://mirror.example/debian"
    assert host_debian_mirror(apt_dir(tmp_path / "x", a=SECURITY_ONLY)) is None


def test_configured_debian_mirror_wins_over_the_host_sources(tmp_path: Path) -> None:
    etc = apt_dir(tmp_path, ONE_LINE)
    assert debian_mirror(platform(debian="http://deb.mirror.cu/debian/"), etc) == "http://deb.mirror.cu/debian"
    assert debian_mirror(platform(), etc) == "http://one-line.example/debian"


def test_no_debian_mirror_anywhere_is_a_user_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"mirrors\.debian"):
        debian_mirror(platform(), apt_dir(tmp_path))


def test_unknown_python_minor_names_the_available_ones() -> None:
    with pytest.raises(UserError, match=r"--python 3\.9: .*available: 3\.11, 3\.13"):
        flavors_for(["3.9"])
    assert [f.suite for f in flavors_for([])] == ["bookworm", "trixie"]
    assert [f.minor for f in flavors_for(["3.13", "3.13"])] == ["3.13"]


def test_recipe_changes_with_the_mirror_and_the_suite() -> None:
    one = recipe_of(FLAVORS["3.11"], "http://a.example/debian", [])
    assert one == recipe_of(FLAVORS["3.11"], "http://a.example/debian", [])
    assert one != recipe_of(FLAVORS["3.11"], "http://b.example/debian", [])
    assert one != recipe_of(FLAVORS["3.13"], "http://a.example/debian", [])


@pytest.mark.docker
def test_images_build_twice_is_a_no_op_printing_the_same_digests(tmp_path: Path, registry: str) -> None:
    """scripts/dev-env already built these images: this run, like the second of a user, only checks."""
    control = tmp_path / "control"
    control.mkdir()
    (control / "cupaas.yaml").write_text(f"domain: cupaas.test\nregistry: {registry}\ngitops: {{repo: file:///x}}\n")
    runs = [subprocess.run([*cupaas_command(), "images", "build", str(control)], capture_output=True, text=True,
                           timeout=1800, stdin=subprocess.DEVNULL) for _ in range(2)]
    for done in runs:
        assert done.returncode == 0, done.stderr
    first, second = (sorted(line for line in r.stdout.splitlines() if line.startswith("image=")) for r in runs)
    assert [line.split("@")[0] for line in first] == [f"image={registry}/cupaas/python:3.11",
                                                       f"image={registry}/cupaas/python:3.13"]
    assert first == second
    assert runs[1].stderr.count("is up to date") == 2 and "mmdebstrap" not in runs[1].stderr


def test_images_build_refuses_an_unknown_minor_with_exit_1(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    (control / "cupaas.yaml").write_text("domain: cupaas.test\nregistry: 127.0.0.1:5000\ngitops: {repo: file:///x}\n")
    done = subprocess.run([*cupaas_command(), "images", "build", str(control), "--python", "3.9"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "error: --python 3.9: no base image recipe for Python 3.9; available: 3.11, 3.13" in done.stderr
    assert "Traceback" not in done.stderr
