"""Hypothesis: random claim/publish/poll/commit interleavings against a simple model."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(120)]

OPS = st.lists(st.tuples(st.sampled_from(["claim", "publish", "poll_a", "poll_b", "commit_a",
                                          "commit_b"]),
                         st.integers(0, 2), st.integers(1, 6)), max_size=60)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(single=st.booleans(), log_capacity=st.integers(1, 4), ops=OPS)
def test_random_interleavings_match_model(make_ring, single, log_capacity, ops):
    cap = 1 << log_capacity
    r = make_ring(capacity=cap, single_producer=single, consumers={"a": [], "b": ["a"]},
                  wait_strategy="busy-spin")
    producers = [r.producer(i) for i in range(1 if single else 3)]
    cons = {"a": r.consumer("a"), "b": r.consumer("b")}
    claimed = 0
    open_claims = []                 # [(producer index, lo, n)] unpublished, in claim order
    published = set()
    polled = {"a": 0, "b": 0}
    committed = {"a": 0, "b": 0}
    content = {}
    for op, who, n in ops:
        n = min(n, cap)
        if op == "claim":
            pi = who % len(producers)
            p = producers[pi]
            got = p.try_claim_n(n)
            if claimed + n - cap > committed["b"]:
                assert got is None
                continue
            assert got == claimed + 1
            for s in range(got, got + n):
                p.record(s).client_order_id = s * 7 + 1
                content[s] = s * 7 + 1
            claimed += n
            open_claims.append((pi, got, n))
        elif op == "publish" and open_claims:
            # single producer publishes in order; multi: any open claim
            k = 0 if single else who % len(open_claims)
            pi, lo, cnt = open_claims.pop(k)
            producers[pi].publish_batch(lo, cnt)
            published.update(range(lo, lo + cnt))
        elif op.startswith("poll"):
            name = op[-1]
            if single:
                visible = max(published, default=0)   # the cursor is the highest publish
            else:
                visible = polled[name]
                while visible + 1 in published:
                    visible += 1
            if name == "b":
                visible = min(visible, committed["a"])
            b = cons[name].poll(max_batch=n, timeout=0)
            if visible <= polled[name]:
                assert b is None
                continue
            expect_last = min(visible, polled[name] + n)
            assert (b.first_seq, b.last_seq) == (polled[name] + 1, expect_last)
            data = b.array()
            assert list(data["client_order_id"]) == [content[s] for s in
                                                     range(b.first_seq, b.last_seq + 1)]
            assert sum(len(v) for _, v in b.chunks) == b.count * 64
            polled[name] = expect_last
        elif op.startswith("commit"):
            name = op[-1]
            if polled[name] > committed[name]:
                cons[name].commit(polled[name])
                committed[name] = polled[name]
        # single producer: the shared cursor is what is published; multi: what is claimed
        assert r.claimed == (max(published, default=0) if single else claimed)
        r._check()
    r.unlink()
    r.close()
