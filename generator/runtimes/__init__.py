"""Runtime engine: turn an app source plus a runtime plugin folder into a :class:`BuildPlan`.

The engine knows nothing about any language. A runtime folder (`runtimes/<name>/runtime.yaml`, see
`generator/schemas/runtime-plugin.schema.json`) declares, as data:

- ``defaults``: settings (``base_image``, ...) that `cupaas.yaml` ``runtimes.<name>`` may override;
- ``dependencies``: an ordered list of dependency files; the first present one that declares
  dependencies wins. A named *reader* (a file format, not a language rule) turns it into the files to
  copy before the install step and/or a pinned package list;
- ``start``: how to find the start command when neither `.cupaas` ``run`` nor a Procfile ``web:``
  line gives one: detection rules that match dependency names and file contents, each yielding a
  command template filled from the match;
- ``dockerfile``: a Jinja2 template beside the spec.

Adding a runtime is adding a folder; only a new dependency-file *format* needs a reader here (a module
of this package, registered in `dependencies.READERS`).

This package holds the public API; its modules, in the order a plan uses them:
`plan` (assembly), `settings`, `version_files` and `version_choice` (the language version),
`dependencies` (the chosen dependency file and install step) with its readers `requirements`,
`uv_lock`, `poetry_lock` and `pipfile` (sharing `dependency_set`, `lock_graph`, `toml_files`),
`start_command` and `file_rules` (detection), and `planning_run` (one run's reads and templates).
"""

from .dependencies import READERS
from .dependency_set import DependencySet, Reader, canonical_name
from .plan import plan_build
from .settings import VERSION_SETTINGS
from .version_files import VERSION_READERS, VersionAsk, VersionReader

__all__ = [
    "READERS",
    "VERSION_READERS",
    "VERSION_SETTINGS",
    "DependencySet",
    "Reader",
    "VersionAsk",
    "VersionReader",
    "canonical_name",
    "plan_build",
]
