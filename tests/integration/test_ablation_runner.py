"""benchmarks/ablation.py end to end on tiny runs: every variant and seed trained, tabulated, re-rendered."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.runs import REPO, tiny_overrides

pytestmark = pytest.mark.slow


def run_ablation(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/ablation.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_two_variants_two_seeds_then_report_only_keeps_the_numbers_and_the_notes(tmp_path, synthetic_root):
    tiny = [o for o in tiny_overrides(tmp_path / "unused", synthetic_root, **{"train.epochs": 2})
            if not o.startswith("run.")]
    out = tmp_path / "results"
    extra = [x for o in tiny for x in ("--extra-set", o)]
    result = run_ablation("--suite", "quickstart", "--seeds", "0", "1", "--variants", "cacl", "rgb_only",
                          "--jobs", "2", "--out", str(out), "--runs-dir", str(tmp_path / "runs"), *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    payload = json.loads((out / "quickstart_ablation.json").read_text())
    runs = payload["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [("cacl", 0), ("cacl", 1), ("rgb_only", 0), ("rgb_only", 1)]
    for r in runs:
        assert [p["epoch"] for p in r["curve"]] == [0, 1, 2]
        assert r["final"] == r["curve"][-1] and r["initial"] == r["curve"][0]
        assert r["best"]["mAP"] == max(p["mAP"] for p in r["curve"])
        assert r["cpu_s"] > 0 and r["threads"] == 1
        metrics = (tmp_path / "runs" / f"{r['variant']}_seed{r['seed']}" / "metrics.jsonl").read_text()
        assert f"{r['final']['mAP']}" in metrics  # read from the run itself
    # same seed, same initial weights: the evaluation before training is shared by both variants
    assert runs[0]["initial"] == runs[2]["initial"] and runs[1]["initial"] == runs[3]["initial"]
    mean = payload["summary"]["cacl"]["final_mAP"]["mean"]
    assert mean == pytest.approx((runs[0]["final"]["mAP"] + runs[1]["final"]["mAP"]) / 2)
    md = (out / "quickstart_ablation.md").read_text()
    assert f"| cacl: CACL (RGB + grayscale view) | 2 | {100 * mean:.1f} ± " in md
    assert "--extra-set train.epochs=2" in md and "2 run(s) at a time" in md

    (out / "quickstart_ablation.md").write_text(md + "\n## Notes\n\n- read by a person\n")
    again = run_ablation("--suite", "quickstart", "--report-only", "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    rewritten = (out / "quickstart_ablation.md").read_text()
    assert rewritten.startswith(md.rstrip("\n")) and rewritten.rstrip().endswith("- read by a person")
    assert json.loads((out / "quickstart_ablation.json").read_text())["runs"] == runs

    merged = run_ablation("--suite", "quickstart", "--seeds", "2", "--variants", "cacl", "--merge", "--out", str(out),
                          "--runs-dir", str(tmp_path / "runs"), *extra)
    assert merged.returncode == 0, merged.stderr[-2000:]
    payload = json.loads((out / "quickstart_ablation.json").read_text())
    assert payload["seeds"] == [0, 1, 2] and list(payload["variants"]) == ["cacl", "rgb_only"]
    assert [(r["variant"], r["seed"]) for r in payload["runs"]] == [
        ("cacl", 0), ("cacl", 1), ("cacl", 2), ("rgb_only", 0), ("rgb_only", 1)]
    assert payload["runs"][:2] == runs[:2] and payload["summary"]["cacl"]["n"] == 3
    assert "--seeds 0 1 2" in payload["command"] and "- read by a person" in (out / "quickstart_ablation.md").read_text()
    other = run_ablation("--suite", "quickstart", "--seeds", "3", "--merge", "--out", str(out),
                         "--runs-dir", str(tmp_path / "runs"), "--extra-set", "train.epochs=1")
    assert other.returncode == 1 and "was made with other settings" in other.stderr
    assert not (tmp_path / "runs" / "cacl_seed3").exists()  # refused before training


def test_unknown_variant_and_missing_data_are_one_line_errors(tmp_path):
    result = run_ablation("--suite", "quickstart", "--variants", "nope", "--out", str(tmp_path))
    assert result.returncode == 2 and "nope not in suite quickstart" in result.stderr
    result = run_ablation("--suite", "market-mini", "--data", str(tmp_path / "absent"), "--out", str(tmp_path))
    assert result.returncode == 2 and "no bounding_box_train/ folder there" in result.stderr


def test_the_vit_variant_waits_for_a_backbone_name(monkeypatch):
    """quickstart-cameras: the ViT row is left out until --vit-backbone names the backbone, then takes it."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import ablation

    monkeypatch.setitem(ablation.SUITES, "quickstart-cameras", ablation.SUITES["quickstart-cameras"])
    args = ablation.parse_args(["--suite", "quickstart-cameras"])
    assert args.variants == ["cacl", "cacl_cap", "single_cap", "single_branch"]
    with pytest.raises(SystemExit):
        ablation.parse_args(["--suite", "quickstart-cameras", "--variants", "cacl_vit"])
    args = ablation.parse_args(["--suite", "quickstart-cameras", "--vit-backbone", "vit_small_test"])
    assert args.variants[-1] == "cacl_vit"
    suite = ablation.SUITES["quickstart-cameras"]
    assert ablation.overrides_for(suite, "cacl_vit", args.data, []) == ["model.backbone=vit_small_test"]
    assert "--vit-backbone vit_small_test" in ablation.reproduce_command(args, suite)
    assert "loss.camera_proxy_weight=1" in ablation.overrides_for(suite, "single_cap", args.data, [])
