"""Runtime configuration of a running engine: shards, rings, data dir, ports.

The exchange's reference data (assets, symbols, fees) is ``engine.config``;
this module says how the processes are laid out.  ``ringmatch run`` without
``--config`` uses ``DEFAULT_RUNTIME``; a file given with ``--config`` is JSON
and overrides the defaults key by key (nested dicts are merged).

Names (docs/interfaces.md): shard ``S`` has input ring ``rm-S-in`` and output
ring ``rm-S-out``.
"""
import copy
import json
import os

__all__ = ["DEFAULT_RUNTIME", "RuntimeConfig", "ShardConfig", "ConfigError", "process_args"]


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


DEFAULT_RUNTIME = {
    "data_dir": "./var",
    "shards": [
        {"name": "shard0", "symbols": ["BTC-USD", "ETH-USD", "ETH-BTC"],
         "input_capacity": 1 << 16, "output_capacity": 1 << 18},
    ],
    "publisher": {"host": "127.0.0.1", "port": 8080},
    "journal": {"fsync": "batch", "fsync_interval_ms": 5, "segment_bytes": 64 << 20},
    "snapshot": {"every_commands": 1000000, "every_seconds": 0, "keep": 3},
    "matcher": {"interpreter": "auto"},     # auto: PyPy when available, else CPython
    "standby": None,                       # {"host": ..., "port": ...} of a standby
    "replication": {"mode": "sync", "on_unreachable": "stall", "degrade_after_s": 5.0},
    "exchange": None,                      # None: engine.config.DEFAULT_CONFIG
    # engine/supervisor.py rules 9, 10: a ready child whose ring position does not move for
    # stall_after_s while work is pending is stalled; not ready after ready_timeout_s: a warning
    "supervisor": {"stall_after_s": 3.0, "ready_timeout_s": 60.0},
}


