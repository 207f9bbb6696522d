import time

import pytest


def add(a, b):
    return a + b


def test_import_and_add():
    assert add(1, 2) == 3


@pytest.mark.parametrize("a,b,expected", [(1, 2, 3), (0, 0, 0), (-1, 1, 0)])
def test_add_parametrized(a, b, expected):
    assert add(a, b) == expected


def test_slow_compile_stage():
    time.sleep(0.4)
    assert True


def test_slow_link_stage():
    time.sleep(0.3)
    assert "".join(["ok"]) == "ok"


@pytest.mark.skip(reason="feature flag not enabled in this suite")
def test_feature_flag():
    assert False
