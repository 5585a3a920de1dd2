"""Writes an OCI image layout with one layer: python3 oci_layout.py ROOTFS OUT VERSION.

The layer is a reproducible tar of ROOTFS (sorted, mtime 0, owned by root),
gzip-compressed; the config runs /usr/bin/vflaunch as 107:107.
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path


def layer_tar(root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            entries = ([] if rel_dir == "." else [rel_dir]) + [
                os.path.normpath(os.path.join(rel_dir, f)) for f in sorted(filenames)
            ]
            for rel in entries:
                info = tar.gettarinfo(os.path.join(root, rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if info.isfile():
                    with open(os.path.join(root, rel), "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    (out / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main():
    root, out, version = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    (out / "blobs" / "sha256").mkdir(parents=True)
    tar = layer_tar(root)
    layer = blob(out, gzip.compress(tar, mtime=0))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "107:107",
            "Entrypoint": ["/usr/bin/vflaunch"],
            "Env": ["PATH=/usr/bin"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": "vflaunch", "org.opencontainers.image.version": version},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created_by": "resources/container/build-image.sh"}],
    }
    cfg = blob(out, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    man = blob(out, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **man,
                "annotations": {"org.opencontainers.image.ref.name": version},
            }
        ],
    }
    (out / "index.json").write_text(json.dumps(index, sort_keys=True))
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


main()
