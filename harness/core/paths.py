"""Where the checkout keeps things: the images' recipes, the results, and what this host keeps
between runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
TEMPLATES = IMAGES / "templates"
OVERRIDES = IMAGES / "overrides"
CONTEXT = IMAGES / "context"
RENDERED = IMAGES / "cells"
# What this checkout keeps between runs on this host (the guest, the Ubuntu keyring, the KVM
# probe's answer, builds remembered as unavailable); not the package cache, which is a container.
HOST_STATE = ROOT / ".cache"
# The results directory is a run's option (RunOptions.results: $HVGATE_RESULTS, else results/),
# passed to whatever writes or reads results; core/options.py reads the environment.
