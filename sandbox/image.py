"""Container images built here, without any registry: `dbproxy sandbox build-image`.

Two images, each built only when missing (or asked to with `rebuild`):

- the **base**, `dbproxy-base:<suite>`: a minimal Debian root filesystem made with
  `debootstrap --variant=minbase` from this system's own package mirror (read from
  /etc/apt/sources.list*), imported with `docker import`. Its apt sources point at that mirror,
  so images built on it (the proxy's own, docker/Dockerfile) can `apt-get install` from it too.
  Needs root and the `debootstrap` program; `base` names another image instead.
- the **PostgreSQL image**, `dbproxy-sandbox-postgres:<major>` (and `:<version>`): the bundled
  PostgreSQL binaries (the `pgserver` wheel's, with their libraries) on that base, with an
  entrypoint that starts like the official `postgres` image (`image_files/`). Labels say its
  major version (the testcontainers backend finds it by that when `postgres:<major>` cannot be
  pulled, `sandbox.container`) and what it was built from, so a changed entrypoint or a new
  pgserver version is built again.

Everything here talks to the engine through the Docker SDK (the `docker` package that
testcontainers brings), so no `docker` command is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sandbox.backends import BackendUnavailable
from sandbox.container import BUILT_REPOSITORY, docker_client
from sandbox.pgcluster import ClusterError, bin_dir

BASE_REPOSITORY = "dbproxy-base"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
VERSION_LABEL = "org.dbproxy.postgres-version"
BUILD_LABEL = "org.dbproxy.build"


class ImageError(Exception):
    """An image could not be built; the message says why (and what to do when we know).
    `usage`: the fault is in how it was asked or where it runs (no engine, not root, a base that
    is not there), not in the build itself."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass
class Built:
    tag: str
    action: str  # "built" or "already there"
    seconds: float
    detail: str = ""


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this system installs from (first non-security `deb` source)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list")),
             *sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        urls = re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
        urls += [u for line in re.findall(r"^URIs:\s*(.+)$", text, re.M) for u in line.split()]
        for url in urls:
            if url.rstrip("/").endswith("/debian"):
                return url.rstrip("/")
    return DEFAULT_MIRROR


