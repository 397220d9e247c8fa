"""One comparison key per git repository URL, so the URLs of a push event find the apps registered for it.

A forge names a repo by several URLs in its payload (https clone, ssh clone, web page) and an operator
registers it by any of them, typed by hand. :func:`normalize_repo_url` maps all of them to one key:

* **Network URLs** (``https://``, ``http://``, ``ssh://``, ``git://``, scp-like ``user@host:path``) become
  ``host/path``. Dropped: scheme, user name and password (credentials never reach the key), port, query,
  fragment, empty and ``.`` path segments, trailing slashes and one trailing ``.git``.

  - The host is lowercased (DNS is case-insensitive) and loses a trailing dot.
  - The **path is lowercased** too. GitHub, GitLab, Gitea/Forgejo and Bitbucket Cloud all resolve owner
    and repo names case-insensitively and refuse two repos whose names differ only in case, while their
    payloads spell names as they were created and operators type them as they like. The price: two repos
    differing only in case on a plain, case-sensitive git server over ssh would share a key; such a
    server sends no webhooks.
  - The **port is dropped** because one forge serves the same repo over https on one port and over ssh on
    another (``ssh://git@host:2222/org/app`` and ``https://host/org/app``); two forges on one host told
    apart only by port would share keys.

* **Local repos** (``file://`` URLs and plain paths) become the absolute path, case preserved (file
  systems are case-sensitive), without trailing slashes and without a trailing ``.git`` suffix or
  ``/.git`` component. A relative path is made absolute against the current directory, as git would.
  Local keys start with ``/`` and network keys never do, so the two kinds never collide.
"""

from __future__ import annotations

import os
import posixpath
import re
import urllib.parse

# git's rule (connect.c): no "://" and a colon before any slash make an scp-like address. A host in
# brackets may hold colons (IPv6).
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>\[[^\]/]+\]|[^:/\[\]]+):(?P<path>.*)\Z")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNPRINTABLE = re.compile(r"[\x00-\x20\x7f]")


def normalize_repo_url(url: str) -> str:
    """The comparison key of a git repository URL (see the module docstring for the rules).

    Raises ``ValueError`` for what names no repository: an empty string, whitespace or control
    characters, a network URL without host or path, a ``file://`` URL naming another host.
    """
    if not url or _UNPRINTABLE.search(url):
        raise ValueError("not a git URL: empty, or contains whitespace or control characters")
    if _URL_SCHEME.match(url):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError("a file:// URL must name a local path (file:///path)")
            return _local_key(urllib.parse.unquote(parts.path))
        # .hostname drops user, password and port, and lowercases.
        return _network_key(parts.hostname or "", urllib.parse.unquote(parts.path))
    scp = _SCP_LIKE.match(url)
    if scp:
        return _network_key(scp["host"].strip("[]"), scp["path"])
    return _local_key(url)


def repo_matches(a: str, b: str) -> bool:
    """Whether two git URLs name the same repository; a URL that names none matches nothing."""
    try:
        return normalize_repo_url(a) == normalize_repo_url(b)
    except ValueError:
        return False


def _network_key(host: str, path: str) -> str:
    host = host.lower().rstrip(".")
    if not host:
        raise ValueError("not a git URL: no host")
    segments = [segment for segment in path.split("/") if segment not in ("", ".")]
    segments = _without_git_suffix(segments)
    if not segments:
        raise ValueError("not a git URL: no repository path after the host")
    shown_host = f"[{host}]" if ":" in host else host
    return f"{shown_host}/{'/'.join(segments)}".lower()


def _local_key(path: str) -> str:
    if not path:
        raise ValueError("not a git URL: empty path")
    segments = _without_git_suffix(os.path.abspath(path).split("/")[1:])
    return posixpath.join("/", *segments)


def _without_git_suffix(segments: list[str]) -> list[str]:
    """``a/b.git`` and ``a/b/.git`` (a work tree's git directory) both name ``a/b``."""
    if segments and segments[-1] == ".git":
        return segments[:-1]
    if segments and segments[-1].endswith(".git"):
        return [*segments[:-1], segments[-1].removesuffix(".git")]
    return segments
