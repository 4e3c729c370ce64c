import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pub_harness import Engine  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = Engine(tmp_path_factory.mktemp("pub"))
    e.start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def alice(engine):
    c = engine.client("k-alice")
    c.deposit("USD", "1000000")
    c.deposit("BTC", "100")
    c.deposit("ETH", "1000")
    yield c
    c.close()


@pytest.fixture(scope="module")
def bob(engine):
    c = engine.client("k-bob")
    c.deposit("USD", "1000000")
    c.deposit("BTC", "100")
    c.deposit("ETH", "1000")
    yield c
    c.close()


@pytest.fixture(scope="module")
def anon(engine):
    c = engine.client(None)
    yield c
    c.close()