def bundled_postgres() -> tuple[Path, Path, str]:
    """The bundled PostgreSQL: its install directory, the directory of the libraries its
    programs load (`$ORIGIN/../../../pgserver.libs`), and its version ("16.2")."""
    try:
        bins = bin_dir()
    except ClusterError as e:
        raise ImageError(str(e)) from None
    install = bins.parent
    libs = install.parent.parent / "pgserver.libs"
    out = subprocess.run([str(bins / "postgres"), "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"(\d+(?:\.\d+)?)", out)
    if not (bins / "postgres").exists() or m is None:
        raise ImageError(f"no PostgreSQL server program in {bins}")
    return install, libs, m.group(1)


def _files() -> dict[str, bytes]:
    here = resources.files("sandbox") / "image_files"
    return {name: (here / name).read_bytes() for name in ("Dockerfile", "docker-entrypoint.sh")}


def build_id(version: str, base: str) -> str:
    """What the PostgreSQL image is made of: the Dockerfile, the entrypoint, the version, the base."""
    h = hashlib.sha256()
    for name, data in sorted(_files().items()):
        h.update(name.encode() + b"\0" + data)
    h.update(f"{version}\0{base}".encode())
    return h.hexdigest()[:16]


def _labels(client: Any, tag: str) -> dict[str, str] | None:
    import docker

    try:
        return dict(client.images.get(tag).labels or {})
    except docker.errors.ImageNotFound:
        return None


def build_base(client: Any, *, suite: str = DEFAULT_SUITE, mirror: str | None = None, rebuild: bool = False,
               say: Callable[[str], None] = print) -> Built:
    tag = f"{BASE_REPOSITORY}:{suite}"
    t0 = time.monotonic()
    if not rebuild and _labels(client, tag) is not None:
        return Built(tag, "already there", 0.0)
    mirror = mirror or debian_mirror()
    if os.geteuid() != 0:
        raise ImageError("building the base image runs debootstrap, which needs root; run as root, "
                         "or give an existing Debian image with --base", usage=True)
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists()
                                                  else None)
    if debootstrap is None:
        raise ImageError("building the base image needs debootstrap (apt-get install debootstrap), "
                         "or give an existing Debian image with --base", usage=True)
    say(f"base image {tag}: debootstrap --variant=minbase {suite} from {mirror} ...")
    with tempfile.TemporaryDirectory(prefix="dbproxy-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        proc = subprocess.run([debootstrap, "--variant=minbase", suite, str(root), mirror], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise ImageError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
        for cache in (root / "var/cache/apt/archives").glob("*.deb"):
            cache.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], check=True)
        repository, _, version = tag.partition(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=version,
                                          changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    return Built(tag, "built", time.monotonic() - t0, f"debootstrap --variant=minbase {suite} from {mirror}")


def build_postgres(client: Any, *, base: str, rebuild: bool = False, cache: bool = True,
                   say: Callable[[str], None] = print) -> Built:
    install, libs, version = bundled_postgres()
    major = int(version.split(".")[0])
    tag = f"{BUILT_REPOSITORY}:{major}"
    ident = build_id(version, base)
    t0 = time.monotonic()
    labels = _labels(client, tag)
    previous = client.images.get(tag).id if labels is not None else None
    if not rebuild and labels is not None and labels.get(BUILD_LABEL) == ident:
        return Built(tag, "already there", 0.0, f"PostgreSQL {version}")
    if _labels(client, base) is None:
        raise ImageError(f"the base image {base} is not here; build it (without --base) or pull it first",
                         usage=True)
    say(f"PostgreSQL image {tag}: PostgreSQL {version} from {install} on {base} ...")
    with tempfile.TemporaryDirectory(prefix="dbproxy-pgimage-") as tmp:
        ctx = Path(tmp)
        for name, data in _files().items():
            (ctx / name).write_bytes(data)
        (ctx / "docker-entrypoint.sh").chmod(0o755)
        shutil.copytree(install, ctx / "pg" / "pgserver" / "pginstall", symlinks=True,
                        ignore=shutil.ignore_patterns("include", "*.a", "pgxs"))
        if libs.is_dir():
            shutil.copytree(libs, ctx / "pg" / "pgserver.libs", symlinks=True)
        log: list[str] = []
        try:
            for chunk in client.api.build(path=str(ctx), tag=tag, rm=True, forcerm=True, pull=False, decode=True,
                                          network_mode="host", nocache=not cache,
                                          buildargs={"BASE": base, "PG_MAJOR": str(major), "PG_VERSION": version,
                                                     "BUILD_ID": ident}):
                if "stream" in chunk:
                    log += chunk["stream"].splitlines()
                if "error" in chunk:
                    raise ImageError(f"docker build of {tag} failed: {chunk['error'].strip()}\n"
                                     + "\n".join(log[-10:]))
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(f"docker build of {tag} failed: {e}") from None
    new = client.images.get(tag)
    new.tag(BUILT_REPOSITORY, tag=version)
    if previous is not None and previous != new.id:
        with contextlib.suppress(Exception):  # what the tag named before (kept while a container runs it)
            client.images.remove(previous)
    return Built(tag, "built", time.monotonic() - t0, f"PostgreSQL {version}")


def build_all(*, base: str | None = None, suite: str = DEFAULT_SUITE, mirror: str | None = None,
              rebuild: bool = False, say: Callable[[str], None] = print) -> list[Built]:
    """The base (unless `base` names one) and the PostgreSQL image on it."""
    try:
        client = docker_client()
    except BackendUnavailable as e:
        raise ImageError(str(e), usage=True) from None
    try:
        done = []
        if base is None:
            done.append(build_base(client, suite=suite, mirror=mirror, rebuild=rebuild, say=say))
            base = done[0].tag
        done.append(build_postgres(client, base=base, rebuild=rebuild, say=say))
        return done
    finally:
        client.close()

