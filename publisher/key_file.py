"""The API key store on disk: ``<data_dir>/api_keys.json`` (``ringmatch keys``).

Theory of operation (numbered rules; the code refers to them):

1. One JSON file per data dir: ``{"version": 1, "keys": [record, ...]}``; a
   record is ``{"key", "secret", "passphrase_hash", "account_id", "scope",
   "created_ns", "label"}`` and, once revoked, ``"revoked_ns"`` with the
   secret removed (``null``).  Keys are never deleted, so a revoked key id
   is never issued again and ``list`` shows when it was revoked.
2. The secret is what the server needs to check an HMAC, so it is kept in
   clear, in a file of mode 0600; the passphrase only as a salted SHA-256
   (``sha256$<salt hex>$<digest hex>``).  Secret and passphrase are printed
   once, by ``create``; nothing here logs them.
3. Every change is a read-modify-write under an exclusive ``flock`` on
   ``api_keys.json.lock``: the new content goes to a temporary file created
   0600 in the same directory, is fsynced, renamed over the old file, and the
   directory is fsynced.  A reader sees the old file or the new one, never a
   torn one, and a change survives a power cut once ``create``/``revoke``
   returned.
4. Secrets are Coinbase-shaped: 64 random bytes, base64 (88 characters).
   The signature of the Coinbase scheme uses the base64-decoded bytes; the
   ``RM-ACCESS-*`` scheme the secret's text (publisher/auth.py rule 1).
5. Only stdlib: ``ringmatch keys`` must not import the web stack.
"""
import base64
import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time

__all__ = ["FILE_NAME", "SCOPES", "KeyFileError", "key_file_path", "load", "save", "create",
           "revoke", "hash_passphrase", "passphrase_matches", "public_record", "write_private"]

FILE_NAME = "api_keys.json"
SCOPES = ("view", "trade")
VERSION = 1
MAX_FILE_BYTES = 16 << 20
MAX_LABEL_CHARS = 64
_MAX_ACCOUNT = (1 << 32) - 1


class KeyFileError(Exception):
    """The key store cannot be read or changed; the message is one line naming the cause."""


def key_file_path(data_dir):
    """``<data_dir>/api_keys.json``."""
    return os.path.join(os.path.abspath(data_dir), FILE_NAME)


