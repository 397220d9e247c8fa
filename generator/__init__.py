"""cupaas generator: control repo + app source → validated, deterministic Kustomize GitOps tree."""

__version__ = "0.1.0"
