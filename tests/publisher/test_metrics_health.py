"""``GET /metrics`` scraped and parsed as Prometheus does, and ``/health`` as an operator's
probe sees it, against the real engine (pub_harness.Engine: ``ringmatch run``)."""
import json
import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.timeout(180)


def scrape(client):
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_healthy(anon, timeout=20.0):
    """Until GET /health is 200: the harness returns once every child logged its ready line,
    the supervisor's own state may still say starting for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        r = anon.get("/health")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_metrics_count_what_the_api_and_the_engine_did(engine, alice, anon):
    assert wait_healthy(anon).status_code == 200
    before = scrape(anon)
    with ws_connect(engine.ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2"]}))
        assert json.loads(ws.recv(timeout=10))["type"] in ("subscriptions", "snapshot")
        placed = alice.order("BTC-USD", "buy", "0.01", "100")
        assert placed.status_code == 200, placed.text
        rejected = alice.order("BTC-USD", "buy", "9000", "100000")      # far beyond the balance
        assert rejected.status_code == 400, rejected.text
        reason = rejected.json()["reason"]
        assert alice.get("/orders/%s" % placed.json()["id"]).status_code == 200
        during = scrape(anon)
    seq = rejected.json()["seq"]
    assert value(during, "ringmatch_ws_clients") == 1
    assert value(during, "ringmatch_rejects_total", reason=reason) == \
        value(before, "ringmatch_rejects_total", reason=reason) + 1
    for status, n in (("200", 1), ("400", 1)):
        assert value(during, "ringmatch_http_requests_total", route="/orders", method="POST",
                     status=status) == value(before, "ringmatch_http_requests_total",
                                             route="/orders", method="POST", status=status) + n
    assert value(during, "ringmatch_http_requests_total", route="/orders/{order_id}",
                 method="GET", status="200") >= 1
    assert value(during, "ringmatch_http_request_duration_seconds_count", route="/orders") >= 2
    # the engine's side: every consumer of both rings, the journal and the matcher
    assert value(during, "ringmatch_ring_cursor", ring="input") >= seq
    for ring, consumer in (("input", "journaler"), ("input", "matcher"), ("output", "publisher")):
        key = ("ringmatch_ring_consumer_lag", (("consumer", consumer), ("ring", ring)))
        assert key in during, sorted(during)[:20]
        assert during[key] >= 0
    assert value(during, "ringmatch_ring_consumer_sequence", ring="input",
                 consumer="matcher") >= seq
    assert value(during, "ringmatch_journal_durable_sequence") >= seq
    assert value(during, "ringmatch_matcher_commands_total") >= seq
    assert value(during, "ringmatch_engine_state", state="ready") == 1
    assert value(during, "ringmatch_child_ready", child="matcher") == 1
    assert value(during, "ringmatch_read_model_input_seq") >= seq
    deadline = time.monotonic() + 5
    while value(scrape(anon), "ringmatch_ws_clients") != 0:         # the socket closed
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_health_is_ready_with_its_checks_and_live(engine, anon):
    r = wait_healthy(anon)
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["matcher"]["ok"] and checks["matcher"]["state"] == "ready"
    assert checks["journal"]["ok"] and checks["journal"]["progress"] in ("idle", "advancing")
    assert checks["journal"]["durable_seq"] <= checks["journal"]["input_cursor"]
    assert checks["standby"] == {"configured": False, "ok": True}
    assert anon.get("/health/ready").status_code == 200
    live = anon.get("/health/live")
    assert live.status_code == 200 and live.json()["status"] == "alive"


def test_a_stopped_journaler_is_not_ready_and_shows_in_the_lag(engine, anon):
    """The supervisor's CLOCK tick (once a second) puts records in front of the stopped
    journaler: its lag grows, its durable sequence stands still, /health says so."""
    pid = engine.child_pids()["journaler"]
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while True:
            r = anon.get("/health")
            body = r.json()
            if r.status_code == 503 and body.get("checks", {}).get("journal", {}).get(
                    "progress") == "stuck":
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.25)
        assert body["checks"]["journal"]["ok"] is False and body["checks"]["journal"]["lag"] > 0
        assert body["reason"]                          # degraded, or the journal is stuck
        samples = scrape(anon)
        assert value(samples, "ringmatch_ring_consumer_lag", ring="input", consumer="journaler") > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while anon.get("/health").status_code != 200:
        assert time.monotonic() < deadline, anon.get("/health").text
        time.sleep(0.25)
    assert anon.get("/health").json()["checks"]["journal"]["progress"] in ("idle", "advancing")


def test_health_reports_a_configured_standby(tmp_path):
    """A shard with a standby has a ``replicator`` child: /health is ready only while it
    is, and shows the standby's acknowledged sequence (run/<shard>.replication.json)."""
    from types import SimpleNamespace
    from publisher.app import EngineProbe, health_report
    run = tmp_path / "run"
    run.mkdir()
    health = run / "sb0.health.json"
    (run / "sb0.replication.json").write_text(json.dumps({"acked": 40, "sent": 41}))
    service = SimpleNamespace(model=SimpleNamespace(applied_seq=41, events_applied=50),
                              last_seq=41)
    probe = EngineProbe("sb0-no-rings-%d" % os.getpid(), str(health), str(tmp_path))
    probe.replication_path = str(run / "sb0.replication.json")

    def report(replicator_state):
        children = {name: {"pid": 1, "state": "ready", "restarts": 0}
                    for name in ("journaler", "matcher", "publisher")}
        children["replicator"] = {"pid": 2, "state": replicator_state, "restarts": 1}
        health.write_text(json.dumps({"shard": "sb0", "state": "ready", "children": children,
                                      "updated_ns": time.time_ns(),
                                      "journal": {"durable_seq": 41}}))
        return health_report(str(health), service, time.time_ns(), probe=probe)
    status, body = report("ready")
    assert status == 200, body
    assert body["checks"]["standby"]["configured"] is True
    assert body["checks"]["standby"]["acked_seq"] == 40
    status, body = report("restarting")
    assert status == 503 and "standby" in body["reason"] and "restarting" in body["reason"]
    assert body["checks"]["standby"]["ok"] is False


def test_invented_methods_do_not_grow_the_metrics_labels():
    """A client may send any token as its HTTP method; /metrics must not keep a series per
    token (unbounded label values are a memory leak a scraper pays for too)."""
    import asyncio
    from prometheus_client import CollectorRegistry
    from publisher.access_log import AccessLog
    from publisher.metrics import HttpMetrics, render

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    registry = CollectorRegistry(auto_describe=False)
    middleware = AccessLog(app, metrics=HttpMetrics(registry))

    async def nothing(message):
        pass

    async def drive():
        for n in range(50):
            await middleware({"type": "http", "method": "X%d" % n, "path": "/orders"}, None,
                             nothing)
        await middleware({"type": "http", "method": "GET", "path": "/orders"}, None, nothing)
    asyncio.run(asyncio.wait_for(drive(), 30))
    samples = [s for family in text_string_to_metric_families(render(registry).decode())
               for s in family.samples if s.name == "ringmatch_http_requests_total"]
    assert {s.labels["method"]: s.value for s in samples} == {"OTHER": 50.0, "GET": 1.0}
