"""ws rule 10 in-process: the hub's key-store timer drops user subscriptions whose key
became invalid (here: a damaged key file, auth rule 10's fail-closed case), and the
fan-out of reports never touches the key store."""
import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest

from engine.commands import Command
from publisher import key_file
from publisher.auth import KeyStore
from publisher.ws import WsClient, _handle

from test_pub_hub import _setup as hub_setup

pytestmark = pytest.mark.timeout(60)


class FakeSocket(object):
    async def send_text(self, text):
        pass

    async def close(self, code=1000, reason=""):
        pass


def _setup(tmp_path):
    hub, _model, run = hub_setup(max_queue=10000)
    _rec, secret, passphrase = key_file.create(str(tmp_path), 1, "view")
    store = KeyStore([], key_file=key_file.key_file_path(str(tmp_path)), reload_s=0.05)
    hub.keystore = store
    hub.key_check_s = 0.05
    return hub, store, run, _rec["key"], secret, passphrase


def _subscribe(key, secret, passphrase):
    ts = str(time.time())
    sig = hmac.new(base64.b64decode(secret), (ts + "GET/users/self/verify").encode(),
                   hashlib.sha256).digest()
    return {"type": "subscribe", "channels": ["user"], "key": key, "passphrase": passphrase,
            "timestamp": ts, "signature": base64.b64encode(sig).decode()}


def _messages(client):
    out = [json.loads(m) for m in client.queue if isinstance(m, str)]
    client.queue.clear()
    return out


def test_a_damaged_key_file_drops_the_user_subscription(tmp_path):
    async def main():
        hub, store, run, key, secret, passphrase = _setup(tmp_path)
        client = WsClient(hub, FakeSocket(), 10000)
        hub.add(client)
        _handle(client, hub, store, _subscribe(key, secret, passphrase))
        subs = _messages(client)
        assert {"name": "user", "account_id": 1} in subs[-1]["channels"], subs
        calls = []
        refresh = store.refresh
        store.refresh = lambda *a, **kw: (calls.append(1), refresh(*a, **kw))[1]
        for i in range(200):                           # reports: no key-store work
            run(Command.limit(1, 1, 1, 1000 + i, 1))
        assert not calls
        assert len([m for m in _messages(client) if m["type"] == "report"]) >= 200
        await asyncio.sleep(0.3)                       # timer ticks, nothing changed
        assert calls and hub.key_drops == 0 and not _messages(client)
        with open(store.key_file, "w") as f:
            f.write("{not json")
        deadline = time.monotonic() + 5
        while not client.queue and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        got = _messages(client)
        assert got[0]["type"] == "error" and got[0]["reason"] == "key revoked", got
        assert "no longer valid" in got[0]["message"], got
        assert got[1] == {"type": "subscriptions", "channels": []}, got
        run(Command.limit(1, 1, 1, 999, 1))
        assert not _messages(client)
        await asyncio.sleep(0.15)
        assert hub._key_handle is None                 # no user subscription: timer stopped
    asyncio.run(main())
