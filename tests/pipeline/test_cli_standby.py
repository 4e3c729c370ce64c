"""``ringmatch standby`` refuses as ``ringmatch run`` does: one line (one JSON object under
``--log-format json``), the exit codes of docs/operations.md, never a traceback."""
import json
import subprocess

import pytest

from tests.pipeline.conftest import ROOT, RINGMATCH

pytestmark = [pytest.mark.timeout(120)]


def standby(*argv):
    proc = subprocess.run([RINGMATCH, "standby", "--listen", "127.0.0.1:1", "--shard", "shard0"]
                          + list(argv), cwd=ROOT, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_data_dir_that_cannot_be_made_is_exit_6_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = standby("--data-dir", str(blocker / "data"))
    assert code == 6 and out == "" and len(err.splitlines()) == 1, (code, out, err)
    assert err.startswith("ringmatch standby: ") and "Traceback" not in err


def test_refusals_are_json_under_log_format_json(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = standby("--log-format", "json", "--data-dir", str(blocker / "data"))
    assert code == 6 and len(err.splitlines()) == 1, err
    line = json.loads(err)
    assert line["event"] == "refused" and line["exit_code"] == 6
    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"publisher": {"port": 70000}}))
    code, _, err = standby("--log-format", "json", "--config", str(config))
    assert code == 2 and len(err.splitlines()) == 1, err
    line = json.loads(err)
    assert line["exit_code"] == 2 and "publisher.port: must be 1..65535" in line["message"]
