"""Rebuild the read model after a (re)start -- placeholder replaced below."""


def rebuild(service, runtime, shard, exchange, output_seq, log=None):
    return {"mode": "ring-only"}
