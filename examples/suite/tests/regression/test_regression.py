import os
import time

import pytest

# Realistic NPU gating: the npu marker selects/labels the test, the skipif
# keeps it from failing on hosts without an Ascend card.
requires_npu = pytest.mark.skipif(
    not os.path.exists("/dev/davinci0"), reason="no Ascend NPU (/dev/davinci0 missing)"
)


def test_shape_inference():
    shape = (2, 3, 4)
    assert len(shape) == 3


def test_known_regression():
    got, expected = 41, 42
    assert got == expected, "operator fusion produced %d, expected %d" % (got, expected)


@pytest.mark.xfail(reason="issue #12: int8 rounding differs from reference")
def test_int8_rounding():
    assert round(2.5) == 3


@pytest.mark.xfail(reason="flaky on some hosts", strict=False)
def test_sometimes_flaky():
    assert True


@pytest.mark.nightly
def test_full_compile():
    time.sleep(0.3)
    assert sum(range(10)) == 45


@pytest.mark.npu
@requires_npu
def test_npu_matmul():
    assert True


def test_uses_broken_device(broken_device):
    assert broken_device is not None
