"""The cross-embodiment benchmark on the twin: ATE versus direct fine-tuning, closed loop.

    .venv/bin/python bench/cross_embodiment.py --config config/cross_embodiment/lowdim.yaml --out outputs/xemb_lowdim
    .venv/bin/python bench/cross_embodiment.py --config config/cross_embodiment/smoke.yaml --out /tmp/xemb_smoke

Pre-trains on RM65-B demonstrations, adapts to the RM75-B pair with few demonstrations per task
(plainly and with ATE's variants) and evaluates every adapted policy through the robot's own
runtime on the twin (ate_core.eval.cross_embodiment says how). Prints the results table (Markdown,
as the README quotes it) and writes results.json, table.md and curves.png into --out. An
interrupted run continues where it stopped when started again with the same --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header, print_header, run_main, write_json  # noqa: E402

from ate_core.config import ConfigError  # noqa: E402
from ate_core.eval.cross_embodiment import (load_bench_config, plot_curves, run_benchmark,  # noqa: E402
                                            table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/cross_embodiment/lowdim.yaml", help="benchmark config YAML")
    parser.add_argument("--out", default="", help="output folder (default: outputs/xemb_<name>)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    args = parser.parse_args()
    try:
        cfg = load_bench_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or f"outputs/xemb_{cfg.name}"
    head = header(f"cross-embodiment benchmark ({cfg.name})")
    print_header(head)
    started = time.perf_counter()
    results = run_benchmark(cfg, out, jobs=max(1, args.jobs), log=lambda m: print(f"  {m}", flush=True))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(os.path.join(out, "results.json"), head, results)
    md = table(results)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(md + "\n")
    png = plot_curves(results, os.path.join(out, "curves.png"))
    print(md)
    print(f"results: {out}/results.json" + (f", curves: {png}" if png else "") + f"; {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(main, "cross_embodiment: interrupted; start it again with the same --out to continue")