def _merge(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ShardConfig(object):
    """One shard: a name, its symbols and its two rings."""

    def __init__(self, name, symbols, input_capacity, output_capacity, output_consumers=None):
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ConfigError("shards[].name %r: use letters, digits, '-' and '_'" % (name,))
        for key, cap in (("input_capacity", input_capacity), ("output_capacity", output_capacity)):
            if not isinstance(cap, int) or cap < 2 or cap & (cap - 1):
                raise ConfigError("shards[%s].%s=%r is not a power of two" % (name, key, cap))
        self.name = name
        self.symbols = list(symbols)
        self.input_capacity = input_capacity
        self.output_capacity = output_capacity
        #: gated consumers of the output ring besides the publisher (audit, risk, benchmarks)
        self.output_consumers = list(output_consumers or [])
        if "publisher" in self.output_consumers:
            raise ConfigError("shards[%s].output_consumers: 'publisher' is always there" % name)

    @property
    def input_ring(self):
        return "rm-%s-in" % self.name

    @property
    def output_ring(self):
        return "rm-%s-out" % self.name


class RuntimeConfig(object):
    """The resolved runtime configuration (defaults merged with a file).

    >>> cfg = RuntimeConfig.from_dict({"data_dir": "/tmp/x"})
    >>> cfg.shard("shard0").input_ring
    'rm-shard0-in'
    """

    def __init__(self, raw):
        self.raw = raw
        self.data_dir = os.path.abspath(raw["data_dir"])
        self.shards = [ShardConfig(s["name"], s.get("symbols", []),
                                   s.get("input_capacity", 1 << 16),
                                   s.get("output_capacity", 1 << 18),
                                   s.get("output_consumers"))
                       for s in raw["shards"]]
        if not self.shards:
            raise ConfigError("shards: at least one shard is needed")
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise ConfigError("shards: duplicate shard names %r" % names)
        self.publisher = raw["publisher"]
        self.journal = raw["journal"]
        if self.journal.get("fsync") not in ("batch", "interval", "off"):
            raise ConfigError("journal.fsync must be batch, interval or off, not %r"
                              % (self.journal.get("fsync"),))
        self.snapshot = raw["snapshot"]
        self.matcher = raw["matcher"]
        self.standby = raw.get("standby")
        self.replication = raw.get("replication") or {}
        self.supervisor = raw.get("supervisor") or {}
        for key in ("stall_after_s", "ready_timeout_s"):
            value = self.supervisor.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError("supervisor.%s must be a number > 0, not %r" % (key, value))

    @classmethod
    def from_dict(cls, override=None):
        return cls(_merge(DEFAULT_RUNTIME, override or {}))

    @classmethod
    def load(cls, path=None):
        """Load a JSON file (None: the embedded defaults).  Raises ConfigError."""
        if path is None:
            return cls.from_dict({})
        try:
            with open(path) as f:
                override = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError("cannot read config %s: %s" % (path, exc))
        if not isinstance(override, dict):
            raise ConfigError("config %s: top level must be an object" % path)
        return cls.from_dict(override)

    def dump(self, path):
        """Write the resolved configuration (what children are started with), mode 0600.

        It holds the API secrets: created 0600 (a temporary file renamed over
        ``path``), never readable by others, even for a moment.
        """
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)                # an older temporary file keeps its mode otherwise
        with os.fdopen(fd, "w") as f:
            json.dump(self.raw, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def shard(self, name):
        for s in self.shards:
            if s.name == name:
                return s
        raise ConfigError("no shard named %r (have %s)" % (name, ", ".join(s.name for s in self.shards)))

    def exchange(self):
        """The ExchangeConfig (engine.config) for this runtime."""
        from engine import config as exchange_config
        if self.raw.get("exchange") is None:
            return exchange_config.DEFAULT_CONFIG
        return exchange_config.ExchangeConfig.from_dict(self.raw["exchange"])

    def shard_view(self, name):
        """The configuration one shard's processes run with (rule: one file per shard).

        ``shards`` holds just this shard; ``exchange`` holds just its symbols (so
        its matcher rejects the others' symbols as unknown and every process that
        rebuilds its state uses the same reference data); ``publisher.port`` is
        the shard's ``publisher_port`` or the base port plus the shard's index.
        Raises ConfigError for a symbol the exchange does not list or a symbol
        claimed by two shards.
        """
        index = [s.name for s in self.shards].index(self.shard(name).name)
        shard_raw = dict(self.raw["shards"][index])
        full = self.exchange()
        owner = {}
        for s in self.shards:
            for symbol in s.symbols:
                if symbol in owner:
                    raise ConfigError("symbol %s is in shards %s and %s" % (symbol, owner[symbol], s.name))
                owner[symbol] = s.name
                try:
                    full.symbol(symbol)
                except (KeyError, ValueError):
                    raise ConfigError("shards[%s].symbols: unknown symbol %r" % (s.name, symbol))
        raw = copy.deepcopy(self.raw)
        raw["shards"] = [shard_raw]
        wanted = set(shard_raw.get("symbols") or [])
        if wanted:
            exchange = full.to_dict()
            exchange["symbols"] = [s for s in exchange["symbols"] if s["name"] in wanted]
            raw["exchange"] = exchange
        port = shard_raw.get("publisher_port")
        raw["publisher"] = dict(raw["publisher"],
                                port=port if port is not None else raw["publisher"]["port"] + index)
        return RuntimeConfig(raw)

    def run_dir(self):
        """``<data>/run`` (configs with secrets, locks, health): created 0700, data dir too if new."""
        path = os.path.join(self.data_dir, "run")
        if not os.path.isdir(path):
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            os.makedirs(path, mode=0o700, exist_ok=True)
        return path


def process_args(proc, module, argv=None, max_batch=None):
    """The command line every shard process takes (docs/interfaces.md), parsed and loaded.

    ``python -m <module> --config FILE --shard S [--max-batch N]``.  Returns
    ``(args, runtime, shard, log)`` with ``log`` an ``engine.log.Logger`` for
    ``proc``.  Raises ConfigError when the file or the shard is wrong.
    """
    import argparse
    from engine.log import Logger
    parser = argparse.ArgumentParser(prog="python -m %s" % module)
    parser.add_argument("--config", required=True)
    parser.add_argument("--shard", required=True)
    if max_batch is not None:
        parser.add_argument("--max-batch", type=int, default=max_batch)
    args = parser.parse_args(argv)
    runtime = RuntimeConfig.load(args.config)
    shard = runtime.shard(args.shard)
    return args, runtime, shard, Logger(proc, shard.name)
