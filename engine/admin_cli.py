"""``ringmatch halt|resume --symbol BTC-USD``: stop or restart trading of one symbol.

The command is a HALT/RESUME record in the running shard's input ring, written
by the CLI's privileged producer (``ringbuf.records.CLI_PRODUCER_ID``, the same
path the supervisor uses for its SNAPSHOT and CLOCK records), so it is
journaled, replicated and replayed like any other command (docs/engine.md M9).
While halted, the matcher rejects new orders and amends of the symbol
(``SYMBOL_HALTED``); cancels still work.  The command waits for the matcher's outcome event.

Exit codes: 0 done; 1 the matcher refused (already halted, not halted) or did
not answer within ``--timeout``; 2 a wrong command line, an unknown symbol, no
engine running on the data dir, or a standby (its input is the primary's).
"""
import os
import sys
import time

__all__ = ["add_arguments", "add_arguments_for", "run", "running_shards", "resolve_symbol"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class _Refusal(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def add_arguments_for(name, parser):
    parser.add_argument("--symbol", required=True, help="symbol name (BTC-USD) or id")
    parser.add_argument("--data-dir", help="data dir of the running engine (default: ./var)")
    parser.add_argument("--config", help="runtime configuration (JSON); default: embedded")
    parser.add_argument("--shard", help="shard (default: the one listing the symbol)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the matcher's outcome")
    parser.set_defaults(admin_action=name)


def add_arguments(parser):
    add_arguments_for("halt", parser)


def resolve_symbol(exchange, text):
    """SymbolSpec of a name (``BTC-USD``, any case) or id (``1``); ValueError naming the choices."""
    text = str(text).strip()
    if text.isdigit():
        try:
            return exchange.symbol_by_id(int(text))
        except KeyError:
            pass
    else:
        for spec in exchange.symbols.values():
            if spec.name.upper() == text.upper():
                return spec
    raise ValueError("unknown symbol %r (have %s)" % (
        text, ", ".join("%s=%d" % (s.name, s.symbol_id)
                        for s in sorted(exchange.symbols.values(), key=lambda s: s.symbol_id))))


def _runtime(args):
    from engine.config_schema import load
    from engine.runtime import ConfigError
    data_dir = getattr(args, "data_dir", None)
    try:
        runtime = load(args.config, {"data_dir": data_dir})
    except ConfigError as exc:
        raise _Refusal(EXIT_USAGE, "config error: %s" % exc)
    return runtime


def running_shards(data_dir):
    """{shard name: symbols} of the shards whose resolved ``run/<shard>.json`` is in ``data_dir``.

    That file is written by ``ringmatch run`` for each shard it starts (it stays
    after a stop; the ring attach tells whether the engine still runs).
    """
    import json
    out = {}
    run_dir = os.path.join(os.path.abspath(data_dir), "run")
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return out
    for fname in names:
        if not fname.endswith(".json") or fname.count(".") != 1:
            continue
        try:
            with open(os.path.join(run_dir, fname)) as f:
                raw = json.load(f)
            shards = raw.get("shards") if isinstance(raw, dict) else None
        except (OSError, ValueError):
            continue
        if isinstance(shards, list) and len(shards) == 1 and isinstance(shards[0], dict) \
                and shards[0].get("name") == fname[:-5]:
            out[fname[:-5]] = list(shards[0].get("symbols") or [])
    return out


def _shard_runtime(args, runtime):
    """(shard config, the shard's resolved runtime): ``run/<shard>.json`` when it exists."""
    from engine.runtime import ConfigError, RuntimeConfig
    wanted = str(args.symbol).upper()
    found = running_shards(runtime.data_dir)
    if args.shard:
        name = args.shard
    elif found:                        # the data dir's shards: the one listing the symbol
        name = next((n for n, symbols in sorted(found.items())
                     if wanted in (x.upper() for x in symbols)), sorted(found)[0])
    else:
        name = next((s.name for s in runtime.shards if wanted in (n.upper() for n in s.symbols)),
                    runtime.shards[0].name)
    if name not in found:
        try:
            runtime.shard(name)
        except ConfigError as exc:
            raise _Refusal(EXIT_USAGE, str(exc))
    path = os.path.join(runtime.data_dir, "run", "%s.json" % name)
    if not os.path.exists(path):
        raise _Refusal(EXIT_USAGE, "no engine runs shard %s on %s (no %s)"
                       % (name, runtime.data_dir, path))
    try:
        resolved = RuntimeConfig.load(path)
        return resolved.shard(name), resolved
    except ConfigError as exc:
        raise _Refusal(EXIT_USAGE, str(exc))


def _is_standby(data_dir, shard):
    from replicator.epoch import EpochStore
    try:
        store = EpochStore(data_dir, shard)
        return store.exists() and store.load().role == "standby"
    except (OSError, ValueError, KeyError):
        return False


def _wait_outcome(ring_out, start, seq, timeout):
    """The ACCEPTED/REJECTED event of input ``seq`` in the output ring (read from ``start``)."""
    from engine.events import Event
    from ringbuf.records import EventKind
    deadline = time.monotonic() + timeout
    next_seq = start
    while time.monotonic() < deadline:
        cursor = ring_out.cursor
        if cursor - next_seq >= ring_out.capacity:          # fell a lap behind: catch up
            next_seq = cursor - ring_out.capacity + 1
        while next_seq <= cursor:
            event = Event.unpack(ring_out.read(next_seq))
            next_seq += 1
            if event.seq == seq and event.kind in (EventKind.ACCEPTED, EventKind.REJECTED):
                return event
        time.sleep(0.005)
    return None


def run(args):
    from ringbuf.records import CLI_PRODUCER_ID, CommandKind, Reason
    action = getattr(args, "admin_action", None) or getattr(args, "command", "halt")
    prog = "ringmatch %s" % action
    try:
        runtime = _runtime(args)
        shard, resolved = _shard_runtime(args, runtime)
        try:
            spec = resolve_symbol(resolved.exchange(), args.symbol)
        except ValueError as exc:
            raise _Refusal(EXIT_USAGE, "%s on shard %s" % (exc, shard.name))
        if _is_standby(resolved.data_dir, shard.name):
            raise _Refusal(EXIT_USAGE, "%s is a standby (its input is the primary's): "
                                       "%s the symbol on the primary" % (resolved.data_dir, action))
        from engine.client import publish_admin
        from ringbuf import Ring
        from ringbuf.errors import RingError
        try:
            ring_in = Ring.attach(shard.input_ring, wait=0)
        except RingError as exc:
            raise _Refusal(EXIT_USAGE, "no engine runs shard %s on %s (%s)"
                           % (shard.name, resolved.data_dir, str(exc).splitlines()[0]))
        try:
            ring_out = Ring.attach(shard.output_ring, wait=0)
        except RingError as exc:
            ring_in.close()
            raise _Refusal(EXIT_USAGE, "no engine runs shard %s: %s"
                           % (shard.name, str(exc).splitlines()[0]))
        try:
            start = ring_out.cursor + 1
            kind = CommandKind.HALT if action == "halt" else CommandKind.RESUME
            seq = publish_admin(ring_in, kind, symbol_id=spec.symbol_id,
                                producer_id=CLI_PRODUCER_ID)
            outcome = _wait_outcome(ring_out, start, seq, args.timeout)
        finally:
            ring_in.close()
            ring_out.close()
        if outcome is None:
            raise _Refusal(EXIT_REFUSED, "no outcome for %s of %s (seq %d) within %.0f s: is the "
                                         "matcher running?" % (action, spec.name, seq, args.timeout))
        if outcome.reason:
            try:
                reason = Reason(outcome.reason).name
            except ValueError:
                reason = str(outcome.reason)
            raise _Refusal(EXIT_REFUSED, "%s of %s refused: %s (seq %d)"
                           % (action, spec.name, reason, seq))
        print("%s %s (symbol %d, shard %s, seq %d)" % (
            "halted" if action == "halt" else "resumed", spec.name, spec.symbol_id,
            shard.name, seq))
        return EXIT_OK
    except _Refusal as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return exc.code
