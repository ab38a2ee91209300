#!/usr/bin/env python3
"""Build a single-layer OCI image archive from local files, with no registry and no engine.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that
`ctr -n k8s.io images import` loads; its index carries the image name in the
`io.containerd.image.name` annotation. Output is deterministic: the same inputs give the
same digests, so re-importing is a no-op.

    oci_image.py --name agentsandbox.local/pause:3.10 --output pause.tar \
        --file=/path/to/pause:/pause:0755 --entrypoint=/pause --user=65535:65535
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

ETC_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
ETC_GROUP = b"root:x:0:\nnogroup:x:65534:\n"


class Layer:
    """An uncompressed layer tar built in memory, entries in a stable order."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, path, kind, mode):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type = kind
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def directory(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and sub not in self.dirs:
                self.dirs.add(sub)
                self.tar.addfile(self._info(sub + "/", tarfile.DIRTYPE, mode))

    def file(self, path, data, mode):
        self.directory(os.path.dirname(path))
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, path, target):
        self.directory(os.path.dirname(path))
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def close(self):
        self.tar.close()
        return self.buffer.getvalue()


def busybox_applets(binary):
    listing = subprocess.run([binary, "--list-full"], check=True, capture_output=True, text=True)
    return sorted(line for line in listing.stdout.split() if line)


def shared_libraries(binary):
    """The shared libraries (and the ELF interpreter) a dynamically linked binary loads,
    as the dynamic linker resolves them on this machine."""
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if listing.returncode != 0 or "not a dynamic executable" in listing.stdout + listing.stderr:
        return []
    paths = []
    for line in listing.stdout.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target.startswith("/"):
                paths.append(target)
        elif words and words[0].startswith("/"):
            paths.append(words[0])
    return sorted(set(paths))


def build_layer(args):
    layer = Layer()
    for directory in ("etc", "tmp", "proc", "sys", "dev", "root", "var/run"):
        layer.directory(directory, 0o1777 if directory == "tmp" else 0o755)
    layer.file("etc/passwd", ETC_PASSWD, 0o644)
    layer.file("etc/group", ETC_GROUP, 0o644)
    layer.file("etc/nsswitch.conf", b"hosts: files dns\n", 0o644)
    if args.busybox:
        with open(args.busybox, "rb") as handle:
            layer.file("bin/busybox", handle.read(), 0o755)
        for applet in busybox_applets(args.busybox):
            if applet != "bin/busybox":
                layer.symlink(applet, "/bin/busybox")
    for spec in args.elf:
        source, _, destination = spec.partition(":")
        if not destination:
            sys.exit(f"--elf={spec}: expected SOURCE:DESTINATION")
        with open(source, "rb") as handle:
            layer.file(destination, handle.read(), 0o755)
        for library in shared_libraries(source):
            with open(library, "rb") as handle:
                layer.file(library, handle.read(), 0o755)
    for spec in args.file:
        source, _, rest = spec.partition(":")
        destination, _, mode = rest.partition(":")
        if not destination:
            sys.exit(f"--file={spec}: expected SOURCE:DESTINATION[:MODE]")
        with open(source, "rb") as handle:
            layer.file(destination, handle.read(), int(mode or "0644", 8))
    return layer.close()


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    layout.append((f"blobs/sha256/{digest}", data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def build_archive(args):
    layer = build_layer(args)
    layout = []
    layer_desc = blob(layout, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "e2e/images/oci_image.py"}],
    }
    if args.entrypoint:
        config["config"]["Entrypoint"] = args.entrypoint.split(" ")
    if args.cmd:
        config["config"]["Cmd"] = args.cmd.split(" ")
    if args.user:
        config["config"]["User"] = args.user
    config_desc = blob(layout, canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = blob(layout, canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": args.name,
                    "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    layout.append(("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})))
    layout.append(("index.json", canonical(index)))
    with tarfile.open(args.output, "w", format=tarfile.PAX_FORMAT) as archive:
        seen = set()
        for name, data in layout:
            if name in seen:
                continue
            seen.add(name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="image reference, e.g. agentsandbox.local/busybox:1.35.0")
    parser.add_argument("--output", required=True, help="archive to write")
    parser.add_argument("--file", action="append", default=[], help="SOURCE:DESTINATION[:MODE] to copy in")
    parser.add_argument("--elf", action="append", default=[],
                        help="SOURCE:DESTINATION, a binary copied in with the shared libraries it loads")
    parser.add_argument("--busybox", help="a static busybox to install with all its applet links")
    parser.add_argument("--entrypoint", help="space-separated entrypoint")
    parser.add_argument("--cmd", help="space-separated default command")
    parser.add_argument("--user", help="uid[:gid] the image runs as")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args()
    if ":" not in args.name.rsplit("/", 1)[-1]:
        parser.error("--name needs an explicit tag (':latest' would make kubelet try to pull)")
    build_archive(args)


if __name__ == "__main__":
    main()
