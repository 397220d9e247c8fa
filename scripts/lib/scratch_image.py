#!/usr/bin/env python3
"""Push a FROM-scratch image made of a few static files to a registry, without a container engine.

    scratch_image.py REGISTRY REPOSITORY:TAG --file SRC:DEST[:MODE] ... [--entrypoint JSON] [--cmd JSON]

The layer is a deterministic tar (sorted, owner 0:0, mtime 0), so the same files give the same
digest and a second run uploads nothing. Prints the pushed reference with its digest. Used by
scripts/cluster for the node's pause image and the FerretDB stand-in for MongoDB (docs/cluster.md).
Standard library only: the Registry HTTP API v2 with OCI media types, over plain HTTP to a local
registry.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.error
import urllib.request

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def layer_bytes(files: list[tuple[str, str, int]]) -> tuple[bytes, str]:
    """The gzipped layer and the digest of its uncompressed tar (the config's diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for _, dest, _ in files:
            parts = dest.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for src, dest, mode in sorted(files, key=lambda f: f[1]):
            with open(src, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(dest.strip("/"))
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(req, timeout=120)


def push_blob(base: str, repo: str, data: bytes) -> str:
    d = digest(data)
    try:
        request("HEAD", f"{base}/v2/{repo}/blobs/{d}").close()
        return d  # already there
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    with request("POST", f"{base}/v2/{repo}/blobs/uploads/") as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    request("PUT", f"{location}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"}).close()
    return d


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registry", help="host:port of a registry served over plain HTTP")
    parser.add_argument("reference", help="repository:tag")
    parser.add_argument("--file", action="append", required=True, help="SRC:DEST[:OCTAL_MODE]")
    parser.add_argument("--entrypoint", default="null", help="a JSON list")
    parser.add_argument("--cmd", default="null", help="a JSON list")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    args = parser.parse_args(argv)

    repo, _, tag = args.reference.rpartition(":")
    if not repo or "/" in tag:
        parser.error(f"{args.reference}: expected repository:tag")
    files = []
    for spec in args.file:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            parser.error(f"--file {spec}: expected SRC:DEST[:MODE]")
        files.append((parts[0], parts[1], int(parts[2], 8) if len(parts) == 3 else 0o755))

    layer, diff_id = layer_bytes(files)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": json.loads(args.entrypoint),
            "Cmd": json.loads(args.cmd),
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", *args.env],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    base = f"http://{args.registry}"
    try:
        layer_digest = push_blob(base, repo, layer)
        config_digest = push_blob(base, repo, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(layer)}],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        request("PUT", f"{base}/v2/{repo}/manifests/{tag}", manifest_bytes, {"Content-Type": MANIFEST}).close()
    except (urllib.error.URLError, OSError) as e:
        print(f"scratch_image.py: pushing {args.reference} to {args.registry}: {e}", file=sys.stderr)
        return 1
    print(f"{args.registry}/{repo}:{tag}@{digest(manifest_bytes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
