"""``ringmatch ring inspect/list`` show header, cursor, consumers and lag."""
import json

import pytest

from engine.cli import main

pytestmark = [pytest.mark.timeout(60)]


def test_inspect_shows_cursor_consumers_and_lag(make_ring, capsys):
    r = make_ring(capacity=16, consumers={"journaler": [], "matcher": ["journaler"]})
    p = r.producer(3)
    for _ in range(5):
        p.write(bytes(64))
    j = r.consumer("journaler")
    j.poll(max_batch=2, timeout=0)
    j.commit(2)
    assert main(["ring", "inspect", r.name]) == 0
    out = capsys.readouterr().out
    assert "capacity           16" in out and "cursor             5" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith("  journaler") or line.startswith("  matcher")}
    assert rows["journaler"][:2] == ["2", "3"]
    assert rows["matcher"][:3] == ["0", "5", "journaler"]
    assert main(["ring", "inspect", r.name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cursor"] == 5 and info["producers"][0]["producer_id"] == 3


def test_list_and_missing_ring(make_ring, capsys):
    r = make_ring()
    assert main(["ring", "list"]) == 0
    assert r.name in capsys.readouterr().out
    assert main(["ring", "inspect", r.name + "-nope"]) == 1
    assert "no ring" in capsys.readouterr().out
