"""What the tests that need outside things share: ../shared and the built `reidcam` binary.
Missing → the test fails under CI (CI set), is skipped with the reason otherwise."""
import os
from pathlib import Path

import pytest

import reference


def _missing(what: str):
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


def shared_or_skip() -> Path:
    shared = reference.shared_dir()
    if not (shared / "models").is_dir():
        _missing(f"shared data not found at {shared} (set REIDCAM_SHARED)")
    return shared


def reidcam_or_skip() -> Path:
    binary = reference.reidcam_binary()
    if not binary.is_file():
        _missing(f"{binary} not built (cargo build --release; CARGO_TARGET_DIR)")
    return binary
