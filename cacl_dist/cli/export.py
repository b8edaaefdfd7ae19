"""Export the inference branch of a checkpoint: `python -m cacl_dist.export --checkpoint RUN/last.pt ...`.

    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format export --output market.pt2
    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format torchscript --output market.ts
    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format onnx --output market.onnx
    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format state_dict --output branch.pt

Only branch 1 (the online branch F, the one evaluation uses) is exported: it maps images
B x 3 x H x W, RGB in [0, 1] normalised with the ImageNet mean/std, to L2-normalised features
B x D. The batch size is dynamic; H x W default to the run's data.height x data.width.

  export       torch.export.export in eval mode, saved with torch.export.save (load with
               torch.export.load(path).module()); the current PyTorch format
  torchscript  torch.jit.trace in eval mode, saved with torch.jit.save (load with torch.jit.load; recent
               torch versions deprecate TorchScript and warn when it is loaded: prefer 'export')
  onnx         torch.onnx.export, input "images", output "features", dynamic batch axis
               (needs `pip install onnx onnxscript`; verified with onnxruntime when installed)
  state_dict   torch.save({"state_dict": ..., "meta": {...}}); rebuild it with
               cacl_dist.inference.loader.load_exported_branch(path)

extract, search, evaluate and visualize read every format but ONNX (--checkpoint FILE).

The run's own config (stored in the checkpoint) is used unless --config is given; --set adjusts
either. The written file is reloaded and checked against the original branch on a batch of another
size before it replaces OUTPUT (temporary file + rename).
"""

from __future__ import annotations

import argparse
import sys

from cacl_dist.errors import UserError
from cacl_dist.cli.common import add_config_args, print_config_if_asked, run_main
from cacl_dist.cli.outputs import check_output
from cacl_dist.inference.export import (FORMATS, branch_metadata, export_onnx, export_program, export_state_dict,
                                        export_torchscript)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a cacl_dist checkpoint, e.g. runs/x/last.pt")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True, help="file to write (parent folders are created)")
    add_config_args(parser, default_config=False)
    parser.add_argument("--height", type=int, default=None, help="input height (default: data.height)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: data.width)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip reloading the written file and comparing its outputs with the branch")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if print_config_if_asked(args, checkpoint=args.checkpoint):
            return 0
        if args.format not in FORMATS:
            raise UserError(f"unknown export format '{args.format}'; choose one of {', '.join(FORMATS)}")
        output = check_output(args.output, [("--checkpoint", args.checkpoint), ("--config", args.config)],
                              "model.onnx")

        from cacl_dist.training.checkpoint import load_trained_model

        state, cfg, model = load_trained_model(args.checkpoint, args.config, args.overrides)
        height = cfg.data.height if args.height is None else args.height
        width = cfg.data.width if args.width is None else args.width
        if height <= 0 or width <= 0:
            raise UserError(f"--height and --width must be positive, got {height} x {width}")

        branch = model.inference_branch().cpu().eval()
        dim = branch.dim
        del model

        note = "verified: outputs reloaded and compared" if args.verify else "not verified"
        if args.format == "export":
            export_program(branch, output, height, width, verify=args.verify)
        elif args.format == "torchscript":
            export_torchscript(branch, output, height, width, verify=args.verify)
        elif args.format == "onnx":
            note = export_onnx(branch, output, height, width, verify=args.verify)
        else:
            export_state_dict(branch, output, branch_metadata(cfg, dim, height, width), verify=args.verify)
        print(f"wrote {args.format} {output} ({output.stat().st_size / 2**20:.1f} MiB; {note}): "
              f"branch 1 of {cfg.model.backbone} from {args.checkpoint} (epoch {state.get('epoch', '?')})")
        print(f"  input  images   B x 3 x {height} x {width}, RGB in [0, 1] normalised with ImageNet mean/std; "
              "batch size B is dynamic")
        print(f"  output features B x {dim}, L2-normalised")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
