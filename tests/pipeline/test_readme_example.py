"""The README's market-maker example runs as written against a running engine."""
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from tests.pipeline.conftest import ROOT


def _readme_example():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    return blocks[0]


@pytest.mark.timeout(180)
def test_readme_market_maker_example(engine_factory, tmp_path):
    run = engine_factory().start()
    code = _readme_example().replace('data_dir="./var"', 'data_dir=%r, shard=%r'
                                     % (run.data_dir, run.shard))
    script = tmp_path / "mm.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    url = "http://127.0.0.1:%d/products/BTC-USD/book?level=2" % run.port
    with urllib.request.urlopen(url, timeout=10) as r:
        book = json.loads(r.read().decode())
    bids = [(float(p), float(q)) for p, q, *_ in book["bids"]]
    asks = [(float(p), float(q)) for p, q, *_ in book["asks"]]
    assert bids == [(30000.0 - 10 * (i + 1), 0.1) for i in range(5)]
    assert asks == [(30000.0 + 10 * (i + 1), 0.1) for i in range(5)]
    assert run.stop() == 0
