"""The fault-injection cases of data loss (issue 21, items 1-5) and of a read-only synthetic set: a user's
files in the way of a command, checked byte for byte afterwards. Listed in fault_injection.CASES."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.helpers.faults import BASE, NEXT_EPOCH, Case, Lab, no_override_prefix, one_line_error
from tests.helpers.runs import REPO, run_cli, set_args
from tests.helpers.user_files import market_like, tree_bytes


def _args_on(lab: Lab, data, name: str) -> list[str]:
    """The base run's arguments on another data folder, in a new run folder."""
    return set_args(lab.folder(name), data, **BASE)


def _kept(ok_observed: tuple[bool, str], same: bool, what: str) -> tuple[bool, str]:
    ok, observed = ok_observed
    return ok and same, observed + (f"; {what} unchanged" if same else f"; {what} CHANGED")


def case_real_dataset(lab: Lab):
    data = lab.folder("Market-1501")
    before = market_like(data)
    result = run_cli("cacl_dist.train", ["--set", f"data.root={data}", f"run.output_dir={lab.folder('real')}",
                                         "run.progress=false"])  # the default recipe: data.dataset synthetic
    return _kept(one_line_error(result, str(data), "--config configs/market1501.yaml"), tree_bytes(data) == before,
                 "the dataset")


def case_other_settings(lab: Lab):
    data = lab.folder("shared_set")
    shutil.copytree(lab.data, data)
    before = tree_bytes(data)
    result = run_cli("cacl_dist.train", [*_args_on(lab, data, "other_settings"), "--set=data.synthetic.seed=7"])
    now = tree_bytes(data)
    same = all(now.get(k) == v for k, v in before.items() if k != ".synthetic.lock")
    new = sorted({k.split(os.sep)[0] for k in now if k not in before})
    return result.returncode == 0 and same, f"exit {result.returncode}; first set {'unchanged' if same else 'CHANGED'}" \
        f", new set in {', '.join(new) or 'nothing'}"


def case_extract_over_checkpoint(lab: Lab):
    run_dir = lab.copy_of_base("extract_over")
    checkpoint = run_dir / "last.pt"
    before = checkpoint.read_bytes()
    result = run_cli("cacl_dist.extract", ["--checkpoint", str(checkpoint), "--images", str(lab.data / "query"),
                                           "--output", str(checkpoint)])
    return _kept(one_line_error(result, "--checkpoint", "--output"), checkpoint.read_bytes() == before, "last.pt")


def case_search_over_image(lab: Lab):
    images = lab.folder("search_images")
    shutil.copytree(lab.data / "query", images)
    query = sorted(images.iterdir())[0]
    before = tree_bytes(images)
    result = run_cli("cacl_dist.search", ["--checkpoint", str(lab.base() / "last.pt"), "--gallery", str(images),
                                          "--query", str(query), "--output", str(query)])
    return _kept(one_line_error(result, "--query", "--output"), tree_bytes(images) == before, "the images")


def case_output_folder(lab: Lab):
    folder = lab.folder("out_folder")
    folder.mkdir()
    result = run_cli("cacl_dist.extract", ["--checkpoint", str(lab.base() / "last.pt"), "--images",
                                           str(lab.data / "query"), "--output", str(folder)])
    ok, observed = one_line_error(result, "is a folder")
    return ok and not os.listdir(folder), observed


