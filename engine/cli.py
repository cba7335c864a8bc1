"""The ``emote`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import __version__

DESCRIPTION = "Streaming inference engine for audio-driven portrait video diffusion (one photo + speech -> video)."


def _format_count(n: int) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,}"


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's structure and parameter counts, built on the meta device (no weights, no memory)."""
    from engine.models.checkpoint import resolve_config
    from engine.models.model import EmoteModel

    cfg = resolve_config(args.model)
    model = EmoteModel.on_meta(cfg)
    counts = model.parameter_counts()
    if args.json:
        print(json.dumps({"model": cfg.name, "parameters": counts, "total": sum(counts.values()),
                          "config": cfg.to_dict()}, indent=2))
        return 0
    u = cfg.unet
    print(f"model        {cfg.name} ({args.model})")
    print(f"resolution   {cfg.resolution}x{cfg.resolution}, latents {cfg.resolution // cfg.latent_downscale}^2 "
          f"x {u.in_channels}, {cfg.fps:g} fps, clips of {cfg.clip_frames} + {cfg.motion_frames} motion frames")
    print(f"unet         widths {list(u.block_out_channels)}, {u.layers_per_block} layers/block, "
          f"{u.num_attention_heads} heads, audio tokens {u.cross_attention_dim}-d")
    print(f"temporal     {model.backbone.num_motion_locations} motion modules, "
          f"reference bank of {model.reference_net.num_bank_layers} layers")
    print(f"audio        {cfg.audio.kind}")
    print(f"vae          {cfg.vae.kind} (scale {cfg.vae.scaling_factor})")
    print("parameters")
    for name, n in counts.items():
        print(f"  {name:<16}{_format_count(n):>14}")
    print(f"  {'total':<16}{_format_count(sum(counts.values())):>14}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emote", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="show a model's structure and parameter counts per component")
    info.add_argument("--model", default="tiny", help="preset name (tiny, sd15) or model directory (default: tiny)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"emote: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
