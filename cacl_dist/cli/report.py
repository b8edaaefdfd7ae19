"""Training report of a run folder: `python -m cacl_dist.report RUN [--output DIR]`.

Reads RUN/metrics.jsonl (and RUN/config.yaml when present) and writes, into RUN/report/ unless
--output names another folder:

  evaluation.png            mAP, rank-1 and mINP per evaluation, the best one marked
  cmc.png                   the CMC curve (ranks 1-50) of the last and the best evaluation
  distances.png             distances of correct matches and of other identities at the last
                            evaluation (RUN/eval_distances/)
  losses.png                each loss and the learning rate per logging step, on their own scales,
                            with the epoch boundaries and the best evaluation's step
  clustering.png            clusters (all, with 2+ images, singletons), raw clusters, outliers and
                            refined-away points per epoch
  pseudo_label_quality.png  pairwise precision, recall and F-score, ARI and NMI of the pseudo labels
                            and the raw DBSCAN clusters against the true identities (when the
                            dataset has them)
  speed.png                 training images/s per logging step and clustering seconds per epoch
  report.md                 best and last metrics, wall time split into training, clustering and
                            evaluation, and the plots

It works on a run that is still going (a half-written last line is skipped) and on a resumed
run: steps repeated after a resume keep their last entry. The plots need matplotlib; without it
only report.md is written (one line says so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cacl_dist.cli.common import run_main
from cacl_dist.runs.eval_distances import last_histogram
from cacl_dist.runs.report import markdown, read_config, read_rows, summarize
from cacl_dist.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cacl_dist.report`."""
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the run folder (holds metrics.jsonl)")
    parser.add_argument("--output", default=None, help="folder for the plots and report.md (default RUN/report)")
    args = parser.parse_args(argv)

    def body() -> int:
        run = Path(args.run)
        rows, skipped = read_rows(run)
        if not rows:
            raise UserError(f"'{run / 'metrics.jsonl'}' holds no records yet; run the report after the first "
                            "logging step")
        config = read_config(run)
        out = Path(args.output) if args.output else run / "report"
        out.mkdir(parents=True, exist_ok=True)
        try:
            from cacl_dist.runs.report_plots import write_plots
        except ImportError as exc:
            print(f"matplotlib is not installed ({exc}): writing report.md without plots "
                  "(pip install matplotlib)", file=sys.stderr)
            plots = []
        else:
            plots = write_plots(rows, out, last_histogram(run))
        note = f"({skipped} unreadable line(s) of metrics.jsonl skipped.)" if skipped else ""
        if skipped:
            print(f"warning: skipped {skipped} unreadable line(s) of {run / 'metrics.jsonl'} (each line must be a "
                  "JSON object with 'kind' and 'step')", file=sys.stderr)
        report = out / "report.md"
        report.write_text(markdown(run, summarize(rows, config), config, plots, note))
        print(f"wrote {report}" + (f" and {len(plots)} plots: {', '.join(Path(p).name for p in plots)}"
                                   if plots else ""))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
