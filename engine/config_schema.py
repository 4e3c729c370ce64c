"""The runtime configuration's schema (pydantic): what ``ringmatch`` refuses, in one line.

Theory of operation:

1. The schema checks the *merged* configuration (``engine.runtime.DEFAULT_RUNTIME``
   overridden by the ``--config`` file and the command line), so a key is
   named by its path in the file: ``publisher.port``, ``shards[0].input_capacity``.
2. Every object refuses keys it does not know (a typo is an error, not a default
   silently kept); scalars are strict (``"8080"`` is not a port, ``true`` is not 1).
3. A refusal is :class:`engine.runtime.ConfigError` whose message is one line:
   ``publisher.port: must be 1..65535, got 70000`` (the first problem; ``(and N
   more)`` when there are others).  Never a traceback; a character that would
   break the line (a newline in a key or a name) is shown escaped.  The value
   of a key's ``secret``, ``passphrase`` or ``passphrase_hash``, or of a whole
   ``publisher.api_keys`` entry, is never shown.  Numbers are finite (no NaN or
   Infinity: an infinite ``auth_window_s`` would switch the timestamp window off).
4. After the schema, the semantic checks of ``RuntimeConfig`` and
   ``ExchangeConfig`` (power-of-two rings, tick x lot integrality, symbols of a
   shard listed by the exchange) run too, and refuse the same way.

Only the command-line tools (CPython) use this module; the shard processes,
the matcher on PyPy included, are started with a configuration it has passed.

>>> validate({"publisher": {"port": 70000}})          # doctest: +SKIP
ConfigError: publisher.port: must be 1..65535, got 70000
"""
import copy
import json
import math
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, List, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from engine.runtime import DEFAULT_RUNTIME, ConfigError, RuntimeConfig, _merge

__all__ = ["validate", "load", "set_path", "RuntimeSchema"]


def _show(value):
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(detail):
    raise PydanticCustomError("ringmatch", "{detail}", {"detail": detail})


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(lo=None, hi=None):
    def check(value):
        if not _is_int(value):
            _fail("must be an integer, got %s" % _show(value))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                _fail("must be >= %d, got %d" % (lo, value))
            _fail("must be %d..%d, got %d" % (lo, hi, value))
        return value
    return Annotated[Any, AfterValidator(check)]


def _number(minimum=None, above=None):
    def check(value):
        if not _is_number(value):
            _fail("must be a number, got %s" % _show(value))
        if not math.isfinite(value):
            _fail("must be a finite number, got %s" % _show(value))
        if above is not None and not value > above:
            _fail("must be > %s, got %s" % (above, _show(value)))
        if minimum is not None and value < minimum:
            _fail("must be >= %s, got %s" % (minimum, _show(value)))
        return value
    return Annotated[Any, AfterValidator(check)]


def _text(choices=None, nonempty=True, nullable=False, secret=False):
    def check(value):
        if value is None and nullable:          # explicit null: the code's default
            return value
        if not isinstance(value, str):
            _fail("must be a string" + ("" if secret else ", got %s" % _show(value)))
        if choices is not None and value not in choices:
            _fail("must be one of %s, got %s" % (", ".join(choices), _show(value)))
        if nonempty and not value:
            _fail("must not be empty")
        return value
    return Annotated[Any, AfterValidator(check)]


def _boolean():
    def check(value):
        if not isinstance(value, bool):
            _fail("must be true or false, got %s" % _show(value))
        return value
    return Annotated[Any, AfterValidator(check)]


def _power_of_two(value):
    if not _is_int(value):
        _fail("must be an integer, got %s" % _show(value))
    if value < 2 or value & (value - 1):
        _fail("must be a power of two >= 2, got %d" % value)
    return value


def _shard_name(value):
    if not isinstance(value, str) or not value or \
            not all(c.isalnum() or c in "-_" for c in value):
        _fail("must be letters, digits, '-' and '_', got %s" % _show(value))
    return value


