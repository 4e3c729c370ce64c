"""``ringmatch status``: a live view (like top) of a running shard, or one JSON shot.

Sources, all read-only: the supervisor's health file
``<data>/run/<shard>.health.json`` (engine state, each child's state, pid and
restarts; engine/supervisor.py rule 11), the two rings' headers (cursor, every
consumer's gating sequence; the journaler's gating sequence *is* its durable
sequence), the status files processes drop in ``<data>/run/<shard>.<proc>.json``
(fsync latency, replica ack), and the publisher's REST ticker for best bid/ask
and last price.

``state`` (and the exit code of ``--json``): ``ready`` 0, ``starting`` 3,
``degraded`` 4 (a child stalled, restarting or dead), ``stopping`` 5,
``not_running`` 6 (no health file, or its supervisor is gone), ``stale`` 7
(the supervisor is alive but has not updated the file for 5 s).  A data dir
that has no engine at all (it does not exist, or holds neither ``run/`` nor
``journal/``), or a configuration that is not valid, is one line on stderr and
exit 2, in both modes.

The journal section (from the files, read only, and the rings): the durable
sequence (the journaler's gating sequence, else the health file's), the lag
of the input cursor behind it, the segments (count, bytes, first sequence of
the newest), the fsync policy, the newest snapshot (sequence and age) and the
files in the quarantine.
"""
import json
import os
import sys
import time
import urllib.request

#: ``state`` -> exit code of ``ringmatch status --json`` (0 only when ready)
EXIT_CODES = {"ready": 0, "starting": 3, "degraded": 4, "stopping": 5, "not_running": 6,
              "stale": 7}
#: no engine in the data dir, or a configuration that is not valid (one line on stderr)
EXIT_NO_ENGINE = 2
HEALTH_FRESH_S = 5.0


