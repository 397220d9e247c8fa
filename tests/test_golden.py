"""Golden-file tests: each case in tests/golden/<case>/ renders to exactly its expected/ tree.

Regenerate with `CUPAAS_UPDATE_GOLDEN=1 scripts/test tests/test_golden.py`, then review the diff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from golden_support import (
    UPDATE_ENV,
    golden_cases,
    mask_random,
    read_tree,
    render_case,
    tree_diff,
)

CASES = golden_cases()


def test_golden_cases_discovered() -> None:
    assert len(CASES) >= 3, "golden case discovery found too few cases"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_tree_matches_expected(case: Path, tmp_path: Path) -> None:
    expected_dir = case / "expected"
    out = tmp_path / "out"
    if os.environ.get(UPDATE_ENV) == "1":
        fresh = tmp_path / "fresh"
        if expected_dir.is_dir():  # keep the committed ciphertexts so a regeneration shows only real changes
            shutil.copytree(expected_dir, fresh / "out")
        render_case(case, fresh, fresh / "out")
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(fresh / "out", expected_dir)
    assert expected_dir.is_dir(), f"no expected tree; run with {UPDATE_ENV}=1 to create it"
    # Rendering over the committed tree must reuse its sealed values and reproduce it byte for byte.
    shutil.copytree(expected_dir, out)
    render_case(case, tmp_path, out)
    expected, actual = read_tree(expected_dir), read_tree(out)
    assert actual == expected, tree_diff(expected, actual)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_fresh_render_matches_except_random_values(case: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    render_case(case, tmp_path, out)
    expected, actual = mask_random(read_tree(case / "expected")), mask_random(read_tree(out))
    assert actual == expected, tree_diff(expected, actual)
