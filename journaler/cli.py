"""``ringmatch journal inspect|verify|replay|export|truncate``: look at, check, replay, repair.

Exit codes: 0 ok; 1 verify found a problem (or replay stopped at one), or
truncate without ``--i-understand`` (it only printed its plan); 2 usage /
nothing to read / unknown symbol / bad configuration / truncate refused
(engine running, SEQ not in the intact journal); 3 schema mismatch.

Options may follow the action (``ringmatch journal verify --data-dir D``);
``--symbol`` takes a name (``BTC-USD``) or an id.  ``verify`` and ``replay``
draw a progress bar (tqdm) on stderr only when stderr is a terminal.
"""
import csv
import os
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    parser.add_argument("--data-dir", default=None,
                        help="data directory (default: from --config, else ./var)")
    parser.add_argument("--config", default=None, help="runtime configuration JSON")
    parser.add_argument("--shard", default="shard0")
    sub = parser.add_subparsers(dest="journal_command", metavar="ACTION")
    for name, help_text in (("inspect", "records as a table"),
                            ("export", "records as CSV")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--from", dest="from_seq", type=int, default=1, help="first seq")
        p.add_argument("--to", dest="to_seq", type=int, default=None, help="last seq")
        p.add_argument("--account", type=int, default=None)
        p.add_argument("--symbol", default=None, help="symbol name (BTC-USD) or id")
        p.add_argument("--kind", default=None, help="command kind name or code (NEW_ORDER, 2..)")
        if name == "inspect":
            p.add_argument("--limit", type=int, default=100, help="rows at most (0: all)")
        else:
            p.add_argument("--output", "-o", default="-", help="CSV file (default stdout)")
    p = sub.add_parser("verify", help="check CRCs, continuity and schema; exit 1 naming the block")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is one only when stderr is a terminal)")
    p = sub.add_parser("replay", help="rebuild the matcher state and print its state hash")
    p.add_argument("--from-snapshot", action="store_true",
                   help="start from the newest valid snapshot (default: from scratch)")
    p.add_argument("--to", dest="to_seq", type=int, default=None, help="stop after this seq")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is one only when stderr is a terminal)")
    p = sub.add_parser("truncate", help="keep records up to --at SEQ, quarantine the rest and "
                                        "later snapshots (dry run unless --i-understand)")
    p.add_argument("--at", dest="at_seq", type=int, required=True,
                   help="last sequence to keep")
    p.add_argument("--i-understand", dest="i_understand", action="store_true",
                   help="really discard what the dry run prints")


class _Refusal(Exception):
    """A one-line refusal with exit code 2 (usage, configuration, unknown symbol)."""


def _runtime(args, data_dir=None):
    """The runtime configuration: ``--config``, else the data dir's ``run/<shard>.json``
    (what the engine ran with), else the embedded default.  _Refusal when it is invalid."""
    from engine.runtime import ConfigError, RuntimeConfig
    config = getattr(args, "config", None)
    try:
        if config is None and data_dir is not None:
            resolved = os.path.join(os.path.abspath(data_dir), "run", "%s.json" % args.shard)
            if os.path.exists(resolved):
                return RuntimeConfig.load(resolved)
        try:
            from engine.config_schema import load
        except ImportError:             # no pydantic (PyPy): the unvalidated loader
            return RuntimeConfig.load(config)
        return load(config)
    except ConfigError as exc:
        raise _Refusal("config error: %s" % exc)


def _data_dir(args):
    if args.data_dir:
        return args.data_dir
    return _runtime(args).data_dir


def _symbol_id(args, data_dir):
    """``--symbol`` as an id: a name is looked up in the shard's exchange configuration."""
    text = getattr(args, "symbol", None)
    if text is None:
        return None
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    exchange = _runtime(args, data_dir).exchange()
    for spec in exchange.symbols.values():
        if spec.name.upper() == text.upper():
            return spec.symbol_id
    raise _Refusal("unknown symbol %r (have %s)" % (text, ", ".join(
        "%s=%d" % (s.name, s.symbol_id)
        for s in sorted(exchange.symbols.values(), key=lambda s: s.symbol_id))))


