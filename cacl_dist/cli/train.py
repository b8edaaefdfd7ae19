"""Training entry point: `python -m cacl_dist.train` or `torchrun ... -m cacl_dist.train`.

    python -m cacl_dist.train                                   # quickstart: synthetic data, CPU, minutes
    python -m cacl_dist.train --config configs/market1501.yaml --set data.root=/data/Market-1501
    torchrun --nproc_per_node=8 -m cacl_dist.train --config configs/market1501.yaml

Starting the same command again resumes from the last checkpoint in run.output_dir (one run at a
time per folder); the first log line says "resuming <folder> after N epochs" or "new run in <folder>",
and --fresh starts over, keeping the old folder as <folder>.old-<time>. SIGTERM or SIGUSR1 make the run checkpoint at its next step (or as soon as the
current phase allows) and exit with status 3; Ctrl-C (SIGINT) does the same and exits with 130.
A user error (bad config, unreadable data, full disk, non-finite loss, ...) ends with one line on
stderr, also written to the run folder's log, and exit status 2.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys

from cacl_dist.cli.common import (USER_ERROR_EXIT_CODE, add_config_args, default_config_path, print_config_if_asked,
                                  run_main, user_error_message)
from cacl_dist.config import describe, load_config, validate_for_world
from cacl_dist.training.stopping import INTERRUPTED_EXIT_CODE, STOPPED_EXIT_CODE, AgreedStop, StopRequested, StopSignals, watch_parent
from cacl_dist.errors import UserError

__all__ = ["INTERRUPTED_EXIT_CODE", "STOPPED_EXIT_CODE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--describe-config", action="store_true",
                        help="print every config key with its value and meaning, and exit")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run even if run.output_dir holds one: that folder is renamed to "
                             "<folder>.old-<time> first (nothing is deleted). A restarted job (requeued by SLURM, "
                             "restarted by torchrun) resumes instead of starting over again")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train (or print the config); returns the exit status: 0 done, 2 user error, 3 / 130 stopped on request."""
    args = build_parser().parse_args(argv)
    where: dict = {}  # the run folder and rank once this run holds the folder: errors go into its log too

    def body() -> int:
        if print_config_if_asked(args, default=default_config_path()):
            return 0
        cfg = load_config(args.config or default_config_path(), args.overrides)
        if args.describe_config:
            print(describe(cfg))
            return 0
        from cacl_dist.distributed import comm
        from cacl_dist.distributed.env import init_distributed, shutdown_distributed
        from cacl_dist.runs.folder import RunFolderLock, write_status
        from cacl_dist.runs.fresh import remove_unused
        from cacl_dist.training.run_log import position
        from cacl_dist.training.trainer import Trainer

        def take_folder() -> str:  # rank 0; returns what --fresh did, for the run's first log line
            note = fresh_start(cfg) if args.fresh else ""
            start.update(created=not lock.run_dir.exists())
            lock.acquire()
            problem = write_status(lock.run_dir, f"running: {lock.describe_holder()}")
            if problem:  # before any work: a run whose outcome cannot be recorded does not start
                raise UserError(f"{problem}; the run folder's status file must be a file this run can replace: "
                                "move what is in the way aside, or pick another run.output_dir")
            return note

        with StopSignals() as signals:  # a signal from now on stops the run at its next chance
            watch_parent()
            env = init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_min)
            lock = RunFolderLock(cfg.run.output_dir)
            trainer = None
            start: dict = {}  # whether this start created the folder, and whether training began
            try:
                validate_for_world(cfg, env.world_size)  # before any work: every rank fails alike
                note = comm.run_on_main(take_folder, "the run folder lock")  # held by rank 0
                where.update(run_dir=cfg.run.output_dir, rank=env.rank)
                stop = AgreedStop()
                signals.attach(stop.request)  # from now on also the image check ends on a signal
                try:
                    trainer = Trainer(cfg, env, stop, start_note=note)
                except StopRequested:  # during the image check: nothing trained, nothing to save
                    trainer = None
                    logging.getLogger("cacl_dist").info("stopped on request during the image check")
                if trainer is not None:
                    start.update(began=True)
                    trainer.fit()
                if trainer is not None and not trainer.stopped:
                    code, outcome = 0, f"finished {position(trainer.progress.epoch, 0)}"
                else:
                    where_now = position(trainer.progress.epoch, trainer.progress.iter_in_epoch) if trainer else "during the image check"
                    code, outcome = signals.exit_code, (
                        f"stopped on request ({_signal_name(signals.received)}) "
                        f"{where_now}; start the same command again to resume")
                problem = write_status(lock.run_dir, f"{code} {outcome}") if lock.held else None
                if problem:
                    print(f"warning: {problem}; the run {outcome}", file=sys.stderr)
                return code
            except Exception as exc:
                if lock.held:  # rank 0, while the folder is still this run's
                    message = user_error_message(exc)
                    write_status(lock.run_dir, f"{USER_ERROR_EXIT_CODE} error: {message}" if message is not None
                                 else f"1 crashed: {type(exc).__name__}: {exc} (traceback on stderr)")
                    start.update(remove=start.get("created") and not start.get("began") and message is not None)
                raise
            finally:
                # The trainer's DDP reducers and pending gathers hold tensors of the process group's work:
                # they go first, while the interpreter is whole (freed during its teardown, gloo's worker
                # threads can abort the process after a finished run).
                trainer = None
                gc.collect()
                lock.release()
                if start.get("remove"):  # a start that failed before any work leaves no empty run folder
                    remove_unused(lock.run_dir)
                shutdown_distributed()

    def log_error(line: str) -> None:
        from cacl_dist.runs.folder import append_error_line

        append_error_line(where.get("run_dir"), where.get("rank", 0), line)

    return run_main(body, on_error=log_error,
                    interrupted="interrupted; start the same command again to resume from the last checkpoint")


def fresh_start(cfg) -> str:
    """What --fresh does to the run folder (rank 0, before the run takes it), said in a phrase for the log."""
    from cacl_dist.runs.fresh import rename_aside, restarted_attempt

    restart = restarted_attempt()
    if restart is not None:  # a requeued or restarted job must continue, not start over on every restart
        return f"--fresh ignored: this is a restart of the job ({restart})"
    moved = rename_aside(cfg.run.output_dir, keep_outside=[cfg.data.root])
    return "--fresh: nothing to set aside" if moved is None else f"--fresh: the earlier folder is now {moved}"


def _signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return "request"


if __name__ == "__main__":
    sys.exit(main())
