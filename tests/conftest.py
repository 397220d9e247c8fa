"""Fixtures for the whole suite. Keep this small: fixtures used by one test file live in that file."""

from __future__ import annotations

from types import ModuleType

import k8s_validation
import pytest


@pytest.fixture(scope="session")
def k8s() -> ModuleType:
    """Strict manifest validation and `kubectl kustomize` (see tests/k8s_validation.py).

    ``k8s.validate_object(obj)``, ``k8s.validate_documents(text)``, ``k8s.kustomize_build(path)``,
    ``k8s.kustomize_build_many(paths)``; a plain ``import k8s_validation`` works as well.
    """
    return k8s_validation