def _progress_wanted(args, stream=None):
    """A bar only on a terminal (never in a pipe, a log file or CI), and not with --no-progress."""
    stream = sys.stderr if stream is None else stream
    if getattr(args, "no_progress", False):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _bar(args, total, unit, desc):
    """A tqdm bar on stderr when wanted (and tqdm installed), else None."""
    if not _progress_wanted(args):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    # a terminal that does not tell its size (0 x 0, e.g. a bare pty): 80 x 24, else tqdm
    # draws a bar 0 columns wide, or hides it below the last of 0 rows
    known = size.columns > 0 and size.lines > 0
    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, file=sys.stderr,
                dynamic_ncols=known, ncols=None if known else 80, nrows=None if known else 24,
                leave=False)


def _kind_code(text):
    from ringbuf.records import CommandKind
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    return int(CommandKind[text.upper()])


def _select(args, data_dir):
    """(seqs, records) numpy arrays after the filters."""
    from journaler.reader import JournalReader
    reader = JournalReader(data_dir, args.shard)
    seqs, arr = reader.array(after=max(0, args.from_seq - 1), last=args.to_seq)
    mask = None

    def both(m, cond):
        return cond if m is None else m & cond
    if args.account is not None:
        mask = both(mask, arr["account_id"] == args.account)
    symbol_id = _symbol_id(args, data_dir)
    if symbol_id is not None:
        mask = both(mask, arr["symbol_id"] == symbol_id)
    kind = _kind_code(args.kind)
    if kind is not None:
        mask = both(mask, arr["kind"] == kind)
    if mask is not None:
        seqs, arr = seqs[mask], arr[mask]
    return seqs, arr, reader


_COLUMNS = ("kind", "side", "order_type", "tif", "stp", "flags", "symbol_id", "account_id",
            "producer_id", "price", "qty", "order_id", "stop_price", "timestamp_ns",
            "client_order_id")


def _enum_name(enum, value):
    try:
        return enum(int(value)).name
    except ValueError:
        return str(int(value))


def _row(seq, rec):
    from ringbuf.records import CommandKind, OrderType, Side, TimeInForce
    out = [str(int(seq))]
    for col in _COLUMNS:
        v = rec[col]
        if col == "kind":
            out.append(_enum_name(CommandKind, v))
        elif col == "side":
            out.append(_enum_name(Side, v) if v else "-")
        elif col == "order_type":
            out.append(_enum_name(OrderType, v) if v else "-")
        elif col == "tif":
            out.append(_enum_name(TimeInForce, v) if v else "-")
        else:
            out.append(str(int(v)))
    return out


def _inspect(args, data_dir):
    seqs, arr, reader = _select(args, data_dir)
    header = ["seq"] + list(_COLUMNS)
    limit = args.limit if args.limit > 0 else len(seqs)
    rows = [_row(seqs[i], arr[i]) for i in range(min(limit, len(seqs)))]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print("(%d record(s) matched%s)" % (len(seqs), ", %d shown" % len(rows)
                                         if len(rows) < len(seqs) else ""), file=sys.stderr)
    if reader.problem is not None:
        print("stopped at an invalid block: %s" % reader.problem, file=sys.stderr)
        return 1
    return 0


def _export(args, data_dir):
    seqs, arr, reader = _select(args, data_dir)
    out = sys.stdout if args.output == "-" else open(args.output, "w", newline="")
    try:
        writer = csv.writer(out)
        writer.writerow(["seq"] + list(_COLUMNS))
        for i in range(len(seqs)):
            writer.writerow(_row(seqs[i], arr[i]))
    finally:
        if out is not sys.stdout:
            out.close()
    print("exported %d record(s)" % len(seqs), file=sys.stderr)
    return 1 if reader.problem is not None else 0


