"""Unit tests for cacl_dist.export: TorchScript, ONNX and state-dict exports of the inference branch."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from cacl_dist.training.checkpoint import save_checkpoint
from cacl_dist.config import load_config, to_dict
from cacl_dist.cli.export import main
from cacl_dist.inference.loader import STATE_DICT_FORMAT, load_exported_branch
from cacl_dist.models.cacl import Branch, build_model

HEIGHT, WIDTH, DIM = 64, 32, 128
BATCH_SIZES = (1, 5)  # neither is the batch size the export traces with

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A resnet_tiny checkpoint (no training) and its eval-mode inference branch."""
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=resnet_tiny", "model.pretrained=none",
                             f"data.height={HEIGHT}", f"data.width={WIDTH}"])
    model = build_model("resnet_tiny")
    with torch.no_grad():  # non-trivial BN statistics, so eval mode is really exercised
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("run") / "last.pt"
    save_checkpoint(path, {"config": to_dict(cfg), "model": model.state_dict(), "epoch": 0})
    return path, model.online.branch.eval()


def _expected(branch, images):
    with torch.no_grad():
        return branch(images)


def _inputs(height=HEIGHT, width=WIDTH):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, height, width, generator=gen) for b in BATCH_SIZES]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_torchscript_export_matches_branch(tiny_run, tmp_path, capsys):
    ckpt, branch = tiny_run
    out = tmp_path / "nested" / "dir" / "branch.ts"
    assert main(["--checkpoint", str(ckpt), "--format", "torchscript", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and f"3 x {HEIGHT} x {WIDTH}" in printed and f"B x {DIM}" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["branch.ts"]  # no temporary left behind
    loaded = torch.jit.load(str(out), map_location="cpu")
    for images in _inputs():
        with torch.no_grad():
            got = loaded(images)
        assert got.shape == (images.shape[0], DIM)
        torch.testing.assert_close(got, _expected(branch, images), atol=1e-5, rtol=0)


def test_state_dict_export_rebuilds_branch(tiny_run, tmp_path, capsys):
    ckpt, branch = tiny_run
    out = tmp_path / "branch.pt"
    argv = ["--checkpoint", str(ckpt), "--format", "state_dict", "--output", str(out), "--height", "32", "--width", "16"]
    assert main(argv) == 0
    assert "3 x 32 x 16" in capsys.readouterr().out
    payload = torch.load(out, map_location="cpu", weights_only=True)  # plain tensors and metadata only
    meta = payload["meta"]
    assert meta["format"] == STATE_DICT_FORMAT
    assert (meta["backbone"], meta["pool"], meta["last_stride"], meta["dim"]) == ("resnet_tiny", "avg", 1, DIM)
    assert (meta["height"], meta["width"]) == (32, 16)
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    plain = Branch(meta["backbone"], pool=meta["pool"], last_stride=meta["last_stride"])
    plain.load_state_dict(payload["state_dict"])
    for rebuilt in (plain.eval(), load_exported_branch(out)):
        for images in _inputs(32, 16):
            torch.testing.assert_close(_expected(rebuilt, images), _expected(branch, images), atol=1e-5, rtol=0)


def test_onnx_export_matches_branch(tiny_run, tmp_path, capsys):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (optional extra: pip install onnx onnxscript)")
    ckpt, branch = tiny_run
    out = tmp_path / "branch.onnx"
    assert main(["--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # the batch axis is symbolic
    if importlib.util.find_spec("onnxruntime") is None:
        return
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for images in _inputs():
        (got,) = session.run(["features"], {"images": images.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), _expected(branch, images), atol=1e-5, rtol=0)


def test_onnx_without_packages_says_what_to_install(tiny_run, tmp_path, capsys, monkeypatch):
    ckpt, _ = tiny_run
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails, installed or not
    out = tmp_path / "branch.onnx"
    assert main(["--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out)]) == 2
    assert "pip install onnx onnxscript" in _one_line_error(capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_format_is_one_line_error(tiny_run, tmp_path, capsys):
    ckpt, _ = tiny_run
    out = tmp_path / "branch.bin"
    assert main(["--checkpoint", str(ckpt), "--format", "tflite", "--output", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "tflite" in err and "torchscript" in err and "state_dict" in err
    assert not out.exists()


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no_run" / "last.pt"
    assert main(["--checkpoint", str(missing), "--format", "torchscript", "--output", str(tmp_path / "x.ts")]) == 2
    assert str(missing) in _one_line_error(capsys)
    assert not (tmp_path / "x.ts").exists()


def test_model_override_that_does_not_fit_is_one_line_error(tiny_run, tmp_path, capsys):
    ckpt, _ = tiny_run
    argv = ["--checkpoint", str(ckpt), "--format", "state_dict", "--output", str(tmp_path / "b.pt"),
            "--set", "model.pool=gem"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert str(ckpt) in err and "model.pool=gem" in err


def test_checkpoint_with_nan_weights_is_not_exported(tiny_run, tmp_path, capsys):
    from cacl_dist.training.checkpoint import load_checkpoint

    state = load_checkpoint(tiny_run[0])
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(tmp_path / "last.pt", {k: v for k, v in state.items() if k not in ("format", "format_version")})
    out = tmp_path / "branch.ts"
    assert main(["--checkpoint", str(tmp_path / "last.pt"), "--format", "torchscript", "--output", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "NaN or infinite" in err and "last.pt" in err and not out.exists()


def test_comparison_refuses_nan_outputs():
    from cacl_dist.inference.export import _compare

    nan = torch.full((2, 3), float("nan"))
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        _compare("torchscript", nan, nan, 1e-5)


def test_torch_export_format_loads_without_deprecation_notices(tiny_run, tmp_path):
    """The 'export' format is loaded with torch.export (no TorchScript, whose loader warns on recent torch)."""
    import warnings

    ckpt, branch = tiny_run
    out = tmp_path / "branch.pt2"
    assert main(["--checkpoint", str(ckpt), "--format", "export", "--output", str(out)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        loaded = torch.export.load(str(out)).module()
    for images in _inputs():
        with torch.no_grad():
            torch.testing.assert_close(loaded(images), _expected(branch, images), atol=1e-5, rtol=0)