def add_arguments(parser):
    parser.add_argument("--config", help="runtime configuration (JSON); default: embedded")
    parser.add_argument("--data-dir", help="data dir of the running engine (reads run/<shard>.json)")
    parser.add_argument("--shard", default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON snapshot and exit")
    parser.add_argument("--interval", type=float, default=1.0, help="refresh period (s)")
    parser.add_argument("--count", type=int, default=0, help="refreshes before exiting (0: forever)")


class NoEngine(Exception):
    """The data dir has no engine, or the configuration is not valid (exit 2, one line)."""


def _load_runtime(args):
    from engine.config_schema import load
    from engine.runtime import ConfigError, RuntimeConfig
    config = args.config
    resolved = None
    if config is None and args.data_dir:
        from engine.admin_cli import running_shards
        found = running_shards(args.data_dir)
        shard = args.shard or ("shard0" if "shard0" in found or not found else sorted(found)[0])
        candidate = os.path.join(os.path.abspath(args.data_dir), "run", "%s.json" % shard)
        if os.path.exists(candidate):
            resolved = candidate
    try:
        if resolved is not None:
            runtime = RuntimeConfig.load(resolved)     # what the engine runs with
        else:
            runtime = load(config, {"data_dir": args.data_dir})
        shard = runtime.shard(args.shard) if args.shard else runtime.shards[0]
    except ConfigError as exc:
        raise NoEngine("config error: %s" % exc)
    data_dir = runtime.data_dir
    if not os.path.isdir(data_dir):
        raise NoEngine("no engine in %s: the directory does not exist" % data_dir)
    if not any(os.path.isdir(os.path.join(data_dir, d)) for d in ("run", "journal")):
        raise NoEngine("no engine in %s: it holds neither run/ nor journal/ (is it the "
                       "engine's data_dir?)" % data_dir)
    return runtime, shard


def journal_view(runtime, shard, health_report=None, ring_in=None):
    """The journal section: durable seq, lag, segments, fsync, newest snapshot, quarantine."""
    from journaler.segment import list_segments
    from journaler.snapshot import list_snapshots
    data_dir = runtime.data_dir
    segments = list_segments(data_dir, shard.name)
    total = 0
    for _, path in segments:
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    durable = None
    if ring_in and "consumers" in ring_in and "journaler" in ring_in["consumers"]:
        durable = ring_in["consumers"]["journaler"]["sequence"]
    elif isinstance(health_report, dict):
        durable = (health_report.get("journal") or {}).get("durable_seq")
    out = {"dir": os.path.join(data_dir, "journal"), "durable_seq": durable,
           "lag": (ring_in["cursor"] - durable) if durable is not None and ring_in
           and "cursor" in ring_in else None,
           "segments": len(segments), "bytes": total,
           "newest_segment_first_seq": segments[-1][0] if segments else None,
           "fsync": (runtime.journal or {}).get("fsync"), "snapshot": None, "quarantined": 0}
    snaps = list_snapshots(data_dir, shard.name)
    if snaps:
        seq, path = snaps[-1]
        try:
            age = max(0.0, time.time() - os.path.getmtime(path))
        except OSError:
            age = None
        out["snapshot"] = {"seq": seq, "age_s": round(age, 1) if age is not None else None,
                           "count": len(snaps)}
    try:
        out["quarantined"] = len(os.listdir(os.path.join(data_dir, "journal", "quarantine")))
    except OSError:
        pass
    return out


def _ring_view(name):
    from ringbuf import Ring
    from ringbuf.errors import RingError
    try:
        ring = Ring.attach(name)
    except RingError as exc:
        return {"name": name, "error": str(exc)}
    try:
        cursor = ring.cursor
        consumers = {c["name"]: {"sequence": c["sequence"], "lag": cursor - c["sequence"]}
                     for c in ring.consumers()}
        return {"name": name, "capacity": ring.capacity, "cursor": cursor, "consumers": consumers}
    finally:
        ring.close()


def _proc_status(runtime, shard):
    out = {}
    run_dir = os.path.join(runtime.data_dir, "run")
    prefix = shard.name + "."
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return out
    for fname in names:
        # not <shard>.json (the resolved config: it holds secrets) nor the health file
        if fname.startswith(prefix) and fname.endswith(".json") and \
                fname[len(prefix):-5] not in ("", "health"):
            try:
                with open(os.path.join(run_dir, fname)) as f:
                    out[fname[len(prefix):-5]] = json.load(f)
            except (OSError, ValueError):
                continue
    return out


def _tickers(runtime, shard):
    pub = runtime.publisher
    base = "http://%s:%s" % (pub["host"], pub["port"])
    out = {}
    for symbol in shard.symbols:
        try:
            with urllib.request.urlopen("%s/products/%s/ticker" % (base, symbol), timeout=0.5) as r:
                out[symbol] = json.loads(r.read().decode())
        except (OSError, ValueError) as exc:
            out[symbol] = {"error": str(getattr(exc, "reason", exc))}
    return out


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def health(runtime, shard, now_ns=None):
    """(state, health file content or None): the engine's state as ``ringmatch status`` reports it."""
    from engine.supervisor import health_path
    now_ns = time.time_ns() if now_ns is None else now_ns
    try:
        with open(health_path(runtime.data_dir, shard.name)) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        return "not_running", None
    pid = data.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not _pid_alive(pid):
        return "not_running", data
    updated = data.get("updated_ns")
    if not isinstance(updated, int) or now_ns - updated > HEALTH_FRESH_S * 1e9:
        return "stale", data
    state = data.get("state")
    return (state if state in EXIT_CODES else "not_running"), data


def snapshot(runtime, shard):
    """One status snapshot as a dict (what ``--json`` prints)."""
    state, report = health(runtime, shard)
    rings = {"input": _ring_view(shard.input_ring), "output": _ring_view(shard.output_ring)}
    return {
        "time": time.time(),
        "shard": shard.name,
        "data_dir": runtime.data_dir,
        "state": state,
        "health": report,
        "rings": rings,
        "journal": journal_view(runtime, shard, report, rings["input"]),
        "processes": _proc_status(runtime, shard),
        "symbols": _tickers(runtime, shard),
    }


def _rates(prev, cur, dt):
    rates = {}
    for key in ("input", "output"):
        a, b = prev["rings"][key], cur["rings"][key]
        if "cursor" in a and "cursor" in b and dt > 0:
            rates[key] = (b["cursor"] - a["cursor"]) / dt
            for cname, c in b.get("consumers", {}).items():
                old = a.get("consumers", {}).get(cname)
                if old:
                    rates["%s.%s" % (key, cname)] = (c["sequence"] - old["sequence"]) / dt
    return rates


def render(snap, rates):
    lines = ["ringmatch status  shard=%s  data=%s  %s  state=%s" % (
        snap["shard"], snap["data_dir"], time.strftime("%H:%M:%S", time.localtime(snap["time"])),
        snap["state"])]
    report = snap.get("health") or {}
    children = report.get("children") or {}
    if children:
        lines.append("  ".join("%s=%s(pid %s, restarts %s)" % (
            name, c.get("state"), c.get("pid"), c.get("restarts"))
            for name, c in sorted(children.items())))
    lines.append("")
    lines.append("%-10s %-22s %14s %10s %12s" % ("ring", "consumer", "sequence", "lag", "rate/s"))
    for key in ("input", "output"):
        ring = snap["rings"][key]
        if "error" in ring:
            lines.append("%-10s %s" % (key, ring["error"]))
            continue
        lines.append("%-10s %-22s %14d %10s %12.0f" % (
            key, "(cursor) " + ring["name"], ring["cursor"], "", rates.get(key, 0.0)))
        for cname, c in sorted(ring["consumers"].items()):
            lines.append("%-10s %-22s %14d %10d %12.0f" % (
                "", cname, c["sequence"], c["lag"], rates.get("%s.%s" % (key, cname), 0.0)))
    journal = snap.get("journal")
    if journal:
        lines.append("")
        durable = journal["durable_seq"]
        lag = journal["lag"]
        snap_info = journal["snapshot"]
        lines.append("journal    durable_seq=%s%s  segments=%d  bytes=%s  newest_segment_from=%s  "
                     "fsync=%s" % ("-" if durable is None else durable,
                                   "" if lag is None else " (lag %d)" % lag,
                                   journal["segments"], _size(journal["bytes"]),
                                   "-" if journal["newest_segment_first_seq"] is None
                                   else journal["newest_segment_first_seq"], journal["fsync"]))
        lines.append("           snapshot=%s  quarantined=%d" % (
            "-" if not snap_info else "seq %d (%s s ago, %d kept)" % (
                snap_info["seq"], snap_info["age_s"], snap_info["count"]),
            journal["quarantined"]))
    procs = snap["processes"]
    if procs:
        lines.append("")
        for name, st in sorted(procs.items()):
            lines.append("%-10s %s" % (name, "  ".join("%s=%s" % kv for kv in sorted(st.items()))))
    lines.append("")
    lines.append("%-10s %16s %16s %16s" % ("symbol", "best bid", "best ask", "last"))
    for symbol, t in snap["symbols"].items():
        if "error" in t:
            lines.append("%-10s %s" % (symbol, t["error"]))
        else:
            lines.append("%-10s %16s %16s %16s" % (symbol, t.get("best_bid") or "-", t.get("best_ask") or "-",
                                                   t.get("price") or "-"))
    return "\n".join(lines)


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def run(args):
    try:
        runtime, shard = _load_runtime(args)
    except NoEngine as exc:
        print("ringmatch status: %s" % exc, file=sys.stderr)
        return EXIT_NO_ENGINE
    if args.json:
        snap = snapshot(runtime, shard)
        print(json.dumps(snap, indent=2, sort_keys=True))
        return EXIT_CODES[snap["state"]]
    prev = snapshot(runtime, shard)
    prev_t = time.monotonic()
    shown = 0
    try:
        while True:
            time.sleep(args.interval)
            cur = snapshot(runtime, shard)
            now = time.monotonic()
            text = render(cur, _rates(prev, cur, now - prev_t))
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            prev, prev_t = cur, now
            shown += 1
            if args.count and shown >= args.count:
                return 0
    except KeyboardInterrupt:
        return 0