def _verify(args, data_dir):
    from journaler.reader import verify_journal
    from journaler.segment import list_segments
    from ringbuf import records
    segments = list_segments(data_dir, args.shard)
    sizes = {}
    for _, path in segments:
        try:
            sizes[path] = os.path.getsize(path)
        except OSError:
            sizes[path] = 0
    bar = _bar(args, sum(sizes.values()), "B", "verify")
    try:
        report = verify_journal(data_dir, args.shard, records.COMMAND_SIZE, records.SCHEMA_HASH,
                                on_segment=(lambda path: bar.update(sizes.get(path, 0)))
                                if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if report.error:
        print("FAIL: %s" % report.error)
        return 3
    print("segments=%d blocks=%d records=%d first_seq=%s last_valid_seq=%d" % (
        len(report.scans), report.blocks, report.records, report.first_seq, report.last_seq))
    for p in report.problems:
        print("BAD: %s" % p)
    assessment = report.assessment
    if report.startup == "cut_torn_tail":
        print("start-up: cuts the torn tail of the last segment at %s" % assessment.problem)
    elif report.startup == "stop":
        print("start-up: STOPS (journal_corrupt): %s" % assessment.error)
    print("OK" if report.ok else "FAIL: %d problem(s)" % len(report.problems))
    return 0 if report.ok else 1


def _truncate(args, data_dir):
    from journaler import repair
    try:
        lock = repair.shard_lock(data_dir, args.shard)
    except repair.EngineRunningError as exc:
        print("REFUSED: %s" % exc, file=sys.stderr)
        return 2
    try:
        try:
            plan = repair.plan_truncate(data_dir, args.shard, args.at_seq)
        except repair.TruncateError as exc:
            print("REFUSED: %s" % exc, file=sys.stderr)
            return 2
        for line in plan.describe():
            print(line)
        if plan.empty:
            return 0
        if not args.i_understand:
            print("DRY RUN: nothing was changed; run again with --i-understand to discard "
                  "the above (moved to the quarantine, never deleted)")
            return 1
        for path in repair.apply_truncate(plan):
            print("quarantined: %s" % path)
        print("DONE: the journal now ends at seq %d" % plan.seq)
        return 0
    finally:
        os.close(lock)


def _replay(args, data_dir):
    from journaler import recovery
    from journaler.reader import JournalReader
    import time
    runtime = _runtime(args)
    exchange = runtime.exchange()
    started = time.monotonic()
    if args.from_snapshot:
        matcher, snap_seq = recovery.restore_latest(exchange, data_dir, args.shard,
                                                    max_seq=args.to_seq)
    else:
        from engine.matcher import Matcher
        matcher, snap_seq = Matcher(exchange, recovery.NullSink()), 0
    bar = None
    if _progress_wanted(args):
        end = recovery.durable_sequence(data_dir, args.shard) if args.to_seq is None \
            else args.to_seq
        bar = _bar(args, max(0, end - snap_seq), "cmd", "replay")
    if bar is None:
        last, count = recovery.replay(matcher, data_dir, args.shard, after=snap_seq,
                                      last=args.to_seq)
    else:
        last, count = _replay_with_bar(matcher, data_dir, args.shard, snap_seq, args.to_seq, bar)
    elapsed = time.monotonic() - started
    print("snapshot_seq=%d replayed=%d last_seq=%d state_hash=%016x seconds=%.3f" % (
        snap_seq, count, last, matcher.state_hash() & 0xFFFFFFFFFFFFFFFF, elapsed))
    reader = JournalReader(data_dir, args.shard, check_crc=False)
    for _ in reader.blocks(after=last):
        pass
    return 0


def _replay_with_bar(matcher, data_dir, shard, after, last, bar, step=0x4000):
    """recovery.replay's loop, advancing ``bar`` every ``step`` records.  Returns (seq, count)."""
    from journaler.recovery import journal_records
    process = matcher.process
    seq, count = after, 0
    try:
        for seq, record in journal_records(data_dir, shard, after=after, last=last):
            process(seq, record)
            count += 1
            if not count % step:
                bar.update(step)
        bar.update(count % step)
    finally:
        bar.close()
    return seq, count


def run(args):
    action = getattr(args, "journal_command", None)
    if action is None:
        print("usage: ringmatch journal {inspect,verify,replay,export,truncate} ...",
              file=sys.stderr)
        return 2
    from journaler.errors import JournalCorruptError, JournalSchemaError
    try:
        data_dir = _data_dir(args)
        if not os.path.isdir(os.path.join(data_dir, "journal")):
            print("ringmatch journal %s: no journal in %s" % (action, data_dir), file=sys.stderr)
            return 2
        return {"inspect": _inspect, "export": _export, "verify": _verify,
                "replay": _replay, "truncate": _truncate}[action](args, data_dir)
    except _Refusal as exc:
        print("ringmatch journal %s: %s" % (action, exc), file=sys.stderr)
        return 2
    except JournalSchemaError as exc:
        print("FAIL: %s" % exc, file=sys.stderr)
        return 3
    except JournalCorruptError as exc:
        print("FAIL: %s" % exc, file=sys.stderr)
        return 1
