import torch

from cacl_dist.data.layouts import load_dataset
from cacl_dist.data.synthetic import generate_synthetic
from cacl_dist.evaluation.extract import ExtractionSettings, extract_all, extract_shard
from cacl_dist.models.cacl import Branch

from tests.helpers.gloo import run_gloo

SETTINGS = ExtractionSettings(height=64, width=32, batch_size=7, num_workers=0, device=torch.device("cpu"))


def _branch() -> Branch:
    torch.manual_seed(0)
    return Branch("resnet_tiny").eval()


def _extract(rank, world_size, root):
    records = load_dataset("synthetic", root).train
    return extract_all(_branch(), records, SETTINGS, rank=rank, world_size=world_size)


def test_sharded_extraction_equals_one_process(tmp_path):
    root = generate_synthetic(str(tmp_path / "data"), num_train_ids=5, num_test_ids=2, images_per_id=5,
                              num_cameras=2, height=64, width=32)  # 25 images: shards of 9, 8, 8
    records = load_dataset("synthetic", root).train
    single = extract_shard(_branch(), records, 0, len(records), SETTINGS)
    results = run_gloo(_extract, 3, root)
    for gathered in results:
        assert gathered.shape == (25, 128)  # exactly one row per image, no padding repeats
        torch.testing.assert_close(gathered, single, atol=1e-5, rtol=0)


def _stop_on_rank0(rank, world_size, root):
    import dataclasses

    from cacl_dist.distributed import comm
    from cacl_dist.training.stopping import StopRequested

    records = load_dataset("synthetic", root).train
    settings = dataclasses.replace(SETTINGS, should_stop=lambda: rank == 0)
    try:
        extract_all(_branch(), records, settings, rank=rank, world_size=world_size)
        outcome = "finished"
    except StopRequested:
        outcome = "stopped"
    return outcome, comm.any_rank(outcome == "stopped")  # the next collective matches on every rank


def test_a_stop_inside_extraction_still_joins_the_gather(tmp_path):
    """Rank 0 is asked to stop between batches, rank 1 is not: rank 0 raises only after the gather, so both
    reach the next collective and agree to stop there (nothing hangs or mismatches)."""
    root = generate_synthetic(str(tmp_path / "data"), num_train_ids=5, num_test_ids=2, images_per_id=5,
                              num_cameras=2, height=64, width=32)
    assert run_gloo(_stop_on_rank0, 2, root, pg_timeout=30) == [("stopped", True), ("finished", True)]
