"""harness.core.options: the flags and the environment, checked once into one RunOptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import ConfigurationError
from harness.core.options import (
    CACHE_ENV,
    RESULTS_ENV,
    RunOptions,
    accel_flag,
    package_cache_wanted,
    results_dir,
    runs_flag,
)
from harness.core.paths import ROOT


def test_the_results_directory_comes_from_the_environment():
    assert results_dir({}) == ROOT / "results"
    assert results_dir({RESULTS_ENV: ""}) == ROOT / "results"  # empty: as unset
    assert results_dir({RESULTS_ENV: "shards/1"}) == Path("shards/1")
    assert results_dir({RESULTS_ENV: "/tmp/r"}) == Path("/tmp/r")


def test_the_package_cache_is_on_unless_switched_off():
    assert package_cache_wanted(False, {CACHE_ENV: " ON "})
    assert not package_cache_wanted(False, {CACHE_ENV: " Off\n"})
    assert not package_cache_wanted(True, {CACHE_ENV: "on"})


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (runs_flag, "0", "--runs '0': use a whole number from 1 to 1000"),
        (runs_flag, "1001", "--runs '1001': use a whole number from 1 to 1000"),
        (runs_flag, "abc", "--runs 'abc': use a whole number from 1 to 1000"),
        (accel_flag, "fast", "--accel 'fast': use auto, kvm or tcg"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(check, value, message):
    with pytest.raises(ConfigurationError) as info:
        check(value)
    assert info.value.exit_code == 2
    assert str(info.value) == message


def test_good_flags_become_their_values():
    assert (runs_flag(None), runs_flag("5"), runs_flag(5)) == (None, 5, 5)
    assert [accel_flag(a) for a in (None, "auto", "kvm", "tcg")] == [None, "auto", "kvm", "tcg"]


def test_run_options_name_the_paths_a_run_writes(tmp_path):
    opts = RunOptions(results=tmp_path, cells="debian-*", accel="tcg", runs=2, build=False)
    assert opts.logs == tmp_path / "logs"
    assert opts.run_dir("r1") == tmp_path / "runs" / "r1"
    assert opts.task == "matrix.test"
    assert RunOptions(results=tmp_path).task == "matrix.run"
    # What runs/RUN_ID/run.json keeps of them, in its order.
    assert opts.stored() == {
        "matrix": "matrix.yaml",
        "cells": "debian-*",
        "exclude": None,
        "accel": "tcg",
        "runs": 2,
        "shard": None,
    }


def test_run_options_are_frozen_and_keep_the_flags_bounds(tmp_path):
    opts = RunOptions(results=tmp_path)
    with pytest.raises(AttributeError):
        opts.jobs = 2  # type: ignore[misc]
    for bad in ({"jobs": 0}, {"jobs": 65}, {"runs": 0}, {"accel": "fast"}):
        with pytest.raises(ConfigurationError):
            RunOptions(results=tmp_path, **bad)  # type: ignore[arg-type]
