"""Shared pytest options: --regenerate rewrites the golden Dockerfiles instead of comparing."""


def pytest_addoption(parser):
    parser.addoption(
        "--regenerate",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.Dockerfile from the current templates",
    )
