"""``python -m bench``: run the suite, print one table, write it as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import delays, durable, monitoring, placement, scale, tracing
from bench.report import progress, table, write_json
from bench.suite import Options, run

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="taskyard against plain Celery with the same settings, in the same run, "
                    "on a private redis-server.")
    parser.add_argument("--quick", action="store_true",
                        help="less work per figure (about a minute on 2 cores)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="where to write the results (default: bench/results.json, "
                             "bench/results-quick.json with --quick)")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions per figure (at least 3; default 7 quick, 11 full)")
    parser.add_argument("--loglevel", default="INFO",
                        help="log level of every worker (default INFO, as `taskyard worker`)")
    parser.add_argument("--fail-on-miss", action="store_true",
                        help="exit with status 1 when a target is not met")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 3:
        parser.error("--reps must be at least 3 (each figure is a median of repetitions)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:  # suites of their own, with their own options
        return scale.main(argv[1:])
    if argv[:1] == ["monitoring"]:
        return monitoring.main(argv[1:])
    if argv[:1] == ["durable"]:
        return durable.main(argv[1:])
    if argv[:1] == ["delays"]:
        return delays.main(argv[1:])
    if argv[:1] == ["tracing"]:
        return tracing.main(argv[1:])
    if argv[:1] == ["placement"]:
        return placement.main(argv[1:])
    args = parse_args(argv)
    options = Options.quick() if args.quick else Options.full()
    options = options.replace(loglevel=args.loglevel, **({"reps": args.reps} if args.reps else {}))
    path = args.json or HERE / ("results-quick.json" if args.quick else "results.json")

    figures, meta = run(options, log=progress)
    meta["mode"] = "quick" if args.quick else "full"
    write_json(path, figures, meta)
    plain = meta["plain_app"]
    print(f"taskyard vs plain Celery {meta['versions']['celery']}, same run, same "
          f"redis-server {meta['versions']['redis-server']}; {meta['mode']} mode, "
          f"{options.reps} repetitions per figure, {meta['machine']['cpus']} CPUs, "
          f"{meta['duration_s']} s")
    accept = "+".join(plain["accept_content"] or [])
    print(f"plain app: serializer={plain['task_serializer']} (accepts {accept} only), "
          f"acks_late={plain['task_acks_late']}, "
          f"reject_on_worker_lost={plain['task_reject_on_worker_lost']}, "
          f"prefetch={plain['worker_prefetch_multiplier']}, "
          f"visibility_timeout={plain['visibility_timeout']}s, "
          f"task events={plain['worker_send_task_events']}, "
          f"sent events={plain['task_send_sent_event']}, "
          f"track_started={plain['task_track_started']}, same transport options; "
          f"without {', '.join(plain['without'])}")
    if options.loglevel.upper() in ("INFO", "DEBUG"):
        logs = ("plain Celery writes its two lines per task (received, succeeded), "
                "taskyard its one request line")
    else:
        logs = "no per-task lines on either side"
    print(f"workers log at {options.loglevel}: {logs}; ratio = taskyard / plain")
    print()
    print(table(figures))
    print(f"\nwritten to {path}")
    missed = [f.key for f in figures if f.met is False]
    if missed:
        print(f"targets not met: {', '.join(missed)}")
    return 1 if missed and args.fail_on_miss else 0


if __name__ == "__main__":
    sys.exit(main())
