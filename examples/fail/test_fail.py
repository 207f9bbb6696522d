def test_pass():
    assert 1 + 1 == 2


def test_fail():
    assert 1 + 1 == 3, "arithmetic is broken"
