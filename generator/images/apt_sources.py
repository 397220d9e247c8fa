"""The Debian mirror of this machine's apt sources, for `cupaas images build` without `mirrors.debian`."""

from __future__ import annotations

import re
from pathlib import Path

# Suites of the Debian archive itself (not security, not third-party repositories such as nodistro).
_ARCHIVE_SUITE = re.compile(r"^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldstable|stable|testing|unstable)"
                            r"(-updates|-backports)?\Z")


def host_debian_mirror(etc: Path = Path("/etc/apt")) -> str | None:
    """The first Debian archive URI in ``etc``'s sources (one-line and deb822 formats), or None."""
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            fields = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(fields) >= 3 and fields[0] == "deb" and _ARCHIVE_SUITE.match(fields[2]):
                return fields[1].rstrip("/")
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for stanza in re.split(r"\n\s*\n", text):
            stanza_fields: dict[str, str] = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
            suites = stanza_fields.get("Suites", "").split()
            uris = stanza_fields.get("URIs", "").split()
            if ("deb" in stanza_fields.get("Types", "").split() and uris
                    and stanza_fields.get("Enabled", "yes").lower() != "no"
                    and any(_ARCHIVE_SUITE.match(s) for s in suites)):
                return uris[0].rstrip("/")
    return None
