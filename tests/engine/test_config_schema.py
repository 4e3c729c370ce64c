"""Issue 16 (operators): the runtime configuration is checked by a schema.

Driven as a user does: ``ringmatch run --config FILE`` (and ``--check-config``,
which stops after the check).  Every refusal is one line on stderr naming the
key path, exit code 2, no traceback, nothing started.  The embedded default and
the configurations the test suites and benchmarks write stay valid.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RINGMATCH = os.path.join(os.path.dirname(sys.executable), "ringmatch")

pytestmark = [pytest.mark.timeout(120)]


def ringmatch(*argv, timeout=60):
    proc = subprocess.run([RINGMATCH] + list(argv), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def write(tmp_path, content, name="engine.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def shard(**extra):
    return dict({"name": "cs%d" % os.getpid(), "symbols": ["BTC-USD"],
                 "input_capacity": 1024, "output_capacity": 4096}, **extra)


BAD = [
    ({"publisher": {"port": 70000}}, "publisher.port: must be 1..65535, got 70000"),
    ({"publisher": {"port": 0}}, "publisher.port: must be 1..65535, got 0"),
    ({"publisher": {"port": "8080"}}, 'publisher.port: must be an integer, got "8080"'),
    ({"publisher": {"port": True}}, "publisher.port: must be an integer, got true"),
    ({"publisher": {"prot": 8080}}, "publisher.prot: unknown key"),
    ({"journal": {"fsync": "sometimes"}},
     'journal.fsync: must be one of batch, interval, off, got "sometimes"'),
    ({"snapshots": {"keep": 1}}, "snapshots: unknown key"),
    ({"shards": [shard(input_capacity=1000)]},
     "shards[0].input_capacity: must be a power of two >= 2, got 1000"),
    ({"shards": [shard(publisher_port=99999)]},
     "shards[0].publisher_port: must be 1..65535, got 99999"),
    ({"shards": [{"symbols": ["BTC-USD"]}]}, "shards[0].name: missing (required)"),
    ({"shards": [shard(symbols=["DOGE-USD"])]}, "unknown symbol 'DOGE-USD'"),
    ({"standby": {"host": "127.0.0.1", "port": 123456}},
     "standby.port: must be 1..65535, got 123456"),
    ({"replication": {"mode": "eventually"}},
     'replication.mode: must be one of sync, async, got "eventually"'),
    ({"supervisor": {"stall_after_s": -1}}, "supervisor.stall_after_s: must be > 0, got -1"),
    ({"publisher": {"api_keys": [{"key": "k", "secret": "s", "account_id": 0}]}},
     "publisher.api_keys[0].account_id: must be 1..4294967295, got 0"),
    ({"publisher": {"rate_limit": {"per_second": "fast"}}},
     'publisher.rate_limit.per_second: must be a number, got "fast"'),
    ({"log": {"format": "xml"}}, 'log.format: must be one of text, json, got "xml"'),
    ({"publisher": []}, "publisher: must be an object, got []"),
    ({"exchange": {"assets": [{"id": 1, "name": "USD", "decimals": 2}],
                   "symbols": [{"id": 1, "name": "X", "base": "USD", "quote": "USD",
                                "tick_size": "1", "lot_size": "1"}]}},
     "base and quote are the same asset"),
    ({"publisher": {"auth_window_s": float("inf")}},
     "publisher.auth_window_s: must be a finite number, got Infinity"),
    ({"publisher": {"client_oid_window_s": float("nan")}},
     "publisher.client_oid_window_s: must be a finite number, got NaN"),
    ({"publisher": {"po\nrt": 8080}}, 'publisher."po\\nrt": unknown key'),
    ({"publisher": {"access_log": "yes"}},
     'publisher.access_log: must be true or false, got "yes"'),
    ({"publisher": {"fills_per_account": 0}}, "publisher.fills_per_account: must be >= 1, got 0"),
    ({"publisher": {"ws_max_queue_bytes": 1.5}},
     "publisher.ws_max_queue_bytes: must be an integer, got 1.5"),
    ({"publisher": {"ws_max_interval_s": -0.1}},
     "publisher.ws_max_interval_s: must be >= 0, got -0.1"),
    ({"shards": [shard(symbols=["BTC\nUSD"])]}, "unknown symbol 'BTC\\nUSD'"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[e.split(":")[0] for _, e in BAD])
def test_a_bad_configuration_is_one_line_naming_the_key(tmp_path, override, expected):
    raw = {"data_dir": str(tmp_path / "data"), "shards": [shard()]}
    raw.update(override)
    code, out, err = ringmatch("run", "--config", write(tmp_path, raw))
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ringmatch run: config error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "data").exists()           # refused before anything was made


def test_the_check_stops_at_the_first_problem_and_counts_the_others(tmp_path):
    raw = {"data_dir": str(tmp_path / "data"), "shards": [shard()],
           "publisher": {"port": 70000, "colour": "blue"}}
    code, _, err = ringmatch("run", "--check-config", "--config", write(tmp_path, raw))
    assert code == 2 and len(err.splitlines()) == 1
    assert "publisher." in err and "(and 1 more)" in err


@pytest.mark.parametrize("content,expected", [
    ('{"publisher": {"port": 8080,}}', "is not valid JSON: "),
    ("[1, 2]", "(top level): must be an object, got [1, 2]"),
], ids=["syntax", "not-an-object"])
def test_a_file_that_is_not_a_json_object_is_one_line(tmp_path, content, expected):
    code, _, err = ringmatch("run", "--config", write(tmp_path, content))
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize("content,expected", [
    (b'{"data_dir": "\xff"}', "is not UTF-8 text"),
    (b"[" * 100000, "is not valid JSON: nested too deeply"),
], ids=["latin-1", "deep"])
def test_a_file_json_cannot_read_is_one_line(tmp_path, content, expected):
    path = tmp_path / "engine.json"
    path.write_bytes(content)
    code, out, err = ringmatch("run", "--check-config", "--config", str(path))
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("entry", [
    {"key": "k", "secret": 98765432, "account_id": 1},
    {"key": "k", "secret": "s", "account_id": 1, "passphrase": 98765432},
    "k:98765432",
], ids=["secret", "passphrase", "entry"])
def test_a_refused_api_key_never_shows_its_secret(tmp_path, entry):
    raw = {"data_dir": str(tmp_path / "data"), "shards": [shard()],
           "publisher": {"api_keys": [entry]}}
    code, out, err = ringmatch("run", "--check-config", "--config", write(tmp_path, raw))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "publisher.api_keys[0]" in err and "98765432" not in err, err


def test_a_missing_file_and_a_bad_override_are_one_line(tmp_path):
    code, _, err = ringmatch("run", "--config", str(tmp_path / "nope.json"))
    assert code == 2 and len(err.splitlines()) == 1 and "cannot read" in err, err
    code, _, err = ringmatch("run", "--check-config", "--port", "70000")
    assert code == 2 and err.strip() == \
        "ringmatch run: config error: publisher.port: must be 1..65535, got 70000"


def test_json_log_format_refusal_is_one_json_object(tmp_path):
    code, _, err = ringmatch("run", "--log-format", "json", "--config",
                             write(tmp_path, {"publisher": {"port": 70000}}))
    assert code == 2 and len(err.splitlines()) == 1
    line = json.loads(err)
    assert line["event"] == "refused" and line["exit_code"] == 2
    assert "publisher.port: must be 1..65535, got 70000" in line["message"]


def test_the_publisher_buffer_and_log_settings_are_accepted():
    from engine.config_schema import validate
    from engine.runtime import DEFAULT_RUNTIME, _merge
    pub = {"access_log": False, "fills_per_account": 50000, "ws_max_queue_bytes": 1 << 20,
           "ws_max_interval_s": 0}
    assert validate(_merge(DEFAULT_RUNTIME, {"publisher": pub})).publisher == dict(
        DEFAULT_RUNTIME["publisher"], **pub)


def test_the_embedded_default_is_valid():
    code, out, err = ringmatch("run", "--check-config")
    assert code == 0, err
    assert out.startswith("ringmatch run: configuration OK") and "BTC-USD" in out


def _suite_configs(tmp_path):
    """The configuration files the pipeline and publisher harnesses write."""
    sys.path.insert(0, ROOT)
    from tests.pipeline.conftest import EngineRun
    from tests.publisher.pub_harness import Engine
    paths = []
    for i, extra in enumerate([None, {"supervisor": {"stall_after_s": 1.5}},
                               {"journal": {"fsync": "batch", "segment_bytes": 16}},
                               {"snapshot": {"every_commands": 0, "every_seconds": 1,
                                             "keep": 2}}]):
        (tmp_path / ("p%d" % i)).mkdir()
        paths.append(EngineRun(tmp_path / ("p%d" % i), "cfg%d" % i, extra=extra).config)
    for i, extra in enumerate([None, {"ws_queue": 8, "ws_resync_timeout_s": 1.0},
                               {"rate_limit": {"per_second": 100000, "burst": 100000}}]):
        (tmp_path / ("e%d" % i)).mkdir()
        paths.append(Engine(tmp_path / ("e%d" % i), mode="run", publisher_extra=extra).config_path)
    from tests.replicator.test_failover import write_configs
    (tmp_path / "f").mkdir()
    write_configs(tmp_path / "f", "rpa0", "rsb0", 9100, wait_strategy=None)
    paths += [str(tmp_path / "f" / "p.json"), str(tmp_path / "f" / "s.json")]
    return paths


def test_the_configurations_the_tests_write_are_valid(tmp_path):
    for path in _suite_configs(tmp_path):
        code, out, err = ringmatch("run", "--check-config", "--config", path)
        assert code == 0, (path, err)


def test_a_resolved_shard_configuration_is_valid(tmp_path):
    """What the supervisor writes to run/<shard>.json (shard view: exchange, port) passes too."""
    from engine.config_schema import load
    runtime = load(write(tmp_path, {"data_dir": str(tmp_path), "standby": {
        "host": "127.0.0.1", "port": 9100}, "shards": [shard(), shard(name="two", symbols=[
            "ETH-USD"])]}))
    for s in runtime.shards:
        path = str(tmp_path / ("%s.json" % s.name))
        view = runtime.shard_view(s.name)
        view.raw["replication"] = dict(view.raw["replication"], primary_shard="p0",
                                       listen={"host": "127.0.0.1", "port": 9100})
        view.dump(path)
        code, out, err = ringmatch("run", "--check-config", "--config", path)
        assert code == 0, err
