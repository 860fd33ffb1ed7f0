"""harness.stages.build: the origins an image recorded, read from its build log or its label,
each line checked against its grammar."""

import types

from harness.stages.build import (
    LABEL_PACKAGES,
    built_image,
    origins_from_label,
    recorded_origins,
    recorded_packages,
)

LINES = [
    "Step 7/9 : RUN /opt/hvgate/bin/record-versions",
    "HVGATE-VERSION libvirt-daemon\t11.3.0-2~bpo12+1",
    "HVGATE-ORIGIN libvirt-daemon\t11.3.0-2~bpo12+1\tbookworm-backports",
    "HVGATE-ORIGIN seabios\t1.16.3-2~bpo12+1\tbookworm-backports",
    "HVGATE-ORIGIN local-build\t1.0-1\t-",
    "HVGATE-ORIGINS 3",
]
ORIGINS = [
    {"package": "libvirt-daemon", "version": "11.3.0-2~bpo12+1", "suites": ["bookworm-backports"]},
    {"package": "seabios", "version": "1.16.3-2~bpo12+1", "suites": ["bookworm-backports"]},
    {"package": "local-build", "version": "1.0-1", "suites": []},
]


def test_origins_are_read_from_the_build_log():
    assert recorded_origins(LINES) == ORIGINS
    assert recorded_origins(["HVGATE-ORIGINS 0"]) == []


def test_no_record_or_a_partial_one_is_none():
    assert recorded_origins(LINES[:2]) is None  # an image without the step
    assert recorded_origins(LINES[:-1]) is None  # the count line never came
    assert recorded_origins([*LINES[:-1], "HVGATE-ORIGINS 4"]) is None


def test_a_line_off_its_grammar_voids_the_record():
    bad = "HVGATE-ORIGIN seabios\t1.16$(id)\tbookworm-backports"
    assert recorded_origins([LINES[2], bad, "HVGATE-ORIGINS 2"]) is None
    bad = "HVGATE-ORIGIN seabios\t1.16\t../x"
    assert recorded_origins([bad, "HVGATE-ORIGINS 1"]) is None


def test_the_label_holds_the_same_record():
    label = " ".join(f"{o['package']}={o['version']}@{','.join(o['suites'])}" for o in ORIGINS)
    assert origins_from_label(label) == ORIGINS
    assert origins_from_label("") == []
    assert origins_from_label(None) is None
    assert origins_from_label("x=1@a;b") is None


def test_the_packages_digest_is_read_from_the_build_log():
    digest = "0123456789abcdef" * 4
    assert recorded_packages(["HVGATE-VERSION libvirt-daemon\t9.0.0", f"HVGATE-PACKAGES {digest}"])
    assert recorded_packages([f"HVGATE-PACKAGES {digest}"]) == digest
    assert recorded_packages(["HVGATE-PACKAGES not-a-digest"]) is None
    assert recorded_packages([]) is None


class Images:
    """An engine's images, by tag: each an object with labels and attrs."""

    def __init__(self, labels):
        self.labels = labels

    def get(self, tag):
        return types.SimpleNamespace(labels=self.labels, attrs={"Size": 1})


def test_an_image_without_its_packages_digest_is_built_again(unit_matrix):
    cell = unit_matrix[1][0]
    versions = {"io.hvgate.version.libvirt-daemon": "9.0.0-4"}
    digest = "ab" * 32
    found = built_image(
        types.SimpleNamespace(images=Images({**versions, LABEL_PACKAGES: digest})),
        cell,
        b"context",
        "sha256:base",
    )
    assert found is not None and found.packages == digest and found.status == "cached"
    for labels in (versions, {**versions, LABEL_PACKAGES: "x"}):
        engine = types.SimpleNamespace(images=Images(labels))
        assert built_image(engine, cell, b"context", "sha256:base") is None
