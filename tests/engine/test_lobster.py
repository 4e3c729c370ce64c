"""Real order flow: the LOBSTER AMZN sample replayed through the matcher.

The recipe is in the data folder's README (and engine/lobster.py's docstring).
Skipped with a message when the data folder is absent.
"""
import os

import pytest

from engine import lobster

FILES = lobster.find_files(lobster.DEFAULT_DATA_DIR)
needs_data = pytest.mark.skipif(
    FILES is None, reason="LOBSTER sample not found in %s (set RINGMATCH_LOBSTER_DIR)"
    % lobster.DEFAULT_DATA_DIR)


def _matcher_available():
    try:
        import engine.matcher  # noqa: F401
    except ImportError:
        return False
    return True


needs_matcher = pytest.mark.skipif(not _matcher_available(),
                                   reason="engine.matcher is not available yet")


@pytest.fixture(scope="module")
def data():
    return lobster.load_messages(FILES[0]), lobster.load_orderbook(FILES[1])


# --- pure parts -------------------------------------------------------------
@pytest.mark.pypy
def test_parsers_read_lobster_rows(tmp_path):
    msg = tmp_path / "X_message_1.csv"
    book = tmp_path / "X_orderbook_1.csv"
    msg.write_text("34200.1,1,11,21,2238100,1\n34200.2,4,11,5,2238100,1\n")
    book.write_text("2239500,100,2238100,21\n2239500,100,2238100,16\n")
    assert lobster.find_files(str(tmp_path)) == (str(msg), str(book))
    messages = lobster.load_messages(str(msg))
    assert messages[1] == lobster.Message("34200.2", 4, 11, 5, 2238100, 1)
    assert lobster.load_orderbook(str(book))[1] == (2239500, 100, 2238100, 16)


@pytest.mark.pypy
def test_find_files_absent(tmp_path):
    assert lobster.find_files(str(tmp_path / "nope")) is None
    assert lobster.find_files(str(tmp_path)) is None


@pytest.mark.pypy
def test_allowed_exception_rows():
    assert lobster.in_allowed_exception(56083) and lobster.in_allowed_exception(56086)
    assert lobster.in_allowed_exception(56552) and lobster.in_allowed_exception(56554)
    assert not lobster.in_allowed_exception(56082) and not lobster.in_allowed_exception(56555)


def _synthetic_case():
    """A hand-made flow: seed, joins, an unknown id, a replace, a two-level sweep."""
    M = lobster.Message
    messages = [
        M("1.0", 5, 0, 1, 1000, -1),
        M("1.1", 1, 10, 5, 1000, -1),      # joins the seeded ask level behind the blob
        M("1.2", 1, 11, 7, 990, 1),         # joins the bid level
        M("1.3", 3, 2, 4, 1000, -1),        # unknown id 2: comes off the ask blob
        M("1.4", 3, 10, 5, 1000, -1),       # replace: delete 10 ...
        M("1.4", 1, 12, 3, 1000, -1),       # ... and re-enter smaller: keeps its place
        M("1.5", 4, 3, 6, 1000, -1),        # buy IOC: blob (unknown id 3) 6
        M("1.5", 4, 12, 3, 1000, -1),       #          then id 12 (was 10)
        M("1.5", 4, 5, 2, 1010, -1),        #          then a hidden level at 1010
        M("1.6", 1, 13, 2, 995, 1),         # better bid: the 990 level drops from view
        M("1.7", 3, 13, 2, 995, 1),         # gone: 990 comes back into view as a blob
    ]
    rows = [
        (1000, 10, 990, 4),
        (1000, 15, 990, 4),
        (1000, 15, 990, 11),
        (1000, 11, 990, 11),
        (1000, 6, 990, 11),
        (1000, 9, 990, 11),
        (1000, 3, 990, 11),
        (1010, 10, 990, 11),
        (1010, 8, 990, 11),
        (1010, 8, 995, 2),
        (1010, 8, 990, 11),
    ]
    return messages, rows


@pytest.mark.pypy
def test_synthetic_flow_reproduces_on_reference_book():
    messages, rows = _synthetic_case()
    result = lobster.replay(lobster.FifoVenue(), messages, rows)
    assert result.row_mismatches == []
    assert result.fill_mismatches == []
    assert result.runs == 1 and result.replaces == 1
    assert result.levels_into_view >= 2          # 1010 before the sweep, 990 at the end


@pytest.mark.pypy
def test_fill_mismatch_is_detected():
    """Swap the queue: the file says id 12 filled first; a FIFO book disagrees."""
    messages, rows = _synthetic_case()
    M = lobster.Message
    messages[6] = M("1.5", 4, 12, 3, 1000, -1)
    messages[7] = M("1.5", 4, 3, 3, 1000, -1)
    result = lobster.replay(lobster.FifoVenue(), messages, rows)
    assert len(result.fill_mismatches) == 1


@needs_data
@pytest.mark.pypy
def test_reference_book_reproduces_lobster(data):
    messages, rows = data
    result = lobster.replay(lobster.FifoVenue(), messages, rows)
    assert result.row_mismatches == [], result.row_mismatches[:5]
    assert result.fill_match_fraction >= 0.999, result.fill_mismatches[:5]


# --- the matcher --------------------------------------------------------------
@needs_data
@needs_matcher
@pytest.mark.pypy
@pytest.mark.timeout(120)
def test_matcher_reproduces_lobster(data):
    messages, rows = data
    venue = lobster.MatcherVenue()
    result = lobster.replay(venue, messages, rows)
    venue.matcher._check()
    assert result.messages == len(messages) - 1
    assert result.row_mismatches == [], result.row_mismatches[:5]
    assert result.runs_compared > 6000
    assert result.fill_match_fraction >= 0.999, result.fill_mismatches[:5]


@needs_matcher
@pytest.mark.pypy
def test_matcher_synthetic_flow():
    messages, rows = _synthetic_case()
    venue = lobster.MatcherVenue()
    result = lobster.replay(venue, messages, rows)
    assert result.row_mismatches == []
    assert result.fill_mismatches == []
    venue.matcher._check()


# --- the benchmark workload format (perf/workload.py) --------------------------
@pytest.mark.pypy
def test_workload_generator_mix_and_csv_round_trip(tmp_path):
    from perf import workload
    rows = workload.generate(20000, seed=3)
    assert rows == workload.generate(20000, seed=3)          # seeded
    shares = dict((t, sum(1 for r in rows if r[1] == t) / 20000.0) for t in "LCIFM")
    for type_, share in workload.TYPE_SHARES:
        assert abs(shares[type_] - share) < 0.02, (type_, shares)
    ids = dict((r[4], r) for r in rows)
    for side, type_, price, qty, order_id, target in rows:
        if type_ == "C":
            assert ids[target][1] == "L" and ids[target][0] == side and ids[target][2] == price
        elif type_ == "M":
            assert price == 0 and qty > 0
        else:
            assert price > 0 and qty > 0 and target == 0
    path = str(tmp_path / "w.csv")
    workload.write_csv(path, rows)
    with open(path) as f:
        assert f.readline().strip() == "side,type,price,qty,order_id,cancel_target_id"
    assert workload.read_csv(path) == rows


@pytest.mark.pypy
def test_workload_reader_rejects_bad_rows(tmp_path):
    from perf import workload
    path = tmp_path / "bad.csv"
    path.write_text("side,type,price,qty,order_id,cancel_target_id\nX,L,1,1,1,0\n")
    with pytest.raises(ValueError):
        workload.read_csv(str(path))
    path.write_text("a,b\n")
    with pytest.raises(ValueError):
        workload.read_csv(str(path))
