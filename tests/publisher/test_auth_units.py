"""Unit checks of the key store, the signature checks and the UUID client_oid file
(publisher/auth.py, key_file.py, client_oids.py) without an engine: what an operator sees
in the files and what a client is answered."""
import os
import stat
import uuid

import pytest

from publisher import key_file
from publisher.client_oids import ClientOids

pytestmark = pytest.mark.timeout(60)

U1 = "8b9d1e4a-3f4e-4c1b-9d0a-2b8f6c0e7a11"


def test_a_torn_tail_does_not_swallow_the_next_uuid(tmp_path):
    """A crash mid-line leaves a line without its newline; the next UUID appended after the
    restart must not join it (and be lost at the restart after that)."""
    path = str(tmp_path / "shard0.client_oids")
    with open(path, "w") as f:
        f.write("7 %s\n7 8b9d1e4a-3f4e" % U1)                   # the second line is torn
    oids = ClientOids(path=path)
    assert oids.text(7, oids.bind(7, U1)) == U1
    fresh = str(uuid.uuid4())
    value = oids.bind(7, fresh)
    oids.close()
    again = ClientOids(path=path)
    try:
        assert again.text(7, value) == fresh
        assert again.text(7, oids.parse(U1)[0]) == U1
    finally:
        again.close()
    with open(path) as f:
        assert f.read().endswith("7 %s\n" % fresh)


def test_the_client_oid_file_is_0600_and_its_compaction_is_fsynced(tmp_path, monkeypatch):
    path = str(tmp_path / "shard0.client_oids")
    with open(path, "w") as f:
        f.write("")
    os.chmod(path, 0o644)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(
        "/proc/self/fd/%d" % fd)), real_fsync(fd))[1])
    oids = ClientOids(capacity=4, path=path)
    try:
        texts = [str(uuid.uuid4()) for _ in range(9)]
        values = [oids.bind(3, t) for t in texts]                # 9 lines > 2 x 4: compacted
    finally:
        oids.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.path.realpath(str(tmp_path)) in synced            # the directory of the rename
    assert any(os.path.basename(p).startswith("shard0.client_oids.") for p in synced)
    again = ClientOids(capacity=4, path=path)
    try:
        assert [again.text(3, v) for v in values[-4:]] == texts[-4:]
    finally:
        again.close()
    assert sorted(os.listdir(str(tmp_path))) == ["shard0.client_oids"]


def _signed(store, key, secret, path="/accounts"):
    from publisher.auth import signed_headers
    h = signed_headers(key, secret, "GET", path)
    return store.verify(h["RM-ACCESS-KEY"], h["RM-ACCESS-TIMESTAMP"], h["RM-ACCESS-SIGN"],
                        "GET", path, b"")


def test_the_demo_keys_stop_once_the_key_store_has_a_key(tmp_path):
    """The demo secrets are printed in the docs: a publisher whose operator made keys with
    ``ringmatch keys`` (and no publisher.api_keys) must not go on accepting them."""
    from publisher.auth import AuthError, KeyStore
    store = KeyStore.from_config({}, key_file=key_file.key_file_path(str(tmp_path)))
    assert _signed(store, "demo-1", "demo-secret-1").account_id == 1     # no store: the demo
    rec, secret, _ = key_file.create(str(tmp_path), 7, "trade")
    store.refresh(force=True)
    with pytest.raises(AuthError) as info:
        _signed(store, "demo-1", "demo-secret-1")
    assert info.value.status == 401 and "demo keys are off" in info.value.message
    assert _signed(store, rec["key"], secret).account_id == 7
    with open(key_file.key_file_path(str(tmp_path)), "w") as f:
        f.write("{damaged")                                            # fail closed: no demo
    store.refresh(force=True)
    for key, sec in (("demo-2", "demo-secret-2"), (rec["key"], secret)):
        with pytest.raises(AuthError):
            _signed(store, key, sec)
    os.unlink(key_file.key_file_path(str(tmp_path)))                  # a store removed later
    store.refresh(force=True)
    with pytest.raises(AuthError):
        _signed(store, "demo-3", "demo-secret-3")
    configured = KeyStore.from_config({"api_keys": [{"key": "c", "secret": "cs", "account_id": 9}]},
                                      key_file=key_file.key_file_path(str(tmp_path)))
    assert _signed(configured, "c", "cs").account_id == 9              # configured keys stay
