"""``ringmatch ring``: inspect shared-memory rings.

    ringmatch ring list                 # rm-* segments in /dev/shm
    ringmatch ring inspect NAME [--json]
    ringmatch ring recover NAME         # publish NOPs for dead producers' claims now
"""
import json
import os
import time

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    sub = parser.add_subparsers(dest="ring_command", metavar="ACTION")
    sub.add_parser("list", help="list rm-* shared-memory segments")
    p = sub.add_parser("inspect", help="header, cursor, every consumer's sequence and lag")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("recover", help="publish NOP records for claims of dead producers")
    p.add_argument("name")


def _list():
    from .ring import Ring
    # (rm-<shard>.owner files are the supervisor's host-wide owner locks, not rings)
    names = sorted(n for n in os.listdir("/dev/shm")
                   if n.startswith("rm-") and not n.endswith(".owner"))
    if not names:
        print("no rm-* segments")
        return 0
    print("%-40s %10s %8s %12s %s" % ("NAME", "CAPACITY", "RECORD", "CURSOR", "CONSUMERS"))
    for n in names:
        try:
            with Ring.attach(n, wait=0) as r:
                print("%-40s %10d %8d %12d %s" % (n, r.capacity, r.record_size, r.cursor,
                                                   ",".join(r.consumer_names)))
        except Exception as exc:
            print("%-40s (not a ring of this build: %s)" % (n, exc))
    return 0


def _inspect(name, as_json):
    from .ring import Ring
    with Ring.attach(name, wait=0) as r:
        info = r.info()
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    h = info["header"]
    print("ring %s" % name)
    for key in ("capacity", "record_size", "record_kind", "single_producer", "wait_strategy",
                "schema_hash", "layout_version", "header_version", "creator_pid",
                "claim_timeout_ns", "total_size"):
        value = h[key]
        if key == "schema_hash":
            value = "0x%016x" % value
        print("  %-18s %s" % (key, value))
    print("  %-18s %s" % ("created", time.strftime("%Y-%m-%d %H:%M:%S",
                                                  time.localtime(h["creation_time_ns"] / 1e9))))
    print("  %-18s %d" % ("cursor", info["cursor"]))
    print("  %-18s %d" % ("claimed", info["claimed"]))
    print("  %-18s %d" % ("recovered_slots", info["recovered_slots"]))
    print("consumers:")
    print("  %-20s %14s %10s  %s" % ("NAME", "SEQUENCE", "LAG", "DEPENDS ON"))
    for c in info["consumers"]:
        print("  %-20s %14d %10d  %s" % (c["name"], c["sequence"], c["lag"],
                                         ",".join(c["depends_on"]) or "-"))
    print("producers:")
    if not info["producers"]:
        print("  (none registered)")
    for p in info["producers"]:
        print("  pid %-8d id %-5d %-5s claim %s" % (p["pid"], p["producer_id"],
                                                   "alive" if p["alive"] else "DEAD", p["claim"]))
    return 0


def run(args):
    from .errors import RingError
    action = getattr(args, "ring_command", None)
    try:
        if action == "list":
            return _list()
        if action == "inspect":
            return _inspect(args.name, args.json)
        if action == "recover":
            from .ring import Ring
            with Ring.attach(args.name, wait=0) as r:
                print("recovered %d slot(s)" % r.recover_dead_producers())
            return 0
    except RingError as exc:
        print("ringmatch ring: %s" % exc)
        return 1
    print("usage: ringmatch ring {list,inspect NAME,recover NAME}")
    return 2
