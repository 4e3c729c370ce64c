"""One access-log line per API request, and the HTTP metrics (an ASGI middleware).

Theory of operation (numbered rules; the code refers to them):

1. Every HTTP request answered (any status, a 500 included) gives one line
   ``event=http method=GET path=/orders route=/orders status=200 ms=1.234
   bytes=321 key=<key id> auth=coinbase|rm client=127.0.0.1:5555`` through the
   process's ``engine.log.Logger`` (stderr; the supervisor passes it on), and
   one observation of publisher/metrics.py ``HttpMetrics``.
2. The line never holds a credential: no header is logged at all (so no
   signature, passphrase or timestamp), the query string is left out (a
   client could put anything there), and ``key`` is the key id only once its
   request was authenticated (app.py sets ``scope["rm.key"]`` after the
   signature checked): a value sent in a key header that did not
   authenticate, perhaps a secret pasted in the wrong field, is never written.
3. ``route`` is the route template (``/orders/{order_id}``), ``unmatched``
   for a path no route serves, and ``method`` one of ``METHODS`` or ``OTHER``
   (a client may send any token as its method): the metrics' label values stay
   bounded whatever clients send.
4. WebSocket connections pass through untouched.
"""
import time

__all__ = ["AccessLog"]

MAX_PATH_CHARS = 200
#: rule 3: the methods that keep their name as a label value
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def _route(scope, routes):
    """Rule 3: the route template of ``scope`` (Starlette sets ``scope["route"]``)."""
    route = scope.get("route")
    if route is None and routes is not None:
        from starlette.routing import Match
        for candidate in routes:
            try:
                match, _child = candidate.matches(scope)
            except Exception:
                continue
            if match == Match.FULL:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class AccessLog(object):
    """ASGI middleware of rules 1-4.  ``log``: an engine.log.Logger or None (no lines)."""

    def __init__(self, app, log=None, metrics=None, routes=None, clock=time.perf_counter):
        self.app = app
        self.log = log
        self.metrics = metrics
        self.routes = routes
        self.clock = clock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":                                    # rule 4
            await self.app(scope, receive, send)
            return
        started = self.clock()
        answer = {"status": 500, "bytes": 0}

        async def send_and_note(message):
            kind = message["type"]
            if kind == "http.response.start":
                answer["status"] = message["status"]
            elif kind == "http.response.body":
                answer["bytes"] += len(message.get("body") or b"")
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self._note(scope, answer, self.clock() - started)

    def _note(self, scope, answer, seconds):
        route = _route(scope, self.routes() if callable(self.routes) else self.routes)
        method = scope.get("method", "-")
        if method not in METHODS:
            method = "OTHER"                                           # rule 3
        if self.metrics is not None:
            self.metrics.observe(route, method, answer["status"], seconds)
        if self.log is None:
            return
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) else scope.get("path", "")
        path = path.split("?", 1)[0]                                   # rule 2: no query
        if len(path) > MAX_PATH_CHARS:
            path = path[:MAX_PATH_CHARS] + "..."
        client = scope.get("client")
        self.log.event("http", method=method, path=path, route=route, status=answer["status"],
                       ms="%.3f" % (seconds * 1000.0), bytes=answer["bytes"],
                       key=scope.get("rm.key") or "-", auth=scope.get("rm.auth") or "-",
                       client="%s:%s" % (client[0], client[1]) if client else "-")
