"""What the REST history (publisher/history.py: fills rings, candles) costs the publisher's
ingest: perf.publisher_ingest_bench's passes with the History feed on and off, alternating.

    python -m perf.history_cost_bench --commands 50000 --passes 5 --batch 4,64,4096
"""
import argparse
import os
import sys

from perf.publisher_ingest_bench import _stats, build_stream, one_pass


def _set_history(on):
    from publisher.columnar import ColumnarReadModel, _columnar_history
    from publisher.read_model import ReadModel, _model_history
    ColumnarReadModel.history = property(_columnar_history if on else (lambda self: None))
    ReadModel.history = property(_model_history if on else (lambda self: None))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=50000)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--batch", default="4,64,4096")
    p.add_argument("--models", default="columnar,object")
    a = p.parse_args(argv)
    print("# %s, load %s" % (sys.version.split()[0], open("/proc/loadavg").read().split()[:3]))
    print("| model | batch | history off us/event | history on us/event | on/off |")
    print("| --- | --- | --- | --- | --- |")
    for batch in [int(b) for b in a.batch.split(",")]:
        chunks, n_events, _n = build_stream(a.commands, batch=batch)
        for model in a.models.split(","):
            runs = {False: [], True: []}
            for on in (False, True):          # warm-up
                _set_history(on)
                one_pass(chunks, model)
            for _ in range(a.passes):
                for on in (False, True):
                    _set_history(on)
                    runs[on].append(one_pass(chunks, model)[1] / n_events * 1e6)
            off, on_ = _stats(runs[False]), _stats(runs[True])
            print("| %s | %d | %.3f (%.3f-%.3f) | %.3f (%.3f-%.3f) | %.2f |   load %s"
                  % (model, batch, off[0], off[1], off[2], on_[0], on_[1], on_[2],
                     on_[0] / off[0], os.getloadavg()[0]))
    _set_history(True)


if __name__ == "__main__":
    main()
