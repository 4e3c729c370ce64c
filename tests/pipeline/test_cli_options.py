"""Issue 16 (operators): the command line as people type it, driven through the console script.

- options are accepted before the subcommand, after it, and after its action;
- ``--symbol BTC-USD`` where a symbol id is taken (``journal inspect|export``);
- a wrong command line is one line on stderr, exit 2;
- progress bars (tqdm) on stderr only when stderr is a terminal (a pty here);
- ``ringmatch bench run`` writes to perf/results only with ``--save``.
"""
import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import termios

import pytest

from tests.pipeline.conftest import ROOT, RINGMATCH

pytestmark = [pytest.mark.timeout(180)]
SHARD = "shard0"


def ringmatch(*argv, timeout=120):
    proc = subprocess.run([RINGMATCH] + list(argv), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def with_terminal_stderr(*argv, timeout=120, size=None):
    """Run with stderr on a pseudo-terminal; (exit code, stdout, what the terminal showed).

    ``size`` (rows, columns): set the terminal's size (else it reports 0 x 0).
    """
    master, slave = pty.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    try:
        proc = subprocess.Popen([RINGMATCH] + list(argv), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = None
        shown = b""
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError("no output within %ss" % timeout)
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        out = proc.stdout.read().decode()
        proc.wait(timeout)
        return proc.returncode, out, shown.decode(errors="replace")
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)


@pytest.fixture(scope="module")
def journal_dir(tmp_path_factory):
    """A data dir with a journal of deposits and orders on BTC-USD (1) and ETH-USD (2)."""
    from engine.client import pack_command
    from journaler.writer import JournalWriter
    from ringbuf.records import CommandKind
    data = str(tmp_path_factory.mktemp("cli") / "data")
    records = []
    for account in (1, 2):
        for asset in (1, 2, 3):
            records.append(pack_command(int(CommandKind.DEPOSIT), symbol_id=asset,
                                        account_id=account, qty=10 ** 12))
    for i in range(3000):
        symbol = 1 if i % 3 else 2
        records.append(pack_command(int(CommandKind.NEW_ORDER), side=1 + i % 2, order_type=1,
                                    tif=1, symbol_id=symbol, account_id=1 + i % 2,
                                    price=30000 + i % 7 if symbol == 1 else 20000 + i % 5,
                                    qty=1, timestamp_ns=1000 + i, client_order_id=i + 1))
    with JournalWriter(data, SHARD, segment_bytes=64 << 10, fsync="off") as writer:
        for start in range(0, len(records), 100):
            chunk = records[start:start + 100]
            writer.append(start + 1, b"".join(chunk))
    return data


def test_options_before_the_subcommand_or_after_the_action_are_one_command(journal_dir):
    results = [ringmatch(*argv) for argv in (
        ["journal", "verify", "--data-dir", journal_dir],
        ["journal", "--data-dir", journal_dir, "verify"],
        ["--data-dir", journal_dir, "journal", "verify"],
        ["--data-dir=%s" % journal_dir, "--shard", SHARD, "journal", "verify"],
        ["journal", "verify", "--shard", SHARD, "--data-dir", journal_dir],
    )]
    assert all(code == 0 for code, _, _ in results), results
    outs = {out for _, out, _ in results}
    assert len(outs) == 1 and "records=3006" in outs.pop() and results[0][1].endswith("OK\n")


def test_an_action_option_before_the_subcommand_reaches_the_action(tmp_path):
    data = str(tmp_path)
    for argv in (["--json", "--data-dir", data, "keys", "list"],
                 ["keys", "list", "--data-dir", data, "--json"],
                 ["keys", "--data-dir", data, "list", "--json"]):
        code, out, err = ringmatch(*argv)
        assert code == 0 and out.strip() == "[]", (argv, out, err)
    code, out, err = ringmatch("--shard", "x", "ring", "list")
    assert code == 2 and err.strip() == \
        "ringmatch ring: unrecognized arguments: --shard x (see --help)"


def test_symbols_by_name_or_id(journal_dir):
    by_name = ringmatch("journal", "inspect", "--symbol", "ETH-USD", "--limit", "0",
                        "--kind", "NEW_ORDER", "--data-dir", journal_dir)
    by_id = ringmatch("--data-dir", journal_dir, "journal", "inspect", "--symbol", "2",
                      "--limit", "0", "--kind", "NEW_ORDER")
    assert by_name[0] == by_id[0] == 0 and by_name[1] == by_id[1]
    assert "(1000 record(s) matched)" in by_name[2]
    header, *rows = by_name[1].splitlines()
    column = header.split().index("symbol_id")
    assert len(rows) == 1000 and {r.split()[column] for r in rows} == {"2"}
    code, out, err = ringmatch("journal", "export", "--symbol", "btc-usd", "--kind", "new_order",
                               "--data-dir", journal_dir)
    assert code == 0 and "exported 2000 record(s)" in err
    code, out, err = ringmatch("journal", "inspect", "--symbol", "DOGE-USD", "--data-dir",
                               journal_dir)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "unknown symbol 'DOGE-USD' (have BTC-USD=1, ETH-USD=2, ETH-BTC=3)" in err


@pytest.mark.parametrize("argv,start", [
    (["journal", "verify", "--frob"], "ringmatch journal: unrecognized arguments: --frob"),
    (["--frob", "status"], "ringmatch status: unrecognized arguments: --frob"),
    (["status", "--count", "many"], "ringmatch status: argument --count: invalid int value"),
    (["ring", "inspect"], "ringmatch ring inspect: the following arguments are required: name"),
    (["halt"], "ringmatch halt: the following arguments are required: --symbol"),
    (["journal", "truncate", "--data-dir", "/nonexistent"],
     "ringmatch journal truncate: the following arguments are required: --at"),
    (["journal", "verify", "--data-dir", "/nonexistent"],
     "ringmatch journal verify: no journal in /nonexistent"),
    (["bench", "run", "no_such_suite"], "ringmatch bench run: unknown suite(s): no_such_suite"),
    (["bench", "run", "ping_pong_latency", "--results-dir", "/proc/nonexistent/x"],
     "ringmatch bench run: --results-dir /proc/nonexistent/x: "),
    (["nosuchcommand"], "ringmatch: argument COMMAND: invalid choice: 'nosuchcommand'"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else "")
def test_a_wrong_command_line_is_one_line(argv, start):
    code, out, err = ringmatch(*argv)
    assert code == 2, (code, out, err)
    assert len(err.splitlines()) == 1 and err.startswith(start), err
    assert "Traceback" not in err


def test_progress_bars_only_on_a_terminal(journal_dir):
    code, out, shown = with_terminal_stderr("journal", "verify", "--data-dir", journal_dir,
                                            size=(24, 100))
    assert code == 0 and out.endswith("OK\n")
    assert "verify" in shown and "%|" in shown, shown            # tqdm's bar
    code, out, shown = with_terminal_stderr("journal", "replay", "--data-dir", journal_dir)
    assert code == 0 and "replayed=3006" in out
    assert "replay" in shown and "%|" in shown, shown
    code, out, shown = with_terminal_stderr("journal", "replay", "--no-progress",
                                            "--data-dir", journal_dir)
    assert code == 0 and "%|" not in shown
    # not a terminal (a pipe, a log file, CI): no bar at all
    for action in ("verify", "replay"):
        code, out, err = ringmatch("journal", action, "--data-dir", journal_dir)
        assert code == 0 and err == "", err


def _suite_files(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("ring_ping_pong_latency_"))


def _stat(directory):
    return {n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in _suite_files(directory)}


def test_bench_run_writes_perf_results_only_with_save(tmp_path):
    results = os.path.join(ROOT, "perf", "results")
    before = _stat(results)
    code, out, err = ringmatch("bench", "run", "ping_pong_latency", "--quick", timeout=170)
    assert code == 0, err
    assert _stat(results) == before                   # the committed figures are untouched
    line = [l for l in out.splitlines() if l.startswith("results in ")][-1]
    scratch = line.split()[2]
    try:
        assert "not saved: --save writes them to perf/results" in line
        assert _suite_files(scratch) and all(n.endswith((".json", ".md"))
                                             for n in _suite_files(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    target = tmp_path / "mine"
    code, out, err = ringmatch("bench", "run", "--results-dir", str(target),
                               "ping_pong_latency", "--quick", timeout=170)
    assert code == 0, err
    assert _suite_files(str(target)) and _stat(results) == before
    assert "results in %s" % target in out
