"""``ringmatch run``: start one engine shard in the foreground."""
import sys

from engine.log import Logger


def add_arguments(parser):
    parser.add_argument("--config", help="runtime configuration (JSON); default: embedded")
    parser.add_argument("--shard", help="shard to run (default: the first in the config)")
    parser.add_argument("--data-dir", help="override data_dir")
    parser.add_argument("--port", type=int, help="override publisher.port")
    parser.add_argument("--matcher-interpreter", help="auto | pypy | cpython | PATH")


def run(args):
    from engine.runtime import RuntimeConfig, ConfigError
    from engine.supervisor import Supervisor, AlreadyRunningError
    try:
        runtime = RuntimeConfig.load(args.config)
        override = {}
        if args.data_dir:
            override["data_dir"] = args.data_dir
        if args.port is not None:
            override["publisher"] = dict(runtime.raw["publisher"], port=args.port)
        if args.matcher_interpreter:
            override["matcher"] = dict(runtime.raw["matcher"], interpreter=args.matcher_interpreter)
        if override:
            raw = dict(runtime.raw)
            raw.update(override)
            runtime = RuntimeConfig(raw)
        supervisor = Supervisor(runtime, args.shard)
    except ConfigError as exc:
        print("ringmatch run: bad configuration: %s" % exc, file=sys.stderr)
        return 2
    log = supervisor.log
    try:
        supervisor.start()
    except AlreadyRunningError as exc:
        print("ringmatch run: %s" % exc, file=sys.stderr)
        return 3
    if not supervisor.wait_ready():
        log.warning("not_ready", detail="publisher port not answering yet; supervising anyway")
    pub = runtime.publisher
    url = "http://%s:%s" % (pub["host"], pub["port"])
    log.event("ready", api=url, docs=url + "/docs", page=url + "/",
              status="ringmatch status --config %s" % supervisor.config_path)
    print("ringmatch: engine running, shard %s; API %s (docs %s/docs); "
          "status: ringmatch status --data-dir %s; Ctrl-C to stop"
          % (supervisor.shard.name, url, url, runtime.data_dir), file=sys.stderr)
    return supervisor.run_forever()
