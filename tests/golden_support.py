"""Render golden cases and the example control repo through the real CLI, and compare whole trees."""

from __future__ import annotations

import difflib
import os
import re
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner, Result
from sealing_support import TEST_KEY_DIR

from generator.cli import cli

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden"
UPDATE_ENV = "CUPAAS_UPDATE_GOLDEN"


def golden_cases() -> list[Path]:
    return sorted(p for p in GOLDEN.iterdir() if (p / "control").is_dir())


def prepare_control(case: Path, tmp: Path) -> Path:
    """Copy a case's control repo, adding the test sealing certificate when it has none."""
    control = tmp / "control"
    shutil.copytree(case / "control", control)
    if not (control / "sealing-cert.pem").exists():
        shutil.copy(TEST_KEY_DIR / "test-cert.pem", control / "sealing-cert.pem")
    return control


def render_args(case: Path, control: Path, out: Path) -> list[str]:
    args = ["render", str(control), "--out", str(out)]
    sources = case / "sources"
    for app_dir in sorted(sources.iterdir()) if sources.is_dir() else []:
        args += ["--source", f"{app_dir.name}={app_dir}"]
    images = yaml.safe_load((case / "images.yaml").read_text()) if (case / "images.yaml").exists() else {}
    for app, ref in sorted(images.items()):
        args += ["--image", f"{app}={ref}"]
    return args


def run_cli(args: list[str], input: str | None = None) -> Result:
    return CliRunner().invoke(cli, args, input=input, catch_exceptions=False)


def render_case(case: Path, tmp: Path, out: Path) -> Result:
    control = prepare_control(case, tmp)
    result = run_cli(render_args(case, control, out))
    assert result.exit_code == 0, result.output
    return result


def read_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` without following links: file bytes, ``-> target`` for a link, ``/`` a folder."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "/"
            else:
                found[rel] = path.read_bytes()
    return found


_SEALED_LINE = re.compile(r"^(\s+[A-Za-z_][A-Za-z0-9_]*: )Ag[A-Za-z0-9+/=]+$", re.MULTILINE)
_CHECKSUM = re.compile(r"(cupaas\.dev/config-checksum: )[0-9a-f]{64}")


def mask_random(tree: dict[str, str]) -> dict[str, str]:
    """Blank what is random by design (fresh ciphertexts and the checksum over them)."""
    return {k: _CHECKSUM.sub(r"\1<checksum>", _SEALED_LINE.sub(r"\1<sealed>", v)) for k, v in tree.items()}


def tree_diff(expected: dict[str, str], actual: dict[str, str]) -> str:
    lines: list[str] = []
    for path in sorted(set(expected) | set(actual)):
        if path not in actual:
            lines.append(f"missing: {path}")
        elif path not in expected:
            lines.append(f"unexpected: {path}")
        elif expected[path] != actual[path]:
            lines.extend(difflib.unified_diff(expected[path].splitlines(), actual[path].splitlines(),
                                              f"expected/{path}", f"actual/{path}", lineterm=""))
    return "\n".join(lines)