def case_empty_output_dir(lab: Lab):
    cwd = lab.folder("cwd")
    cwd.mkdir()
    (cwd / "config.yaml").write_text("my own config\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = [a for a in _args_on(lab, lab.data, "unused") if not a.startswith("--set=run.output_dir=")]
    result = subprocess.run([sys.executable, "-m", "cacl_dist.train", *args, "--set=run.output_dir="], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=600)
    return _kept(one_line_error(result, "run.output_dir", "empty"),
                 tree_bytes(cwd) == {"config.yaml": b"my own config\n"}, "the current folder")


def case_output_in_data(lab: Lab):
    data = lab.folder("data_with_runs")
    shutil.copytree(lab.data, data)
    before = tree_bytes(data)
    result = run_cli("cacl_dist.train", _args_on(lab, data, "unused") + [f"--set=run.output_dir={data / 'run'}"])
    return _kept(one_line_error(result, "run.output_dir", "inside data.root"), tree_bytes(data) == before,
                 "data.root")


def case_fresh_start(lab: Lab):
    from cacl_dist.runs.metrics import read_metrics

    run_dir = lab.copy_of_base("fresh_start")
    (run_dir / "last.pt").unlink()
    earlier = (run_dir / "metrics.jsonl").read_bytes()
    result = run_cli("cacl_dist.train", lab.args(run_dir, **BASE, **{"train.iters_per_epoch": 2}))
    kept = list((run_dir / "previous_runs").glob("*/metrics.jsonl")) if (run_dir / "previous_runs").is_dir() else []
    steps = [r["step"] for r in read_metrics(run_dir, "train")]
    ok = result.returncode == 0 and len(kept) == 1 and kept[0].read_bytes() == earlier and steps == [1, 2]
    where = f"kept in {kept[0].parent.relative_to(run_dir)}" if kept else "not kept"
    return ok, f"exit {result.returncode}; earlier metrics {where}; new run's train steps {steps}"


def case_fewer_epochs(lab: Lab):
    run_dir = lab.copy_of_base("fewer_epochs")
    first = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH))  # a finished 2-epoch run
    if first.returncode != 0:
        return False, f"the 2-epoch run failed: {first.stderr[-150:]}"
    before = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "last.pt")}
    result = run_cli("cacl_dist.train", lab.args(run_dir, **BASE))
    after = {name: (run_dir / name).read_bytes() for name in before}
    return _kept(one_line_error(result, "train.epochs=1"), after == before, "config.yaml, metrics, last.pt")


def case_read_only_synthetic(lab: Lab):
    prefix = no_override_prefix()
    data = lab.folder("read_only_set")
    shutil.copytree(lab.data, data)
    modes = []
    for dirpath, dirnames, filenames in os.walk(data):
        for name in [*dirnames, *filenames, ""]:
            modes.append(os.path.join(dirpath, name))
    for path in modes:
        os.chmod(path, os.stat(path).st_mode & ~0o222)
    try:
        result = run_cli("cacl_dist.train", _args_on(lab, data, "read_only_run"), prefix=prefix)
    finally:
        for path in modes:
            os.chmod(path, os.stat(path).st_mode | 0o200)
    lines = result.stderr.strip().splitlines()
    return result.returncode == 0, f"exit {result.returncode}" + (f": {lines[-1][:150]}" if result.returncode else "")


CASES = [
    Case("real_dataset", "default recipe (synthetic) with data.root on a real dataset: one line suggesting "
         "--config, the dataset byte for byte unchanged", case_real_dataset),
    Case("other_settings", "other data.synthetic.* on a set in use: a new set folder, the first set unchanged",
         case_other_settings),
    Case("extract_over_checkpoint", "extract --output = the checkpoint: one line, last.pt unchanged",
         case_extract_over_checkpoint),
    Case("search_over_image", "search --output = the query image: one line, the images unchanged",
         case_search_over_image),
    Case("output_folder", "extract --output = a folder: one line before any work", case_output_folder),
    Case("empty_output_dir", "run.output_dir empty: one line naming it, the current folder unchanged",
         case_empty_output_dir),
    Case("output_in_data", "run.output_dir inside data.root: one line naming it, data.root unchanged",
         case_output_in_data),
    Case("fresh_start", "last.pt deleted, same folder: the earlier records moved to previous_runs/, not mixed",
         case_fresh_start),
    Case("fewer_epochs", "a finished 2-epoch run started with train.epochs=1: one line, nothing rewritten",
         case_fewer_epochs),
    Case("read_only_synthetic", "a complete synthetic set on a read-only folder: trains (no lock file needed)",
         case_read_only_synthetic),
]
