"""The CACL epoch loop: cluster -> train steps (with memory updates) -> evaluate -> checkpoint.

Each step reads like the data flow in docs/architecture.md section 3:
1. rank 0 clusters the gathered branch-1 bank and broadcasts the labels;
2. every rank sums its own bank rows per cluster, an all-reduce gives exact centres;
3. the identity sampler plans the epoch's global batches, each rank loads its slice;
4. both DDP-wrapped branches run forward, the losses use local samples against the centres;
5. the global batch's features are gathered while the backward pass runs, then the bank rows
   and centres are updated (the step itself never waits for the device: no host syncs);
6. at the end of the epoch: checkpoint, then evaluate when due and checkpoint again with the result.

Each component keeps its own state (progress, optimiser, banks, pseudo labels); the checkpointer
gathers and restores it and says when an evaluation is due. No non-finite state is ever saved;
a stop request (e.g. SIGTERM) is honoured at the next step, between phases and between
extraction batches, on every rank alike, saving any unsaved state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import torch

from cacl_dist import clustering
from cacl_dist.runs import pseudo_labels as pseudo_label_log
from cacl_dist.training import preflight, run_log
from cacl_dist.config import Config, dump_yaml, validate_for_world
from cacl_dist.data.epoch_plan import check_batch_order
from cacl_dist.data.factory import augment_params, dataset_from_config, generate_if_synthetic, training_plan
from cacl_dist.data.integrity import check_dataset_images, records_fingerprint
from cacl_dist.data.layouts import ReidDataset
from cacl_dist.data.pipelines import get_pipeline, resolve_pipeline
from cacl_dist.distributed import comm
from cacl_dist.distributed.bn_groups import broadcast_bn_buffers
from cacl_dist.distributed.env import DistEnv
from cacl_dist.distributed.parallelize import ParallelSettings, configure_backends, parallelize, prepare_model, to_input
from cacl_dist.distributed.sharding import shard_bounds
from cacl_dist.evaluation.evaluator import EvalOptions, evaluate
from cacl_dist.evaluation.extract import ExtractionSettings, extract_shard
from cacl_dist.runs.eval_distances import save_histogram
from cacl_dist.runs.logs import progress as progress_bar
from cacl_dist.runs.logs import setup_logging
from cacl_dist.runs.metrics import MetricsWriter
from cacl_dist.losses import cacl_loss, loss_weights
from cacl_dist.models.cacl import build_model, model_shape
from cacl_dist.training.banks import MemoryBanks
from cacl_dist.training.checkpointer import Checkpointer, TrainingParts
from cacl_dist.training.labels import PseudoLabels
from cacl_dist.training.optim import OPTIMISER_NAMES, Optimiser, adam_kernel, parameter_groups
from cacl_dist.training.proxies import CameraProxies
from cacl_dist.precision import StepPrecision
from cacl_dist.training.progress import Progress
from cacl_dist.training.stopping import AgreedStop, StopRequested


class Trainer:
    """Owns the model, the optimiser, both banks and the pseudo labels of one run."""

    def __init__(self, cfg: Config, env: DistEnv, stop: AgreedStop | None = None, start_note: str = "") -> None:
        """Set up the run; `stop` (e.g. fed by signal handlers before this exists) may end the image check early
        with :class:`~cacl_dist.training.stopping.StopRequested` on every rank. `start_note` (what --fresh did)
        goes into the first log line."""
        self.cfg, self.env = cfg, env
        self.stop = stop if stop is not None else AgreedStop()
        self.run_dir = Path(cfg.run.output_dir)
        first_line = comm.run_on_main(lambda: preflight.start_line(self.run_dir, start_note), "the resume decision")
        self.log = setup_logging(self.run_dir, env.rank)  # (after: a fresh start's log is a new file)
        self.log.info("%s", first_line)  # 'resuming <folder> after N epochs ...' or 'new run in <folder>'
        self.metrics = MetricsWriter(self.run_dir, enabled=env.is_main)
        self.show_progress = cfg.run.progress and env.is_main
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if generate_if_synthetic(cfg.data, write=env.is_main):
            comm.barrier()  # rank 0 wrote the images; the others wait before reading them
        self.dataset: ReidDataset = dataset_from_config(cfg.data, cfg.clustering.k1)
        preflight.check_sampler_fills_batches(len(self.dataset.train), cfg.train.batch_size, cfg.train.num_instances,
                                              cfg.train.sampler)  # before any work, not after the first clustering
        bar = functools.partial(progress_bar, desc="check images", enabled=self.show_progress)
        comm.run_on_main(lambda: check_dataset_images(self.dataset, self.run_dir, bar, lambda: self.stop.requested),
                         "checking the images")  # a stop ends it on rank 0, and every rank raises StopRequested
        self.data_fingerprint = records_fingerprint(self.dataset.train, self.dataset.root)
        self.train_pipeline = get_pipeline(resolve_pipeline(cfg.data.pipeline, device=env.device))
        self.cluster_params = cfg.clustering.resolved()
        bn_layout = validate_for_world(cfg, env.world_size)  # checked at start-up; here for its BatchNorm layout
        run_log.log_setup(self.log, cfg, env, self.dataset, self.train_pipeline.NAME, self.cluster_params.backend,
                          bn_layout)

        torch.manual_seed(cfg.run.seed)
        parallel = ParallelSettings.from_config(cfg)
        configure_backends(env.device, parallel)
        self.precision = StepPrecision(cfg.train.precision, env.device)
        self.extraction = dataclasses.replace(ExtractionSettings.from_config(cfg, env.device, self.show_progress),
                                              should_stop=lambda: self.stop.requested)
        self.eval_options = EvalOptions.from_config(cfg.eval)  # flip averaging, re-ranking
        model = build_model(cfg.model.backbone, cfg.model.pretrained, predictor_init=cfg.model.predictor_init,
                            **model_shape(cfg.model, cfg.data.height, cfg.data.width))
        self.model = prepare_model(model.to(env.device), env, bn_layout, parallel)
        self.online = parallelize(self.model.online, env, parallel)
        self.branch_gray = parallelize(self.model.branch_gray, env, parallel)
        self.optimiser = Optimiser(parameter_groups(self.model, cfg.optim), cfg.optim, env.device, cfg.train.epochs)

        num_train = len(self.dataset.train)
        self.banks = MemoryBanks(num_train, self.model.online.branch.dim,
                                 shard_bounds(num_train, env.rank, env.world_size), env.device)
        proxies = (CameraProxies(cfg.loss, [r.camid for r in self.dataset.train], self.banks, env.device,
                                 cfg.data.dataset) if cfg.loss.camera_proxy_weight > 0 else None)
        self.pseudo = PseudoLabels(env.device, proxies)  # camera-aware proxies only when their loss is on
        self.progress = Progress()
        self.eta = run_log.RunClock(cfg.train.epochs * cfg.train.iters_per_epoch)
        parts = TrainingParts(self.progress, self.model, self.optimiser, self.precision, self.banks, self.pseudo)
        self.checkpointer = Checkpointer(cfg, self.run_dir, self.dataset, self.data_fingerprint, parts, env.world_size,
                                         self.log)
        self.log.info("step: precision %s (extraction %s), %s %s, %s", cfg.train.precision, self.extraction.precision,
                      OPTIMISER_NAMES[cfg.optim.name], adam_kernel(cfg.optim.implementation, env.device),
                      parallel.describe(env.device))

    # ----------------------------------------------------------------------------- run
    def fit(self) -> list[dict]:
        """Train to the configured number of epochs, resuming from the run folder when possible.

        Returns early, after a checkpoint of any unsaved state, when a stop was requested (``stopped``).
        """
        progress = self.progress
        try:
            self.start()
            self.eta.restart(progress.global_step)  # the pace of this process's own steps
            self.evaluate_if_due()  # before training (eval.at_start), or the one a stop interrupted
            while progress.epoch < self.cfg.train.epochs:
                self.stop.check()
                if progress.iter_in_epoch == 0:
                    self.stop.phase(self.cluster)
                self.train_epoch()
                self.end_epoch()
                self.evaluate_if_due()
        except StopRequested:
            return self._stop_here()
        if self.env.is_main and (summary := run_log.log_summary(self.log, progress.eval_history)) is not None:
            self.metrics.write("summary", progress.global_step, **summary)  # first, last and best evaluation
        self.metrics.close()
        return progress.eval_history

    def start(self) -> None:
        """Resume from the run folder, or fill the banks for a fresh start; record the config in use."""
        self.stop.check()
        resumed = self.resume()
        if self.env.is_main:  # once a resume has accepted this config
            (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))
        if not resumed:
            data = self.dataset
            preflight.warn_if_slow_first_epoch(self.log, self.cfg, self.env, self.model.online.branch, len(data.train),
                                               len(data.query) + len(data.gallery))
            self.stop.phase(self.init_memory)

    def end_epoch(self) -> None:
        """Step the schedule and checkpoint, before any evaluation: a failing evaluation never costs the epoch."""
        self.optimiser.scheduler.step()
        self.progress.epoch_done()
        self.checkpointer.unsaved = True
        self.save(keep=self.checkpointer.keep_due())

    def evaluate_if_due(self) -> None:
        """Evaluate when due, then checkpoint the same state again with the evaluation in its history."""
        if self.checkpointer.evaluation_due():
            self.stop.phase(self.evaluate)
            if self.progress.epoch > 0:
                self.save(keep=self.checkpointer.keep_due())

    def request_stop(self) -> None:
        """Ask the run to checkpoint and return at its next step or between phases (e.g. on SIGTERM).

        Safe to call from a signal handler; one rank's request stops every rank at the same point.
        """
        self.stop.request()

    @property
    def stopped(self) -> bool:
        """True when the last `fit` returned early on request."""
        return self.stop.honoured

    def _stop_here(self) -> list[dict]:
        saved = not comm.any_rank(not self.checkpointer.unsaved)  # only when every rank finished its part
        if saved:
            self.save()
        self.stop.honoured = True
        self.log.info("stopped on request %s; %s", run_log.position(self.progress.epoch, self.progress.iter_in_epoch),
                      "checkpoint written, start the same command again to resume" if saved else
                      "nothing new to checkpoint, start the same command again to continue")
        self.metrics.close()
        return self.progress.eval_history

    # ----------------------------------------------------------------------------- steps
    def init_memory(self) -> None:
        """Fill both banks with features of the plain training images (each rank its own rows)."""
        t0 = time.perf_counter()
        start, end = self.banks.shard
        feats = extract_shard(self.model.online.branch, self.dataset.train, start, end, self.extraction,
                              desc="memory rgb")
        self.banks.rgb.load(feats.to(self.env.device))
        gray = self.cfg.memory.init_gray_from == "gray"
        feats = extract_shard(self.model.branch_gray, self.dataset.train, start, end, self.extraction, gray=gray,
                              desc="memory gray")
        self.banks.gray.load(feats.to(self.env.device))
        self.checkpointer.unsaved = True
        self.log.info("memory banks initialised: %d rows on this rank (of %d), %.1f s",
                      end - start, len(self.dataset.train), time.perf_counter() - t0)

    def cluster(self) -> clustering.ClusterResult | None:
        """Pseudo labels for the coming epoch from the branch-1 bank, and exact centres.

        Rank 0 clusters (the result on rank 0, None elsewhere); a failure there reaches every rank
        at once and all of them raise it (``comm.run_on_main``).
        """
        shared = self.env.world_size > 1 and self.cfg.clustering.shard_knn and self.cluster_params.takes_neighbours
        rows, cfg = self.banks.rgb.rows, self.cfg
        epoch = self.progress.epoch + 1
        feats = comm.all_gather_cat(rows) if shared else comm.gather_cat(rows, dst=0)  # whole bank (rank 0)
        neighbours, knn_seconds = self._shared_neighbours(feats) if shared else (None, 0.0)
        results: list[clustering.ClusterResult] = []

        def on_main() -> tuple:
            results.append(clustering.cluster(feats, self.cluster_params, neighbours, self.show_progress))
            stats = {k: getattr(results[0], k) for k in ("num_clusters", "num_raw_clusters", "num_outliers",
                                                         "num_refined_away", "backend", "seconds",
                                                         "num_multi_clusters", "num_singletons")}
            stats["seconds"] += knn_seconds  # the neighbour search shared by all ranks
            stats.update(pseudo_label_log.record_round(self.run_dir, epoch, results[0], self.dataset.train))
            return results[0].labels, stats

        labels, stats = comm.run_on_main(on_main, "the pseudo labels (clustering on rank 0)")
        self.pseudo.assign(torch.as_tensor(labels, dtype=torch.int64), self.banks)
        self.pseudo.cluster_stats = stats
        run_log.log_clustering(self.log, epoch, stats)
        if results and (warning := preflight.clustering_warning(results[0].labels, cfg.train.batch_size,
                                                                cfg.train.num_instances)):  # rank 0
            self.log.warning("epoch %d: %s", epoch, warning)
        self.metrics.write("cluster", self.progress.global_step, epoch=epoch, **stats)
        return results[0] if results else None

    def _shared_neighbours(self, feats: torch.Tensor) -> tuple:
        """Every rank searches the k1 nearest neighbours of its share of the rows; all gather them.

        Returns ((sims, idx), seconds).
        """
        start = time.perf_counter()
        rows = shard_bounds(feats.shape[0], self.env.rank, self.env.world_size)
        sims, idx = clustering.neighbours_of_rows(feats, self.cluster_params, rows, show_progress=self.show_progress)
        neighbours = (comm.all_gather_cat(sims), comm.all_gather_cat(idx))
        return neighbours, time.perf_counter() - start

    def train_epoch(self) -> None:
        """Run the remaining steps of the current epoch; StopRequested (after the step) when asked to stop."""
        cfg, progress, pseudo = self.cfg, self.progress, self.pseudo
        self.model.train(frozen_bn=self.cfg.model.frozen_bn)
        plan = training_plan(cfg.train, cfg.run.seed, self.dataset, pseudo.labels.cpu().numpy(), epoch=progress.epoch,
                             num_clusters=pseudo.centres_rgb.num_clusters, rank=self.env.rank,
                             world_size=self.env.world_size, device=self.env.device)
        loader = self.train_pipeline.train_loader(self.dataset.train, augment_params(cfg.data, cfg.augment), plan,
                                                  progress.iter_in_epoch, cfg.data.num_workers, self.env.device)
        running: dict[str, torch.Tensor] = {}
        count = 0
        t0 = time.perf_counter()
        steps = progress_bar(loader, total=len(loader), desc=f"epoch {progress.epoch + 1}",
                             enabled=self.show_progress)
        for images_rgb, images_gray, indices in steps:
            it = progress.iter_in_epoch
            if cfg.run.debug_checks:
                check_batch_order(indices, plan.local_indices[it])
            parts = self.train_step(images_rgb, images_gray, plan.indices_dev[it], plan.local_columns,
                                    int(plan.max_repeats[it]))
            for name, value in parts.items():
                running[name] = running.get(name, 0) + value.detach()
            count += 1
            progress.step_done()
            self.checkpointer.unsaved = True
            stop = self.stop.agreed()  # every step: a CPU all-reduce, no device sync
            if (stop or progress.global_step % cfg.run.log_every == 0
                    or progress.iter_in_epoch == cfg.train.iters_per_epoch):
                self._log_losses(running, count, time.perf_counter() - t0)
                running, count, t0 = {}, 0, time.perf_counter()
            if self.checkpointer.save_due_in_epoch():
                self.save()
            if stop:
                raise StopRequested("stop requested")

    def train_step(self, images_rgb: torch.Tensor, images_gray: torch.Tensor, global_indices: torch.Tensor,
                   local_columns: slice, num_rounds: int | None = None) -> dict[str, torch.Tensor]:
        """One optimiser step on this rank's columns `local_columns` of the global batch, with the memory update.

        `global_indices` (on the device) are the dataset indices of the whole global batch, known
        from the epoch plan, so no indices travel between ranks and nothing waits for the device.
        """
        cfg, device, pseudo = self.cfg, self.env.device, self.pseudo
        images_rgb = to_input(images_rgb, device, cfg.train.channels_last)
        images_gray = to_input(images_gray, device, cfg.train.channels_last)
        with self.precision.autocast():
            x, z = self.online(images_rgb)
            x_gray = self.branch_gray(images_gray)
        labels = pseudo.labels[global_indices[local_columns]]
        parts = cacl_loss(x, z, x_gray, labels, pseudo.centres_rgb.centres(), pseudo.centres_gray.centres(),
                          tau=cfg.loss.tau, gamma=cfg.loss.focal_gamma, valid_M=pseudo.centres_rgb.valid(),
                          validate=cfg.run.debug_checks, **loss_weights(cfg.loss))
        total, camera = parts.total, {}
        if pseudo.proxies is not None:  # the camera-aware proxy losses (loss.camera_proxy_weight > 0)
            camera_total, camera = pseudo.proxies.losses(x, x_gray, labels, global_indices, local_columns,
                                                         self.progress.epoch, cfg.loss.intra_gray_weight)
            total = total + camera_total
        gathering = comm.all_gather_start(torch.cat([x, x_gray], dim=1).detach().float())
        self.optimiser.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(total)  # DDP all-reduces and the gather overlap with this
        self.update_memory(gathering.wait(), global_indices, num_rounds)
        self.precision.step(self.optimiser.optimizer)
        return {"loss": total, "instance": parts.instance, "inter": parts.inter,
                "intra_rgb": parts.intra_rgb, "intra_gray": parts.intra_gray, **camera}

    def update_memory(self, feats_G2D: torch.Tensor, indices_G: torch.Tensor, num_rounds: int | None) -> None:
        """Update the owned bank rows from the gathered [x | x~] rows, share the row deltas, move the centres.

        With `num_rounds` (the most repeats of one index in the batch) the bank update never syncs
        with the host; run.debug_checks takes the checked, data-dependent path instead.
        """
        dim, momentum = feats_G2D.shape[1] // 2, self.cfg.memory.momentum
        check = self.cfg.run.debug_checks
        rounds = None if check else num_rounds
        delta_rgb, _ = self.banks.rgb.update(indices_G, feats_G2D[:, :dim], momentum, rounds, validate=check)
        delta_gray, _ = self.banks.gray.update(indices_G, feats_G2D[:, dim:], momentum, rounds, validate=check)
        deltas = comm.all_reduce_sum(torch.cat([delta_rgb, delta_gray], dim=1))
        batch_labels = self.pseudo.labels[indices_G]
        self.pseudo.centres_rgb.apply_delta(batch_labels, deltas[:, :dim], validate=check)
        self.pseudo.centres_gray.apply_delta(batch_labels, deltas[:, dim:], validate=check)
        if self.pseudo.proxies is not None:
            self.pseudo.proxies.apply_delta(indices_G, deltas[:, :dim], deltas[:, dim:], validate=check)

    def evaluate(self) -> dict:
        """Evaluate branch 1 on query/gallery; record and return the metrics (a failure stops every rank)."""
        broadcast_bn_buffers(self.model)  # every rank extracts its shard with rank 0's running statistics
        metrics = comm.run_everywhere(lambda: evaluate(
            self.model.online.branch, self.dataset, self.extraction, rank=self.env.rank,
            world_size=self.env.world_size, options=self.eval_options), "the evaluation (scored on rank 0)")
        metrics = comm.broadcast_object(metrics, src=0, what="evaluation metrics")  # rank 0 scored them
        metrics = {"epoch": self.progress.epoch, **metrics}
        histogram, cmc = metrics.pop("distance_histogram"), metrics.pop("cmc")  # records, not checkpoint state
        self.progress.eval_history.append(metrics)
        self.checkpointer.unsaved = True
        run_log.log_evaluation(self.log, metrics)
        self.metrics.write("eval", self.progress.global_step, **metrics, cmc=cmc)
        if self.env.is_main:
            save_histogram(self.run_dir, self.progress.epoch, histogram)
        return metrics

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resumed run needs (collective call); the banks are gathered whole to rank 0 only."""
        return self.checkpointer.state_dict()

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        """Restore what `state_dict` produced: banks re-sharded for this world size, labels and centres on
        this rank's device."""
        self.checkpointer.load_state_dict(state, source)

    def save(self, keep: bool = False) -> None:
        """Checkpoint every component's state (a collective call; rank 0 writes; see Checkpointer.save)."""
        path = self.checkpointer.save(keep)
        self.log.info("checkpoint written: %s (%s)", path, self._position())

    def resume(self) -> bool:
        """Restore the run folder's last checkpoint if rank 0 finds one (every rank follows); True when resumed."""
        path = self.checkpointer.resume()
        if path is None:
            return False
        progress = self.progress
        evaluated = {h["epoch"] for h in progress.eval_history}
        self.metrics.rewind(
            lambda row: run_log.written_before_checkpoint(row, progress.global_step, progress.epoch, evaluated),
            next_step=progress.global_step + 1)  # what was recorded after the checkpoint comes again
        self.log.info("resumed from %s (%s)", path, self._position())
        return True

    def _position(self) -> str:
        return run_log.position(self.progress.epoch, self.progress.iter_in_epoch)

    def _log_losses(self, running: dict[str, torch.Tensor], count: int, seconds: float) -> None:
        names = sorted(running)
        stacked = torch.stack([running[n].float() / count for n in names])
        values = comm.all_reduce_mean(stacked).tolist()
        row = dict(zip(names, values))
        images_per_s = count * self.cfg.train.batch_size / max(seconds, 1e-9)
        lr, epoch, step = self.optimiser.lr, self.progress.epoch + 1, self.progress.iter_in_epoch
        self.metrics.write("train", self.progress.global_step, epoch=epoch, iter=step, lr=lr,
                           images_per_s=images_per_s, **row)
        if not all(math.isfinite(v) for v in values):
            raise self.checkpointer.diverged(f"non-finite loss {row}")
        run_log.log_losses(self.log, epoch, step, self.cfg.train.iters_per_epoch, row, lr, images_per_s,
                           self.eta.left(self.progress.global_step))


__all__ = ["Trainer"]
