"""Fixtures for tests that need a real Docker engine (a pytest plugin, listed in conftest).

- `docker_engine`: skips, saying why in the summary, only when no Docker engine answers (`.ci/run`
  installs and starts one, so CI runs these tests).
- `sandbox_images`: the base and PostgreSQL images `dbproxy sandbox build-image` makes, built
  when missing (built ones are reused).
- `proxy_image`: dbproxy's own image from docker/Dockerfile on that base, installed from wheels
  made here (`pip wheel`), so its build needs no registry or index; tagged by a digest of
  what goes in, and built only when no image has that tag.
- `container_backend`: one warm sandbox container for the whole session, shared by the tests
  that verify on it (they never stop it), removed at the end.

`python -m tests.docker_fixtures` builds the images now (`.ci/run` does, before the suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.container import ContainerBackend, docker_client, docker_problem
from sandbox.image import BUILD_LABEL, Built, ImageError, build_all

ROOT = Path(__file__).resolve().parent.parent
#: What docker/Dockerfile copies from the repository.
PROXY_SOURCES = ["pyproject.toml", "README.md", "dbproxy", "inverse", "sandbox", "benchmarks", "docker/Dockerfile"]
PROXY_REPOSITORY = "dbproxy-test"
BASE = "dbproxy-base:bookworm"


def _source_files() -> list[Path]:
    out: list[Path] = []
    for name in PROXY_SOURCES:
        p = ROOT / name
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
        out += [f.relative_to(ROOT) for f in files]
    return out


def proxy_image_tag() -> str:
    h = hashlib.sha256()
    for rel in _source_files():
        h.update(str(rel).encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return f"{PROXY_REPOSITORY}:{h.hexdigest()[:16]}"


def build_proxy_image() -> tuple[str, bool]:
    """The proxy image's tag, and whether it was built now (else it was there)."""
    tag = proxy_image_tag()
    client = docker_client()
    try:
        if client.images.list(name=tag):
            return tag, False
        with tempfile.TemporaryDirectory(prefix="dbproxy-image-") as tmp:
            ctx = Path(tmp)
            for rel in _source_files():
                (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, ctx / rel)
            wheels = ctx / "docker" / "wheels"
            wheels.mkdir(parents=True, exist_ok=True)
            print(f"{tag}: pip wheel (dbproxy and its dependencies) ...", flush=True)
            made = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(ctx)],
                                  capture_output=True, text=True, check=False)
            if made.returncode != 0:
                raise RuntimeError(f"pip wheel failed (exit {made.returncode}): {made.stderr[-2000:]}")
            print(f"{tag}: docker build from docker/Dockerfile on {BASE} ...", flush=True)
            log: list[str] = []
            for chunk in client.api.build(path=str(ctx), dockerfile="docker/Dockerfile", tag=tag, rm=True,
                                          forcerm=True, pull=False, decode=True, network_mode="host",
                                          buildargs={"BASE": BASE}):
                log += chunk.get("stream", "").splitlines()
                if "error" in chunk:
                    raise RuntimeError(f"docker build failed: {chunk['error']}\n" + "\n".join(log[-20:]))
        for old in client.images.list(name=PROXY_REPOSITORY):  # images of code that is gone
            if tag not in old.tags:
                with contextlib.suppress(Exception):
                    client.images.remove(old.id, force=True)
        return tag, True
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_engine() -> None:
    problem = docker_problem()
    if problem:
        pytest.skip(f"no Docker engine, so no container tests: {problem}")


@pytest.fixture(scope="session")
def sandbox_images(docker_engine: None) -> list[Built]:
    try:
        return build_all(say=lambda line: print(line, flush=True))
    except ImageError as e:
        pytest.fail(f"the sandbox images could not be built: {e}")


@pytest.fixture(scope="session")
def proxy_image(sandbox_images: list[Built]) -> str:
    return build_proxy_image()[0]


@pytest.fixture(scope="session")
def container_backend(sandbox_images: list[Built]) -> Iterator[ContainerBackend]:
    backend = ContainerBackend(upstream_major=16, owner=f"pytest-{os.getpid()}")
    asyncio.run(backend.start())
    try:
        yield backend
    finally:
        asyncio.run(backend.remove())
        with contextlib.suppress(Exception):  # PostgreSQL images rebuilt while this container ran them
            docker_client().images.prune(filters={"dangling": True, "label": BUILD_LABEL})


def main() -> int:
    problem = docker_problem()
    if problem:
        print(f"tests.docker_fixtures: no images built: {problem}", file=sys.stderr)
        return 1
    for b in build_all():
        print(f"{b.tag}: {b.action}")
    tag, built = build_proxy_image()
    print(f"{tag}: {'built' if built else 'already there'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