def hash_passphrase(passphrase, salt=None):
    """Rule 2: ``sha256$<salt>$<digest>`` of a passphrase (salt: 16 random bytes).

    >>> passphrase_matches(hash_passphrase("p", salt=b"s"), "p")
    True
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.sha256(salt + passphrase.encode("utf-8")).hexdigest()
    return "sha256$%s$%s" % (salt.hex(), digest)


def passphrase_matches(stored, given):
    """True if ``given`` is the passphrase ``stored`` (``hash_passphrase``) was made from.  O(1)."""
    if not isinstance(stored, str) or not isinstance(given, str):
        return False
    parts = stored.split("$")
    if len(parts) != 3 or parts[0] != "sha256":
        return False
    try:
        salt = bytes.fromhex(parts[1])
    except ValueError:
        return False
    digest = hashlib.sha256(salt + given.encode("utf-8", "replace")).hexdigest()
    return hmac.compare_digest(digest, parts[2])


def _check_record(rec, where):
    if not isinstance(rec, dict):
        raise KeyFileError("%s: a key record is not an object" % where)
    key = rec.get("key")
    if not isinstance(key, str) or not key or len(key) > 128:
        raise KeyFileError("%s: a key record has no valid 'key'" % where)
    account = rec.get("account_id")
    if not isinstance(account, int) or isinstance(account, bool) or not 0 < account <= _MAX_ACCOUNT:
        raise KeyFileError("%s: key %s: account_id must be an integer 1..%d"
                           % (where, key[:40], _MAX_ACCOUNT))
    if rec.get("scope") not in SCOPES:
        raise KeyFileError("%s: key %s: scope must be one of %s" % (where, key[:40], ", ".join(SCOPES)))
    if rec.get("revoked_ns") is None and not isinstance(rec.get("secret"), str):
        raise KeyFileError("%s: key %s: no secret" % (where, key[:40]))


def load(path):
    """The store's content (rule 1) as a dict; an absent file is an empty store.

    Raises KeyFileError (unreadable, not JSON, a wrong record).  O(keys).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {"version": VERSION, "keys": []}
    except OSError as exc:
        raise KeyFileError("cannot read %s: %s" % (path, exc.strerror or exc))
    if len(raw) > MAX_FILE_BYTES:
        raise KeyFileError("%s is over %d bytes" % (path, MAX_FILE_BYTES))
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise KeyFileError("%s is not valid JSON: %s" % (path, str(exc)[:80]))
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyFileError("%s: expected {\"version\": 1, \"keys\": [...]}" % path)
    if data.get("version") != VERSION:
        raise KeyFileError("%s: unknown version %r" % (path, data.get("version")))
    seen = set()
    for rec in data["keys"]:
        _check_record(rec, path)
        if rec["key"] in seen:
            raise KeyFileError("%s: key %s repeats" % (path, rec["key"][:40]))
        seen.add(rec["key"])
    return data


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path, payload):
    """Rule 3's write: ``payload`` (bytes) replaces ``path`` atomically, mode 0600, the file
    and its directory fsynced.  Also used by publisher/client_oids.py.  O(len(payload))."""
    directory = os.path.dirname(path) or "."
    tmp = "%s.%d.%s.tmp" % (path, os.getpid(), secrets.token_hex(4))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)                  # whatever the umask
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save(path, data):
    """Rule 3: write ``data`` to ``path`` atomically, 0600, fsynced (file and directory)."""
    write_private(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


class _Locked(object):
    """Rule 3: an exclusive flock on ``<path>.lock`` (created 0600) for a read-modify-write."""

    def __init__(self, path):
        self.path = path + ".lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)                     # releases the flock
        self.fd = None


def _writable_dir(data_dir):
    if not os.path.isdir(data_dir):
        raise KeyFileError("data dir %s does not exist (give --data-dir, or run the engine once)"
                           % data_dir)


def _os_error(path, exc):
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return KeyFileError("cannot write the key store %s: %s" % (path, exc.strerror))
    return KeyFileError("key store %s: %s" % (path, exc.strerror or exc))


def create(data_dir, account_id, scope, label=None, clock_ns=time.time_ns):
    """Rules 1-4: add a new key; return ``(record without secrets, secret, passphrase)``.

    Raises KeyFileError (bad account, scope or label; the store cannot be read or
    written).  O(keys).

    >>> import tempfile
    >>> rec, secret, passphrase = create(tempfile.mkdtemp(), 7, "view")
    >>> rec["scope"], len(base64.b64decode(secret))
    ('view', 64)
    """
    if not isinstance(account_id, int) or isinstance(account_id, bool) or \
            not 0 < account_id <= _MAX_ACCOUNT:
        raise KeyFileError("account must be an integer 1..%d" % _MAX_ACCOUNT)
    if scope not in SCOPES:
        raise KeyFileError("scope must be one of %s" % ", ".join(SCOPES))
    if label is not None and (len(label) > MAX_LABEL_CHARS or not label.isprintable()):
        raise KeyFileError("label: at most %d printable characters" % MAX_LABEL_CHARS)
    data_dir = os.path.abspath(data_dir)
    _writable_dir(data_dir)
    path = key_file_path(data_dir)
    secret = base64.b64encode(secrets.token_bytes(64)).decode("ascii")          # rule 4
    passphrase = secrets.token_urlsafe(12)
    try:
        with _Locked(path):
            data = load(path)
            used = {r["key"] for r in data["keys"]}
            key = secrets.token_hex(16)
            while key in used:
                key = secrets.token_hex(16)
            rec = {"key": key, "secret": secret, "passphrase_hash": hash_passphrase(passphrase),
                   "account_id": account_id, "scope": scope, "created_ns": clock_ns(),
                   "label": label}
            data["keys"].append(rec)
            save(path, data)
    except OSError as exc:
        raise _os_error(path, exc)
    return public_record(rec), secret, passphrase


def revoke(data_dir, key, clock_ns=time.time_ns):
    """Rule 1: mark ``key`` revoked and drop its secret; return its public record.

    Raises KeyFileError when the key is not in the store or already revoked.  O(keys).
    """
    data_dir = os.path.abspath(data_dir)
    _writable_dir(data_dir)
    path = key_file_path(data_dir)
    try:
        with _Locked(path):
            data = load(path)
            for rec in data["keys"]:
                if rec["key"] == key:
                    break
            else:
                raise KeyFileError("no key %s in %s (keys from the configuration's "
                                   "publisher.api_keys are changed there)" % (key[:40], path))
            if rec.get("revoked_ns") is not None:
                raise KeyFileError("key %s was already revoked" % key[:40])
            rec["revoked_ns"] = clock_ns()
            rec["secret"] = None
            rec["passphrase_hash"] = None
            save(path, data)
    except OSError as exc:
        raise _os_error(path, exc)
    return public_record(rec)


def public_record(rec):
    """A record without its secret and passphrase hash (what ``list`` shows)."""
    return {"key": rec["key"], "account_id": rec["account_id"], "scope": rec["scope"],
            "created_ns": rec.get("created_ns"), "label": rec.get("label"),
            "revoked_ns": rec.get("revoked_ns"),
            "status": "revoked" if rec.get("revoked_ns") is not None else "active"}
