import pytest


@pytest.fixture
def broken_device():
    """A fixture whose setup fails: every test using it is reported as an error."""
    raise RuntimeError("device handle could not be opened")
