"""The documents' own limits, checked in the fast loop."""

from .conftest import ROOT


def test_the_readme_stays_under_15000_bytes():
    size = len((ROOT / "README.md").read_bytes())
    assert size < 15_000, f"README.md is {size} bytes: move trial lists and detail to docs/"
