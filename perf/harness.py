"""The common benchmark harness for every suite in perf/.

* ``measure(fn, passes, warmup)``: run ``fn`` ``warmup`` times untimed, then
  ``passes`` times; ``fn`` returns a ``Sample`` (count of items and seconds,
  optionally latencies in ns).  Returns a ``Result`` with median/min/max
  throughput and, when latencies were recorded, HdrHistogram percentiles
  (``hdrhistogram`` package; an exact sorted-list fallback where it is not
  installed, e.g. PyPy -- the result says which).
* ``environment()``: interpreter, host, CPU count, load average.
* ``write_results(stem, title, rows, settings)``: ``perf/results/<stem>.json``
  and ``<stem>.md`` (a markdown table) with the environment and settings.

A suite checks its own result (counts, checksums) and raises if it is wrong,
so a fast but wrong run fails instead of being reported.

A suite module is ``perf/<topic>_bench.py`` exposing ``SUITES = {name: callable(argv)}``;
``ringmatch bench`` discovers them (``perf/cli.py``).
"""
import json
import os
import platform
import statistics
import sys
import time

__all__ = ["Sample", "Result", "measure", "environment", "write_results", "RESULTS_DIR",
           "Histogram"]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


class Sample(object):
    """One timed pass: ``count`` items in ``seconds``; optional one-way latencies (ns)."""

    __slots__ = ("count", "seconds", "latencies_ns")

    def __init__(self, count, seconds, latencies_ns=None):
        self.count = count
        self.seconds = seconds
        self.latencies_ns = latencies_ns


class Histogram(object):
    """HdrHistogram (1 ns .. 100 s, 3 significant digits) or an exact fallback."""

    def __init__(self):
        try:
            from hdrh.histogram import HdrHistogram
            self._h = HdrHistogram(1, 100 * 10 ** 9, 3)
            self.kind = "hdrhistogram"
            self._values = None
        except ImportError:
            self._h = None
            self.kind = "exact (hdrhistogram not installed)"
            self._values = []

    def record(self, values):
        if self._h is not None:
            rec = self._h.record_value
            for v in values:
                rec(max(1, int(v)))
        else:
            self._values.extend(int(v) for v in values)

    def percentiles(self):
        if self._h is not None:
            out = {"p%g" % p: self._h.get_value_at_percentile(p) for p in PERCENTILES}
            out["max"] = self._h.get_max_value()
            out["count"] = self._h.get_total_count()
            return out
        vals = sorted(self._values)
        if not vals:
            return {}
        out = {"p%g" % p: vals[min(len(vals) - 1, int(len(vals) * p / 100.0))]
               for p in PERCENTILES}
        out["max"] = vals[-1]
        out["count"] = len(vals)
        return out


class Result(object):
    """Throughput statistics over passes (+ latency percentiles)."""

    def __init__(self, name, implementation, samples, histogram=None, settings=None,
                 unit="records/s"):
        rates = [s.count / s.seconds for s in samples]
        self.name = name
        self.implementation = implementation
        self.unit = unit
        self.passes = len(samples)
        self.median = statistics.median(rates)
        self.min = min(rates)
        self.max = max(rates)
        self.count = samples[0].count
        self.latency = histogram.percentiles() if histogram is not None else None
        self.latency_kind = histogram.kind if histogram is not None else None
        self.settings = dict(settings or {})

    def as_dict(self):
        return {"suite": self.name, "implementation": self.implementation, "unit": self.unit,
                "passes": self.passes, "median": self.median, "min": self.min, "max": self.max,
                "records_per_pass": self.count, "latency_ns": self.latency,
                "latency_histogram": self.latency_kind, "settings": self.settings}


def measure(name, implementation, fn, passes=5, warmup=1, settings=None, unit="records/s"):
    """Warm up, run ``passes`` timed passes of ``fn() -> Sample``; return a Result.

    Latencies of every timed pass go into one histogram.
    """
    for _ in range(warmup):
        fn()
    samples = []
    hist = None
    for _ in range(passes):
        s = fn()
        samples.append(s)
        if s.latencies_ns is not None:
            if hist is None:
                hist = Histogram()
            hist.record(s.latencies_ns)
    r = Result(name, implementation, samples, hist, settings, unit)
    _progress(r)
    return r


def _progress(r):
    lat = ""
    if r.latency:
        lat = "  one-way p50 %.2f us  p99 %.2f us" % (r.latency["p50"] / 1e3,
                                                     r.latency["p99"] / 1e3)
    sys.stderr.write("  %-34s %-28s median %14s %s%s\n" % (
        r.name, r.implementation, "{:,.0f}".format(r.median), r.unit, lat))


def environment():
    """Interpreter, host and load: stored beside every result."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "interpreter": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "executable": sys.executable,
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": load,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "{:,.0f}".format(v)
    return "{:,}".format(v) if isinstance(v, int) else str(v)


def markdown(title, rows, env, settings, notes=()):
    """A markdown report: environment, settings, one table row per Result."""
    lines = ["# %s" % title, ""]
    lines.append("- interpreter: %s" % env["interpreter"])
    lines.append("- host: %s (%s CPUs), %s; load average at end %s"
                 % (env["host"], env["cpus"], env["platform"], env["loadavg_at_end"]))
    lines.append("- run: %s" % env["time_utc"])
    for k, v in sorted(settings.items()):
        lines.append("- %s: %s" % (k, v))
    for n in notes:
        lines.append("- %s" % n)
    lines.append("")
    lines.append("| suite | implementation | median | min | max | unit | p50 us | p99 us | "
                 "p99.9 us | max us |")
    lines.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        lat = r.latency or {}

        def us(key):
            return "%.2f" % (lat[key] / 1e3) if key in lat else "-"

        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r.name, r.implementation, _fmt(r.median), _fmt(r.min), _fmt(r.max), r.unit,
            us("p50"), us("p99"), us("p99.9"), us("max")))
    lines.append("")
    return "\n".join(lines)


def write_results(stem, title, rows, settings, notes=()):
    """Write ``perf/results/<stem>.json`` and ``.md``; return the two paths."""
    env = environment()
    os.makedirs(RESULTS_DIR, exist_ok=True)
    base = os.path.join(RESULTS_DIR, stem)
    with open(base + ".json", "w") as f:
        json.dump({"title": title, "environment": env, "settings": settings,
                   "notes": list(notes), "results": [r.as_dict() for r in rows]},
                  f, indent=2, sort_keys=True)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(markdown(title, rows, env, settings, notes))
    return base + ".json", base + ".md"
