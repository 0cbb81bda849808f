"""Model references: what a client may write in `model`."""

from __future__ import annotations

import pytest

from loraloop.adapters.names import ModelRef, parse_model_ref


@pytest.mark.parametrize(
    "text, expected",
    [
        ("acme/support", ModelRef("acme/support", None)),
        ("acme/support@12", ModelRef("acme/support", 12)),
        ("a.b_c-d/e9", ModelRef("a.b_c-d/e9", None)),
    ],
)
def test_model_refs(text, expected):
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "acme",
        "Acme/support",
        "acme/support@0",
        "acme/support@x",
        "../acme/x",
        "/abs/path",
        "acme/sup port",
        "acme/-x",
        "acme//x",
        "acme/x/y",
        "a" * 64 + "/x",
        "acme/x@01",
    ],
)
def test_invalid_model_refs(text):
    assert parse_model_ref(text) is None
