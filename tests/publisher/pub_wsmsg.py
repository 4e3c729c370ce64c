"""Test helper: read JSON messages from a ``websockets`` client connection."""
import asyncio
import json
import time


async def recv(ws, timeout=10.0):
    """The next message, decoded."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(ws, pred, timeout=10.0):
    """Read until ``pred(message)``; return (that message, every message read)."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("message not seen; got %s" % [m.get("type") for m in seen][-20:])
        m = await recv(ws, left)
        seen.append(m)
        if pred(m):
            return m, seen


async def sync(ws):
    """Ping; return everything queued before the pong (the pong excluded)."""
    await ws.send(json.dumps({"type": "ping"}))
    _m, seen = await until(ws, lambda m: m["type"] == "pong", 30)
    return seen[:-1]
