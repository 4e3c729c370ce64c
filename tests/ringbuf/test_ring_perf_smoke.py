"""The perf harness and ring suites run and check their results (no speed asserted)."""
import json

import pytest

pytestmark = [pytest.mark.timeout(120)]


def test_harness_statistics_and_files(tmp_path, monkeypatch):
    from perf import harness
    monkeypatch.setattr(harness, "RESULTS_DIR", str(tmp_path))
    rates = iter([(100, 1.0), (300, 1.0), (200, 1.0), (50, 1.0)])

    def one_pass():
        n, t = next(rates)
        return harness.Sample(n, t, [1000, 2000, 3000])

    r = harness.measure("demo", "impl", one_pass, passes=3, warmup=1)
    # warm-up (100/s) is discarded: passes are 300, 200, 50
    assert (r.min, r.median, r.max) == (50, 200, 300)
    assert r.latency["count"] == 9 and 1990 <= r.latency["p50"] <= 2010
    js, md = harness.write_results("demo", "Demo", [r], {"records": 1})
    data = json.load(open(js))
    assert data["environment"]["interpreter"] and data["results"][0]["median"] == 200
    assert "| demo | impl |" in open(md).read()


def test_bench_cli_lists_ring_suites(capsys):
    from engine.cli import main
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    for suite in ("one_to_one_throughput", "one_to_one_batched_throughput",
                  "three_to_one_throughput", "diamond_throughput", "ping_pong_latency"):
        assert suite in out


def test_one_to_one_quick_run_checks_results(capsys):
    from perf.ring_bench import SUITES
    assert SUITES["one_to_one_throughput"](["--quick", "--no-write",
                                            "--strategies", "backoff"]) == 0
