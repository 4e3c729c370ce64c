"""``ringmatch keys create|list|revoke`` as an operator runs it (the console script).

The store's file is checked as an operator would (mode 0600, the secret shown once and
never by ``list``), and every refusal is a non-zero exit with one line on stderr.  That
a running publisher honours a revoke within a bounded time is
tests/publisher/test_coinbase_auth.py::test_a_revoked_key_stops_working_within_three_seconds.
"""
import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RINGMATCH = os.path.join(os.path.dirname(sys.executable), "ringmatch")

pytestmark = [pytest.mark.timeout(120)]


def keys(*args, cwd=None):
    proc = subprocess.run([RINGMATCH, "keys"] + list(args), cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    return proc.returncode, proc.stdout, proc.stderr


def test_create_shows_the_secret_once_and_list_never(tmp_path):
    data = str(tmp_path)
    code, out, err = keys("create", "--account", "7", "--scope", "trade", "--label", "desk 1",
                          "--data-dir", data)
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines()[:5])
    secret, passphrase, key = fields["secret"], fields["passphrase"], fields["key"]
    assert fields["account"] == "7" and fields["scope"] == "trade" and len(secret) == 88
    path = os.path.join(data, "api_keys.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    on_disk = open(path).read()
    assert secret in on_disk and passphrase not in on_disk     # the passphrase: a salted hash
    code, out, err = keys("--data-dir", data, "list")           # option before the action too
    assert code == 0, err
    assert key in out and "desk 1" in out and "active" in out
    assert secret not in out and passphrase not in out
    code, out, _ = keys("list", "--json", "--data-dir", data)
    listed = json.loads(out)
    assert [(r["key"], r["account_id"], r["scope"], r["status"]) for r in listed] == \
        [(key, 7, "trade", "active")]
    assert "secret" not in out and "passphrase" not in out
    code, out, err = keys("revoke", key, "--data-dir", data)
    assert code == 0 and key in out, err
    assert secret not in open(path).read()                       # a revoked key keeps no secret
    assert json.loads(keys("list", "--json", "--data-dir", data)[1])[0]["status"] == "revoked"


def test_data_dir_comes_from_the_config(tmp_path):
    data = tmp_path / "from-config"
    data.mkdir()
    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"data_dir": str(data)}))
    code, out, err = keys("create", "--account", "9", "--scope", "view", "--json",
                          "--config", str(config))
    assert code == 0, err
    assert json.loads(out)["scope"] == "view"
    assert os.path.exists(str(data / "api_keys.json"))


def test_a_config_with_a_typo_is_refused_not_read_as_the_default(tmp_path):
    """``"data_dri"`` must not make the key land in ./var, where no publisher reads it."""
    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"data_dri": str(tmp_path)}))
    code, out, err = keys("create", "--account", "9", "--scope", "view", "--config", str(config),
                          cwd=str(tmp_path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (code, out, err)
    assert "data_dri: unknown key" in err
    assert not os.path.exists(str(tmp_path / "var"))


@pytest.mark.parametrize("args, code, needle", [
    (["create", "--account", "x", "--scope", "view"], 2, "--account"),
    (["create", "--account", "0", "--scope", "view"], 2, "out of range"),
    (["create", "--account", "4294967296", "--scope", "view"], 2, "--account"),
    (["create", "--account", "7", "--scope", "admin"], 2, "invalid choice"),
    (["create", "--account", "7"], 2, "--scope"),
    (["revoke", "0123456789abcdef"], 1, "no key"),
    (["revoke"], 2, "key"),
    ([], 2, "give an action"),
    (["rotate"], 2, "invalid choice"),
])
def test_refusals_are_one_line_and_non_zero(tmp_path, args, code, needle):
    got, out, err = keys(*(args + ["--data-dir", str(tmp_path)]))
    assert got == code, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ringmatch keys") and needle in err, err
    assert out == ""
    assert not os.path.exists(str(tmp_path / "api_keys.json"))


def test_store_problems_are_one_line_and_non_zero(tmp_path):
    missing = str(tmp_path / "nope")
    for args in (["list"], ["create", "--account", "7", "--scope", "view"]):
        code, out, err = keys(*(args + ["--data-dir", missing]))
        assert code == 1 and len(err.strip().splitlines()) == 1 and "does not exist" in err, err
    code, _, _ = keys("create", "--account", "7", "--scope", "view", "--data-dir", str(tmp_path))
    assert code == 0
    key = json.loads(keys("list", "--json", "--data-dir", str(tmp_path))[1])[0]["key"]
    code, out, err = keys("revoke", key, "--data-dir", str(tmp_path))
    assert code == 0
    code, out, err = keys("revoke", key, "--data-dir", str(tmp_path))
    assert code == 1 and "already revoked" in err and len(err.strip().splitlines()) == 1
    with open(str(tmp_path / "api_keys.json"), "w") as f:
        f.write("{torn")
    for args in (["list"], ["create", "--account", "7", "--scope", "view"], ["revoke", key]):
        code, out, err = keys(*(args + ["--data-dir", str(tmp_path)]))
        assert code == 1 and "not valid JSON" in err and len(err.strip().splitlines()) == 1, err
    bad_config = tmp_path / "bad.json"
    bad_config.write_text("[1, 2")
    code, out, err = keys("list", "--config", str(bad_config))
    assert code == 2 and "configuration" in err and len(err.strip().splitlines()) == 1, err
