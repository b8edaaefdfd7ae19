"""What runs inside every task of a submitted job: torch.distributed set-up from SLURM, training
through the regular entry point, and the checkpoint-then-requeue protocol.

Signals while a job runs:
- the time-limit warning (submitit's preemption signal, SIGUSR2 by default, sent
  `--signal-delay-s` seconds before the limit): every rank checkpoints at its next step,
  then rank 0 requeues the job (at most `max_requeues` times over the job's life) and the resumed
  job continues from that checkpoint. Should the checkpoint not come in time, rank 0 requeues
  anyway shortly before the limit and the job resumes from the previous checkpoint.
- SIGTERM (scancel, `scontrol requeue`, preemption): every rank checkpoints at its next
  step and exits with status 3. SLURM itself requeues a preempted or requeued job; a cancelled
  job stays stopped until it is submitted again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path

LOCAL_REQUEUE_EXIT_CODE = 144
"""Exit status that makes submitit's local executor start the tasks again."""


def master_port(job_id: str, restart: int) -> int:
    """A port in [20000, 50000) that every task of one job start agrees on without talking."""
    return 20000 + zlib.crc32(f"{job_id}:{restart}".encode()) % 30000


def torch_env(rank: int, world_size: int, local_rank: int, local_world_size: int, master_addr: str,
              port: int) -> dict[str, str]:
    """The torchrun variables `cacl_dist.distributed.env.init_distributed` reads."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(local_world_size), "MASTER_ADDR": master_addr, "MASTER_PORT": str(port)}


def restart_count(environ: dict, counter_file: Path | None) -> int:
    """How often this job has been requeued: SLURM_RESTART_COUNT on SLURM, a counter file locally."""
    if environ.get("SLURM_RESTART_COUNT", "").isdigit():
        return int(environ["SLURM_RESTART_COUNT"])
    if counter_file is not None and counter_file.is_file():
        text = counter_file.read_text().strip()
        return int(text) if text.isdigit() else 0
    return 0


def _say(message: str) -> None:
    print(f"launch: {message}", flush=True)


class TimeLimitWatch:
    """Turns the time-limit signal into the trainer's SIGUSR1 stop request, repeatedly until training
    returns (a request that lands before the trainer listens is not lost), and runs `on_deadline`
    once if training has not stopped `grace_s` seconds after the signal."""

    def __init__(self, warn_signal: int, grace_s: float, on_deadline=None, interval_s: float = 2.0) -> None:
        self.warn_signal, self.grace_s, self.on_deadline = warn_signal, grace_s, on_deadline
        self.interval_s = interval_s
        self.fired = threading.Event()
        self.finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: dict[int, object] = {}

    def _on_warning(self, signum, frame) -> None:
        if not self.fired.is_set():
            self.fired.set()
            self._thread = threading.Thread(target=self._nudge, daemon=True)
            self._thread.start()

    def _nudge(self) -> None:
        waited = 0.0
        while not self.finished.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            if self.finished.wait(self.interval_s):
                return
            waited += self.interval_s
            if waited >= self.grace_s and self.on_deadline is not None:
                callback, self.on_deadline = self.on_deadline, None
                callback()

    def __enter__(self) -> "TimeLimitWatch":
        self._previous[self.warn_signal] = signal.signal(self.warn_signal, self._on_warning)
        # until the trainer installs its own handler, SIGUSR1 must not terminate the process
        self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        return self

    def __exit__(self, *exc) -> None:
        self.finished.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sig, old in self._previous.items():
            signal.signal(sig, old)


class TrainingTask:
    """The callable submitit pickles: `python -m cacl_dist.train ARGV` in every task of the job."""

    def __init__(self, argv: list[str], run_dir: str, max_requeues: int, signal_delay_s: int,
                 port: int | None = None) -> None:
        self.argv = list(argv)
        self.run_dir = run_dir
        self.max_requeues = max_requeues
        self.signal_delay_s = signal_delay_s
        self.port = port

    def checkpoint(self, *args, **kwargs):
        """Used by submitit's own handler only if its signal lands before `__call__` takes over:
        run the same task again (training resumes from the run folder by itself)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> dict:
        import submitit

        from cacl_dist.cli.train import STOPPED_EXIT_CODE, main

        job = submitit.JobEnvironment()
        local = job.cluster == "local"
        counter = Path(job.paths.folder) / f"{job.raw_job_id}_requeues.txt" if local else None
        restarts = restart_count(dict(os.environ), counter)
        hosts = list(job.hostnames)
        master = "127.0.0.1" if local or len(hosts) == 1 else hosts[0]
        port = self.port or master_port(job.raw_job_id, restarts)
        local_world = max(1, job.num_tasks // max(1, job.num_nodes))
        os.environ.update(torch_env(job.global_rank, job.num_tasks, job.local_rank, local_world, master, port))
        _say(f"job {job.job_id} task {job.global_rank} of {job.num_tasks} on {job.hostname}; "
             f"master {master}:{port}; requeues so far: {restarts}; run folder {self.run_dir}")

        requeued = threading.Event()

        def requeue() -> None:
            if requeued.is_set() or job.global_rank != 0:
                return
            requeued.set()
            if restarts >= self.max_requeues:
                _say(f"not requeued: the job was requeued {restarts} times already (--max-requeues "
                     f"{self.max_requeues}); submit the same command again to resume from {self.run_dir}")
                return
            if local:
                counter.write_text(str(restarts + 1))
                _say("requeued (local executor restarts the tasks)")
                os._exit(LOCAL_REQUEUE_EXIT_CODE)
            result = subprocess.run(["scontrol", "requeue", str(os.environ.get("SLURM_JOB_ID", job.raw_job_id))],
                                    capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                _say(f"requeued job {job.job_id} (requeue {restarts + 1} of at most {self.max_requeues})")
            else:
                _say(f"scontrol requeue failed: {(result.stderr or result.stdout).strip()}; submit the same "
                     f"command again to resume from {self.run_dir}")

        grace = max(5.0, self.signal_delay_s - max(10.0, 0.25 * self.signal_delay_s))
        warn_signal = getattr(signal, "SIG" + job.USR_SIG)  # submitit's time-limit signal (SIGUSR2 by default)
        with TimeLimitWatch(warn_signal, grace, on_deadline=requeue) as watch:
            code = main(self.argv)
        if code == 0:
            _say(f"training finished; run folder {self.run_dir}")
            return {"run_dir": self.run_dir, "restarts": restarts}
        if code == STOPPED_EXIT_CODE:
            if watch.fired.is_set():
                _say("checkpointed before the time limit")
                requeue()
            else:
                _say(f"checkpointed and stopped on SIGTERM; SLURM requeues a preempted job, otherwise submit "
                     f"the same command again to resume from {self.run_dir}")
            sys.exit(STOPPED_EXIT_CODE)  # no result file: the job is not over
        raise RuntimeError(f"training exited with status {code}; the error is in this task's log above")
