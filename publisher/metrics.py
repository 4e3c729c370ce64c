"""``GET /metrics``: the shard's numbers in Prometheus text format (prometheus_client).

Theory of operation (numbered rules; the code refers to them):

1. Nothing is counted twice or kept in a second place: ring cursors and
   consumer sequences are read from the rings' headers at scrape time (the
   rings are attached read-only for the scrape and closed again), the engine
   state and journal durable sequence from the supervisor's health file, the
   read model and WebSocket numbers from the publisher's own objects.
2. What only the publisher sees is counted as it happens: HTTP requests by
   route template (never the raw path: bounded label values), method and
   status, with a latency histogram (``HttpMetrics``, fed by
   publisher/access_log.py); rejections by reason name from every event batch
   the read model applies (``RejectCounter``, the service's ``on_batch`` hook),
   whoever the producer was.  These counters start at 0 with the process.
3. ``ringmatch_matcher_commands_total`` is the matcher's consumer sequence on
   the input ring: every input record it has processed, the supervisor's
   CLOCK ticks included (one a second); it continues the journal's sequence
   across restarts, so it never goes down.  ``ringmatch_journal_durable_sequence``
   is the journaler's sequence on the input ring (its durable end,
   docs/operations.md), else the health file's ``journal.durable_seq``.
4. A scrape never fails because a part is missing: a ring that cannot be
   attached, an absent health file, just leave their families out.
5. WebSocket overflows (ws rule 4): the ``ringmatch_ws_resyncs`` and
   ``ringmatch_ws_dropped_messages`` gauges sum the connected clients' own counts (a
   client's ``dropped`` restarts at 0 with each resync; a disconnect takes its counts
   away); ``ringmatch_ws_messages_dropped_total``, ``ringmatch_ws_queue_overflows_total``
   and ``ringmatch_ws_slow_disconnects_total`` are the hub's counters, which only grow
   (from 0 with the process), so ``rate()`` and ``increase()`` work on them.
"""
import json
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, \
    generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ringbuf.records import EventKind

