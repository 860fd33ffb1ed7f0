"""Integration tests use the real Docker engine; outside CI they skip, saying why, when it is missing."""

import os

import pytest


def engine_problem():
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:  # any failure means: no usable engine
        return f"no Docker engine: {exc}"
    return None


@pytest.fixture(scope="session")
def engine():
    problem = engine_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the Docker engine: {problem}")
        pytest.skip(problem)
    import docker

    return docker.from_env(timeout=600)


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("results")