def _decimal_text(value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        _fail("must be a decimal number (a string like \"0.01\"), got %s" % _show(value))
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        _fail("must be a decimal number, got %s" % _show(value))
    if not number.is_finite() or number <= 0:
        _fail("must be > 0, got %s" % _show(value))
    return value


def _asset_ref(value):
    if isinstance(value, str) and value:
        return value
    if _is_int(value) and 0 < value < 65536:
        return value
    _fail("must be an asset name or id (1..65535), got %s" % _show(value))


def _list_of_text_or_null(value):
    return None if value is None else _list_of_text(value)


def _port_or_null(value):
    if value is None:
        return value
    if not _is_int(value):
        _fail("must be an integer, got %s" % _show(value))
    if not 1 <= value <= 65535:
        _fail("must be 1..65535, got %d" % value)
    return value


def _list_of_text(value):
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _fail("must be a list of names, got %s" % _show(value))
    return value


Port = _integer(1, 65535)
Count = _integer(0)
Positive = _number(above=0)
NonNegative = _number(minimum=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Endpoint(_Strict):
    host: _text() = None
    port: Port = None


class Shard(_Strict):
    name: Annotated[Any, AfterValidator(_shard_name)]
    symbols: Annotated[Any, AfterValidator(_list_of_text)] = None
    input_capacity: Annotated[Any, AfterValidator(_power_of_two)] = None
    output_capacity: Annotated[Any, AfterValidator(_power_of_two)] = None
    output_consumers: Annotated[Any, AfterValidator(_list_of_text_or_null)] = None
    publisher_port: Annotated[Any, AfterValidator(_port_or_null)] = None   # null: base + index


class RateLimit(_Strict):
    per_second: Positive = None
    burst: Positive = None


class ApiKey(_Strict):
    key: _text()
    secret: _text(secret=True)
    account_id: _integer(1, (1 << 32) - 1)
    scope: _text(("view", "trade")) = None
    passphrase: _text(nonempty=False, secret=True) = None
    passphrase_hash: _text(secret=True) = None
    per_second: Positive = None
    burst: Positive = None
    label: _text(nonempty=False) = None


class Publisher(_Strict):
    host: _text() = None
    port: Port = None
    api_keys: Optional[List[ApiKey]] = None
    demo_accounts: Count = None
    rate_limit: Optional[RateLimit] = None
    auth_window_s: Positive = None
    allow_deposits: _boolean() = None
    max_body_bytes: _integer(1) = None
    client_oid_window_s: NonNegative = None
    ws_queue: _integer(1) = None
    ws_resync_timeout_s: Positive = None
    ws_conflate_ms: NonNegative = None
    ws_impl: _text() = None
    ws_max_size: _integer(1) = None
    socket_sndbuf: Count = None
    log_level: _text(("critical", "error", "warning", "info", "debug", "trace")) = None
    producer_id: _integer(0, 0x7EFF) = None
    read_model: _text(("columnar", "object")) = None
    trades_keep: Count = None
    feed_linger_ms: NonNegative = None
    rebuild_history_commands: Count = None
    access_log: _boolean() = None
    fills_per_account: _integer(1) = None
    ws_max_queue_bytes: _integer(1) = None
    ws_max_interval_s: NonNegative = None


class Journal(_Strict):
    fsync: _text(("batch", "interval", "off")) = None
    fsync_interval_ms: NonNegative = None
    segment_bytes: _integer(1) = None
    group_commit_us: NonNegative = None
    group_commit_records: Count = None


class Snapshot(_Strict):
    every_commands: Count = None
    every_seconds: NonNegative = None
    keep: _integer(1) = None


class Matcher(_Strict):
    interpreter: _text() = None


class Replication(_Strict):
    mode: _text(("sync", "async")) = None
    on_unreachable: _text(("stall", "degrade")) = None
    degrade_after_s: Positive = None
    state_hash_every_s: NonNegative = None
    wait_strategy: _text(("busy-spin", "yield", "blocking", "backoff"), nullable=True) = None
    primary_shard: Annotated[Any, AfterValidator(_shard_name)] = None
    listen: Optional[Endpoint] = None


class Supervisor(_Strict):
    stall_after_s: Positive = None
    ready_timeout_s: Positive = None


class Log(_Strict):
    format: _text(("text", "json")) = None


class Asset(_Strict):
    id: _integer(1, 65535)
    name: _text()
    decimals: _integer(0, 18)


class Symbol(_Strict):
    id: _integer(1, 65535)
    name: _text()
    base: Annotated[Any, AfterValidator(_asset_ref)]
    quote: Annotated[Any, AfterValidator(_asset_ref)]
    tick_size: Annotated[Any, AfterValidator(_decimal_text)]
    lot_size: Annotated[Any, AfterValidator(_decimal_text)]
    min_qty: _integer(1, 1 << 62) = None
    max_qty: _integer(1, 1 << 62) = None
    maker_fee_bps: _integer(-1000, 1000) = None
    taker_fee_bps: _integer(0, 1000) = None
    price_band_bps: _integer(0, 1000000) = None
    status: _text(("trading", "halted")) = None


class Exchange(_Strict):
    fee_account_id: _integer(0, (1 << 32) - 1) = None
    assets: List[Asset]
    symbols: List[Symbol]


class RuntimeSchema(_Strict):
    """The whole runtime configuration (engine/runtime.py ``DEFAULT_RUNTIME``'s keys)."""
    data_dir: _text()
    shards: List[Shard]
    publisher: Publisher
    journal: Journal
    snapshot: Snapshot
    matcher: Matcher
    standby: Optional[Endpoint] = None
    replication: Optional[Replication] = None
    exchange: Optional[Exchange] = None
    supervisor: Optional[Supervisor] = None
    log: Optional[Log] = None


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "missing (required)",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
}


def _one_line(text):
    """Rule 3: ``text`` with every character that is not printable escaped.  O(len)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _path(loc):
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += "[%d]" % part
        else:
            name = str(part)
            out += ("." if out else "") + (name if name.isprintable() else _show(name))
    return out or "(top level)"


def _line(error):
    kind = error["type"]
    hidden = "api_keys" in error["loc"]                    # rule 3: never a secret
    got = "" if hidden else ", got %s" % _show(error.get("input"))
    if kind == "ringmatch":
        detail = error["msg"]
    elif kind in _MESSAGES:
        detail = _MESSAGES[kind]
        if kind not in ("extra_forbidden", "missing"):
            detail += got
    else:
        detail = error["msg"][:1].lower() + error["msg"][1:] + got
    return "%s: %s" % (_path(error["loc"]), detail)


def validate(raw):
    """Check a merged configuration dict (rules 1-4); return the ``RuntimeConfig``.

    Raises ConfigError with one line naming the key.  O(size of the configuration).
    """
    try:
        return _validate(raw)
    except ConfigError as exc:
        raise ConfigError(_one_line(str(exc)))


def _validate(raw):
    if not isinstance(raw, dict):
        raise ConfigError("(top level): must be an object, got %s" % _show(raw))
    try:
        RuntimeSchema.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = " (and %d more)" % (len(errors) - 1) if len(errors) > 1 else ""
        raise ConfigError(_line(errors[0]) + more)
    if not raw["shards"]:
        raise ConfigError("shards: at least one shard is needed")
    try:
        runtime = RuntimeConfig(raw)
        for shard in runtime.shards:              # exchange and symbol checks (rule 4)
            runtime.shard_view(shard.name)
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return runtime


def set_path(raw, dotted, value):
    """``raw`` with ``a.b.c`` set to ``value`` (objects on the way created).  O(depth)."""
    out = copy.deepcopy(raw)
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def load(path=None, overrides=None):
    """Load ``path`` (JSON; None: the embedded defaults), apply ``overrides``, validate.

    ``overrides``: ``{"publisher.port": 8081, ...}`` (None values are skipped).
    Returns the ``RuntimeConfig``; raises ConfigError (one line) for a file that
    cannot be read, is not JSON, or breaks the schema.
    """
    override = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except OSError as exc:
            raise ConfigError(_one_line("cannot read %s: %s" % (path, exc.strerror or exc)))
        except UnicodeDecodeError as exc:
            raise ConfigError(_one_line("%s is not UTF-8 text (byte %d)" % (path, exc.start)))
        try:
            override = json.loads(text)
        except ValueError as exc:
            raise ConfigError(_one_line("%s is not valid JSON: %s" % (path, exc)))
        except RecursionError:
            raise ConfigError(_one_line("%s is not valid JSON: nested too deeply" % path))
        if not isinstance(override, dict):
            raise ConfigError(_one_line("%s: (top level): must be an object, got %s"
                                        % (path, _show(override))))
    raw = _merge(DEFAULT_RUNTIME, override)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            raw = set_path(raw, dotted, value)
    return validate(raw)