__all__ = ["HttpMetrics", "RejectCounter", "ShardCollector", "build_registry", "render",
           "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REJECTED = int(EventKind.REJECTED)
_ENGINE_STATES = ("starting", "ready", "degraded", "stopping", "unknown")
_CHILD_STATES = ("starting", "ready", "stalled", "restarting", "dead", "unknown")


class HttpMetrics(object):
    """Rule 2: requests and latency by route template, method and status."""

    def __init__(self, registry):
        self.requests = Counter("ringmatch_http_requests", "HTTP requests answered by the API",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("ringmatch_http_request_duration_seconds",
                                 "time from the request to the end of its answer",
                                 ["route"], registry=registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

    def observe(self, route, method, status, seconds):
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class RejectCounter(object):
    """Rule 2: REJECTED events by reason name, from every applied batch.  O(batch)."""

    def __init__(self, reason_name):
        self.reason_name = reason_name
        self.counts = {}

    def add(self, events):
        counts = self.counts
        kind = getattr(events, "dtype", None)
        if kind is not None and kind.names and "kind" in kind.names:    # a columnar batch
            mask = events["kind"] == _REJECTED
            if not mask.any():
                return
            for code in events["reason"][mask].tolist():
                counts[code] = counts.get(code, 0) + 1
            return
        for e in events:                                                # event tuples
            if e.kind == _REJECTED:
                counts[e.reason] = counts.get(e.reason, 0) + 1

    def by_name(self):
        out = {}
        for code, n in self.counts.items():
            name = self.reason_name(code)
            out[name] = out.get(name, 0) + n
        return out


def _read_json(path, limit=1 << 20):
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            return None
        data = json.loads(raw.decode("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def ring_view(name):
    """Rule 1: ``{"cursor", "capacity", "consumers": {name: sequence}}`` or None."""
    from ringbuf import Ring
    try:
        ring = Ring.attach(name, wait=0)
    except Exception:
        return None
    try:
        return {"cursor": ring.cursor, "capacity": ring.capacity,
                "consumers": {c["name"]: c["sequence"] for c in ring.consumers()}}
    except Exception:
        return None
    finally:
        ring.close()


class ShardCollector(object):
    """A prometheus_client collector of rule 1's numbers for one shard."""

    def __init__(self, service, shard=None, health_path=None, rejects=None,
                 replication_path=None):
        self.service = service
        self.shard = shard
        self.health_path = health_path
        self.replication_path = replication_path
        self.rejects = rejects

    def collect(self):
        service = self.service
        model = service.model
        yield GaugeMetricFamily("ringmatch_read_model_input_seq",
                                "input sequence the publisher's read model reflects",
                                value=model.applied_seq)
        yield CounterMetricFamily("ringmatch_publisher_events_applied",
                                  "output events applied to the read model",
                                  value=getattr(model, "events_applied", 0))
        hub = getattr(service, "hub", None)
        if hub is not None:
            clients = list(getattr(hub, "clients", ()))
            yield GaugeMetricFamily("ringmatch_ws_clients", "connected WebSocket clients",
                                    value=len(clients))
            yield GaugeMetricFamily("ringmatch_ws_resyncing_clients",
                                    "WebSocket clients whose queue overflowed and that wait "
                                    "for their resync", value=sum(1 for c in clients
                                                                  if getattr(c, "resyncing", False)))
            yield GaugeMetricFamily("ringmatch_ws_resyncs",
                                    "queue overflows (dropped queues) of the connected clients",
                                    value=sum(getattr(c, "resyncs", 0) for c in clients))
            yield GaugeMetricFamily("ringmatch_ws_dropped_messages",
                                    "messages dropped for connected clients since their last resync",
                                    value=sum(getattr(c, "dropped", 0) for c in clients))
            yield CounterMetricFamily("ringmatch_ws_messages_dropped",
                                      "WebSocket messages dropped by queue overflows, every "
                                      "client since the publisher started (rule 5)",
                                      value=getattr(hub, "dropped_total", 0))
            yield CounterMetricFamily("ringmatch_ws_queue_overflows",
                                      "WebSocket queue overflows (each starts a resync), every "
                                      "client since the publisher started (rule 5)",
                                      value=getattr(hub, "resyncs_total", 0))
            yield CounterMetricFamily("ringmatch_ws_slow_disconnects",
                                      "WebSocket clients disconnected as too slow",
                                      value=getattr(hub, "disconnects", 0))
            yield CounterMetricFamily("ringmatch_ws_messages", "WebSocket messages fanned out",
                                      value=getattr(hub, "messages", 0))
        if self.rejects is not None:
            fam = CounterMetricFamily("ringmatch_rejects", "rejected commands by reason "
                                      "(every producer; since the publisher started)",
                                      labels=["reason"])
            for name, n in sorted(self.rejects.by_name().items()):
                fam.add_metric([name], n)
            yield fam
        health = _read_json(self.health_path) if self.health_path else None
        durable = None
        if health is not None:
            state = health.get("state") if health.get("state") in _ENGINE_STATES else "unknown"
            fam = GaugeMetricFamily("ringmatch_engine_state", "1 for the engine's state "
                                    "(the supervisor's health file)", labels=["state"])
            for s in _ENGINE_STATES:
                fam.add_metric([s], 1 if s == state else 0)
            yield fam
            children = health.get("children") if isinstance(health.get("children"), dict) else {}
            up = GaugeMetricFamily("ringmatch_child_ready", "1 when the child process is ready",
                                   labels=["child"])
            restarts = CounterMetricFamily("ringmatch_child_restarts", "restarts of the child",
                                           labels=["child"])
            for name, child in sorted(children.items())[:32]:
                if not isinstance(child, dict):
                    continue
                up.add_metric([str(name)[:32]], 1 if child.get("state") == "ready" else 0)
                if isinstance(child.get("restarts"), int):
                    restarts.add_metric([str(name)[:32]], child["restarts"])
            yield up
            yield restarts
            updated = health.get("updated_ns")
            if isinstance(updated, int):
                yield GaugeMetricFamily("ringmatch_health_file_age_seconds",
                                        "age of the supervisor's health file",
                                        value=max(0.0, (time.time_ns() - updated) / 1e9))
            journal = health.get("journal")
            if isinstance(journal, dict) and isinstance(journal.get("durable_seq"), int):
                durable = journal["durable_seq"]
        if self.shard is not None:
            cursor = GaugeMetricFamily("ringmatch_ring_cursor", "last published sequence",
                                       labels=["ring"])
            capacity = GaugeMetricFamily("ringmatch_ring_capacity", "slots", labels=["ring"])
            seq = GaugeMetricFamily("ringmatch_ring_consumer_sequence",
                                    "last sequence the consumer committed",
                                    labels=["ring", "consumer"])
            lag = GaugeMetricFamily("ringmatch_ring_consumer_lag",
                                    "records published and not yet committed by the consumer",
                                    labels=["ring", "consumer"])
            matcher = None
            for ring, suffix in (("input", "in"), ("output", "out")):
                view = ring_view("rm-%s-%s" % (self.shard, suffix))
                if view is None:
                    continue
                cursor.add_metric([ring], view["cursor"])
                capacity.add_metric([ring], view["capacity"])
                for name, s in sorted(view["consumers"].items()):
                    seq.add_metric([ring, name], s)
                    lag.add_metric([ring, name], view["cursor"] - s)
                if ring == "input":
                    matcher = view["consumers"].get("matcher")
                    if "journaler" in view["consumers"]:
                        durable = view["consumers"]["journaler"]                # rule 3
            yield cursor
            yield capacity
            yield seq
            yield lag
            if matcher is not None:
                yield CounterMetricFamily("ringmatch_matcher_commands",
                                          "input records the matcher has processed (rule 3)",
                                          value=matcher)
        if durable is not None:
            yield GaugeMetricFamily("ringmatch_journal_durable_sequence",
                                    "last input sequence the journal holds durably",
                                    value=durable)
        repl = _read_json(self.replication_path) if self.replication_path else None
        if repl is not None and isinstance(repl.get("acked"), int):
            yield GaugeMetricFamily("ringmatch_standby_acked_sequence",
                                    "last input sequence the standby acknowledged",
                                    value=repl["acked"])


def build_registry(collector):
    """A registry of its own (two apps in one process never clash).  The ``*_created``
    series (one per counter child) are switched off: they double the output for nothing."""
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry):
    return generate_latest(registry)

