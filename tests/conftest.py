"""Shared fixtures for mmarray's tests; helper functions live in tests/helpers.py."""
import pytest


@pytest.fixture
def data_file(tmp_path):
    """A 64 KiB + 13 byte file whose byte i is i % 251."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(i % 251 for i in range(65536 + 13)))
    return path
