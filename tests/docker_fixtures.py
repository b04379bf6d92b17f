"""Fixtures for tests that need a real Docker engine (a pytest plugin, listed in conftest).

- `docker_engine`: skips, saying why in the summary, only when no Docker engine answers (`.ci/run`
  installs and starts one, so CI runs these tests).
- `sandbox_images`: the base and PostgreSQL images `dbproxy sandbox build-image` makes, built
  when missing (`.ci/run` builds them before the suite; built ones are reused).
- `container_backend`: one warm sandbox container for the whole session, shared by the tests
  that verify on it (they never stop it), removed at the end.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from sandbox.container import ContainerBackend, docker_problem
from sandbox.image import Built, ImageError, build_all


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
def container_backend(sandbox_images: list[Built]) -> Iterator[ContainerBackend]:
    backend = ContainerBackend(upstream_major=16, owner=f"pytest-{os.getpid()}")
    asyncio.run(backend.start())
    try:
        yield backend
    finally:
        asyncio.run(backend.remove())
