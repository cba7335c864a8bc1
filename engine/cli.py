"""The ``emote`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine import DEFAULT_MODEL, __version__
from engine.allocator import tune_allocator
from engine.backends import BACKENDS, LIVE_CPU_BACKEND, live_backend
from engine.limits import CLIP_FRAMES_LIMITS, FPS_LIMITS, GUIDANCE_LIMITS, SIDE_LIMITS, STEPS_LIMITS, THREADS_LIMITS
from engine.options import NOISE_MODES, SAMPLER_NAMES, SCHEDULES

if TYPE_CHECKING:
    from engine.options import GenerationOptions
    from engine.pipeline import StreamRequest

MODEL_HELP = (f"a shipped model's name ({DEFAULT_MODEL}), a model directory, or a preset with random weights "
              f"(tiny, sd15) (default: {DEFAULT_MODEL})")
DESCRIPTION = "Streaming inference engine for audio-driven portrait video diffusion (one photo + speech -> video)."


def bounded(kind: type[int] | type[float], low: float, high: float, multiple_of: int = 1) -> Callable[[str], float]:
    """An argparse ``type``: a number of ``kind`` in [``low``, ``high``] (finite), a multiple of ``multiple_of``.

    Anything else is a usage error that argparse reports naming the flag (exit 2).
    """
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not low <= value <= high or (multiple_of > 1 and value % multiple_of):
            extra = f", a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise argparse.ArgumentTypeError(f"must be {kind(low)} to {kind(high)}{extra}, got {text}")
        return value

    return parse


SIZE = bounded(int, *SIDE_LIMITS, multiple_of=8)
CLIP_FRAMES = bounded(int, *CLIP_FRAMES_LIMITS)
STEPS = bounded(int, *STEPS_LIMITS)
THREADS = bounded(int, *THREADS_LIMITS)
SEED = bounded(int, 0, 2**63 - 1)
FPS = bounded(float, *FPS_LIMITS)
GUIDANCE = bounded(float, *GUIDANCE_LIMITS)
LAG_S = bounded(float, 0, 3600)
SHARE = bounded(float, 0, 1)


def _format_count(n: int) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,}"


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's structure and parameter counts, built on the meta device (no weights, no memory)."""
    from engine.importers.provenance import format_provenance, read_provenance
    from engine.models.checkpoint import model_directory, resolve_config
    from engine.models.model import EmoteModel

    cfg = resolve_config(args.model)
    model = EmoteModel.on_meta(cfg)
    counts = model.parameter_counts()
    directory = model_directory(args.model)
    provenance = read_provenance(directory) if directory is not None else None
    if args.json:
        print(json.dumps({"model": cfg.name, "parameters": counts, "total": sum(counts.values()),
                          "config": cfg.to_dict(), "provenance": provenance}, indent=2))
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
    for line in format_provenance(provenance) if provenance else []:
        print(line)
    print("parameters")
    for name, n in counts.items():
        print(f"  {name:<16}{_format_count(n):>14}")
    print(f"  {'total':<16}{_format_count(sum(counts.values())):>14}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import Hallo / EchoMimic checkpoint files into a model directory; print what was mapped and dropped."""
    import torch

    from engine.importers.run import import_model

    report = import_model(args.system, Path(args.src), Path(args.out), variant=args.variant,
                          allow_unknown=args.allow_unknown, allow_missing=args.allow_missing,
                          dtype={"float32": torch.float32, "float16": torch.float16}[args.dtype])
    print("\n".join(report.lines()))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Photo + speech -> MP4 with the speech muxed in."""
    from engine.pipeline import GenerateRequest, generate

    _check_device(args.device)
    request = _request(GenerateRequest, args, _generation_options(args), offline=True,
                       audio=Path(args.audio))
    result = generate(request, progress=not args.quiet)
    rate = result.wall_seconds / max(result.media_seconds, 1e-9)
    print(f"wrote {result.out} ({result.frames} frames, {result.media_seconds:.2f} s of video) in "
          f"{result.wall_seconds:.1f} s ({rate:.2f} s per second of video)")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Frames out as audio comes in, from the microphone, a (paced) file or raw PCM on stdin."""
    from engine.pipeline import StreamRequest, stream
    from engine.stream.runner import LagPolicy
    from engine.stream.sources import FileSource, MicrophoneSource, StdinPcmSource

    _check_device(args.device)
    if args.mic:
        device = int(args.input_device) if args.input_device and args.input_device.isdigit() else args.input_device
        source = MicrophoneSource(device=device)
    elif args.audio:
        source = FileSource(args.audio, realtime=args.realtime)
    else:
        source = StdinPcmSource(args.stdin_pcm)
    if args.backend is None:  # a file is not a live source: eager torch, as generate
        args.backend = BACKENDS[0] if args.audio else live_backend(None, args.device)
    request = _request(StreamRequest, args, _generation_options(args, idle_steps=args.idle_steps), offline=False,
                       policy=LagPolicy(args.policy, max_lag_s=args.max_lag), always_on=args.always_on)
    stats = stream(request, source, live_status=not args.quiet)
    print(stats.table())
    print(f"wrote {args.out}")
    return 0


def _check_device(device: str) -> None:
    """Refuse ``--device cuda[:N]`` on a machine without CUDA (ValueError: one line, exit 2)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")


def _generation_options(args: argparse.Namespace, **extra: Any) -> GenerationOptions:
    """The :class:`~engine.options.GenerationOptions` of the flags :func:`_add_generation_flags` added, with
    ``extra`` fields (a command's own flags) on top."""
    from engine.options import GenerationOptions

    return GenerationOptions(steps=args.steps, sampler=args.sampler, cfg_audio=args.cfg_audio, cfg_ref=args.cfg_ref,
                             seed=args.seed, head_speed=args.head_speed, clip_frames=args.clip,
                             first_clip_frames=args.first_clip, schedule=args.schedule, group_frames=args.group,
                             motion_anchor=args.motion_anchor, noise=args.noise,
                             reproduce=not args.no_reproduce, **extra)


def _request(kind: type[StreamRequest], args: argparse.Namespace, options: GenerationOptions, offline: bool,
             **extra: Any) -> StreamRequest:
    """The request of type ``kind`` (a :class:`~engine.pipeline.StreamRequest`) that ``generate`` / ``stream``
    flags ask for, generating with ``options``, with ``extra`` fields on top; notes on stderr when the model is
    an untrained preset, falls back where an input is missing, or is an imported one (what the run reproduces
    of its system's pipeline, ``offline`` for ``generate``, and what it approximates)."""
    from dataclasses import replace

    from engine.faces import FaceBox
    from engine.importers.provenance import fallback_note
    from engine.models.checkpoint import resolve_config
    from engine.pipeline import is_untrained_preset, reproduction_note, supplied_inputs

    request = kind(
        image=Path(args.image), out=Path(args.out), model=args.model, size=args.size, fps=args.fps,
        face_box=FaceBox.parse(args.face_box) if args.face_box else None,
        on_missing_face="error" if args.require_face else "center",
        face_embedding=Path(args.face_embedding) if args.face_embedding else None,
        face_mask=Path(args.face_mask) if args.face_mask else None,
        lip_mask=Path(args.lip_mask) if args.lip_mask else None,
        region_weights=(args.pose_weight, args.face_weight, args.lip_weight),
        png_dir=Path(args.png_dir) if args.png_dir else None, device=args.device, backend=args.backend,
        threads=args.threads, options=options, **extra)
    if is_untrained_preset(args.model):
        print(f"note: model '{args.model}' is a preset with seeded random weights: its frames are not a face",
              file=sys.stderr)
    fallbacks = fallback_note(Path(args.model), supplied=supplied_inputs(request))
    if fallbacks:
        print(fallbacks, file=sys.stderr)
    config = resolve_config(args.model)
    reproduced = reproduction_note(config if args.fps is None else replace(config, fps=args.fps), options,
                                   offline=offline)
    if reproduced:
        print(reproduced, file=sys.stderr)
    return request


def cmd_serve(args: argparse.Namespace) -> int:
    """The live avatar server: a page streams microphone audio, frames come back (engine/serve)."""
    from engine.serve.app import run_server
    from engine.serve.hub import ServeConfig
    from engine.stream.runner import LagPolicy

    if not args.ray:  # with --ray the replicas' nodes have the GPUs
        _check_device(args.device)
    config = ServeConfig(
        host=args.host, port=args.port, model=args.model, device=args.device,
        backend=live_backend(args.backend, args.device), threads=args.threads, max_sessions=args.max_sessions,
        token=_serve_token(args),
        allowed_hosts=tuple(name.lower() for name in args.allowed_host), open_server=args.open_server,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), size=args.size,
        max_pending_uploads=args.max_pending_uploads,
        max_pending_uploads_per_client=args.max_pending_uploads_per_client,
        options=_generation_options(args, idle_steps=args.idle_steps),
        policy=LagPolicy(args.policy, max_lag_s=args.max_lag), batch_gather_ms=args.batch_ms,
        webrtc=args.webrtc, ice_servers=tuple(args.ice_server))
    if args.ice_server and not args.webrtc:
        raise ValueError("--ice-server needs --webrtc")
    if args.webrtc:
        if args.ray:
            raise ValueError("--webrtc is served by the plain server only, not with --ray")
        try:
            import aiortc  # noqa: F401  (an optional extra: fail now, in one line, not at the first offer)
        except ImportError as exc:
            raise ValueError(f"--webrtc needs aiortc: pip install -e '.[webrtc]' ({exc})") from None
    if config.exposure_error() is not None:
        raise ValueError(config.exposure_error())
    if not args.ray and (args.autoscale is not None or args.replicas is not None or args.address is not None):
        raise ValueError("--replicas, --autoscale and --address need --ray")
    if args.ray:
        try:
            from engine.serve.ray_app import parse_autoscale, run_ray_server
        except ImportError as exc:
            raise ValueError(f"--ray needs ray[serve]: pip install -e '.[ray]' ({exc})") from None
        autoscale = parse_autoscale(args.autoscale) if args.autoscale is not None else None
        run_ray_server(config, replicas=1 if args.replicas is None else args.replicas, address=args.address,
                       replica_cpus=args.replica_cpus, autoscale=autoscale)
        return 0
    run_server(config)
    return 0


def _serve_token(args: argparse.Namespace) -> str | None:
    """The access token: ``--token``, else the first line of ``--token-file``, else ``$EMOTE_TOKEN``, else None."""
    if args.token is not None:
        return args.token
    if args.token_file is not None:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {args.token_file}: cannot read it ({exc.__class__.__name__})") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"--token-file {args.token_file}: the first line is empty")
        return lines[0].strip()
    return os.environ.get("EMOTE_TOKEN") or None


def _add_model_flags(parser: argparse.ArgumentParser, size_help: str, live: str | None = None) -> None:
    """The model, where and how its networks run, and the portrait side (``size_help``: the flag's help; ``live``:
    for a live process, whose backend default is :func:`engine.backends.live_backend`'s, the help's words on when
    ("" always, " with --mic"); None: the default is the first of the backends)."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    default = BACKENDS[0] if live is None else f"{LIVE_CPU_BACKEND} on the CPU{live}, else {BACKENDS[0]}"
    parser.add_argument("--backend", default=BACKENDS[0] if live is None else None, choices=BACKENDS,
                        help=f"how the networks run (default: {default}; see README, Backends)")
    parser.add_argument("--threads", type=THREADS, default=None,
                        help="CPU: intra-op threads the networks run with (default: OMP_NUM_THREADS, else every "
                             "core); 1 is the robust choice beside other busy processes")
    parser.add_argument("--size", type=SIZE, default=None, help=size_help)


def _add_generation_flags(parser: argparse.ArgumentParser, first_clip: int | None = None) -> None:
    """The flags of :func:`_generation_options` (``first_clip``: the default of ``--first-clip``; None: --clip)."""
    parser.add_argument("--steps", type=STEPS, default=None,
                        help="sampler steps per clip, 1-50 (default: the model's, else 4)")
    parser.add_argument("--sampler", default=None, choices=SAMPLER_NAMES,
                        help="sampler (default: the model's, else ddim)")
    parser.add_argument("--cfg-audio", type=GUIDANCE, default=None,
                        help="audio guidance scale, 1 = off (default: the model's, else 1)")
    parser.add_argument("--cfg-ref", type=GUIDANCE, default=None,
                        help="reference guidance scale, 1 = off (default: the model's, else 1)")
    parser.add_argument("--head-speed", type=bounded(float, -20, 20), default=0.0,
                        help="head rotation speed, rad/s (default: 0)")
    parser.add_argument("--clip", type=CLIP_FRAMES, default=None, help="frames per clip (default: the model's)")
    parser.add_argument("--first-clip", type=CLIP_FRAMES, default=first_clip,
                        help=f"frames in the first clip (default: {first_clip or '--clip'})")
    parser.add_argument("--schedule", default=SCHEDULES[0], choices=SCHEDULES,
                        help="clip: each clip through all steps; rolling: groups at staggered noise levels, "
                             "one backbone call per group (default: clip)")
    parser.add_argument("--group", type=CLIP_FRAMES, default=2,
                        help="frames per group of the rolling schedule (default: 2)")
    parser.add_argument("--seed", type=SEED, default=0,
                        help="noise seed; same seed + same inputs = same video (default: 0)")
    parser.add_argument("--motion-anchor", type=SHARE, default=None, metavar="SHARE",
                        help="drift guard, 0-1: how far the motion frames are pulled back toward the reference "
                             "image's features at each clip, so the face does not drift over a long stream "
                             "(0 = off; default: the model's, talking64: 0.5, else off)")
    parser.add_argument("--noise", default=None, choices=NOISE_MODES,
                        help="clip: each clip starts from noise of its own; session: every clip from the same noise, "
                             "which hides the clip seams (default: the model's, talking64: session, else clip)")
    parser.add_argument("--no-reproduce", action="store_true",
                        help="imported models: run the engine's own audio windows, reference bank, motion frames and "
                             "clips instead of what the system's own pipeline does (default: reproduce it)")


def _add_idle_steps_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--idle-steps`` (:attr:`~engine.options.GenerationOptions.idle_steps`), ``what`` leading its help."""
    parser.add_argument("--idle-steps", type=STEPS, default=1, help=f"{what} (at most --steps; default: 1)")


def _add_video_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of :func:`_request` that are not the model's or the generation's: outputs, frame rate, face."""
    parser.add_argument("--out", required=True, help="output .mp4 path")
    parser.add_argument("--png-dir", default=None, help="also write the frames as PNG files into this directory")
    parser.add_argument("--fps", type=FPS, default=None, help="video frame rate (default: the model's, 25)")
    parser.add_argument("--face-box", default=None, metavar="X0,Y0,X1,Y1", help="face box in photo pixels")
    parser.add_argument("--face-embedding", default=None, metavar="NPY",
                        help="Hallo models: the face's embedding (insightface's 512-d 'embedding', saved with "
                             "numpy.save) (default: a zero embedding)")
    parser.add_argument("--face-mask", default=None, metavar="PATH",
                        help="Hallo models, with --lip-mask: face region mask over the photo (PNG or .npy, the "
                             "photo's size, as Hallo's get_mask draws it) (default: made from the face box)")
    parser.add_argument("--lip-mask", default=None, metavar="PATH",
                        help="Hallo models, with --face-mask: lip region mask over the photo (PNG or .npy)")
    for region, part in (("pose", "the rest of the image (head pose)"), ("face", "the face"), ("lip", "the lips")):
        parser.add_argument(f"--{region}-weight", type=float, default=None,
                            help=f"Hallo models: weight of the audio on {part} (default: the model's; Hallo's 1)")
    parser.add_argument("--require-face", action="store_true", help="fail when no face is detected")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


OUTPUT_SIZE_HELP = "output side in pixels, a multiple of 8, 32-2048 (default: the model's)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emote", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="show a model's structure and parameter counts per component")
    info.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
    imp = sub.add_parser("import", help="import Hallo / EchoMimic v1 checkpoint files into a model directory")
    imp.add_argument("--from", dest="system", required=True, choices=["hallo", "echomimic"], help="source system")
    imp.add_argument("--src", required=True, help="folder with the system's files (or its pretrained_models / "
                                                  "pretrained_weights folder)")
    imp.add_argument("--out", required=True, help="model directory to write")
    imp.add_argument("--variant", default="standard", help="echomimic: standard or acc (accelerated weights)")
    imp.add_argument("--allow-unknown", action="store_true", help="drop source keys no table row places")
    imp.add_argument("--allow-missing", action="store_true", help="keep initial values for keys no file fills")
    imp.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="weights dtype written")
    imp.set_defaults(func=cmd_import)
    gen = sub.add_parser("generate", help="photo + speech file -> talking-head MP4 (H.264 + AAC)")
    gen.add_argument("--image", required=True, help="portrait photo (any common format)")
    gen.add_argument("--audio", required=True, help="speech (any format PyAV reads)")
    _add_video_flags(gen)
    _add_model_flags(gen, OUTPUT_SIZE_HELP)
    _add_generation_flags(gen)
    gen.set_defaults(func=cmd_generate)
    live = sub.add_parser("stream", help="frames out as audio comes in (microphone, paced file, stdin PCM)")
    live.add_argument("--image", required=True, help="portrait photo (any common format)")
    where = live.add_mutually_exclusive_group(required=True)
    where.add_argument("--mic", action="store_true", help="read the microphone (sounddevice / PortAudio)")
    where.add_argument("--audio", help="read an audio file")
    where.add_argument("--stdin-pcm", type=bounded(int, 8000, 192000), metavar="RATE",
                       help="raw s16le mono PCM at RATE Hz on stdin")
    live.add_argument("--input-device", default=None, help="microphone index or name (default: the system's)")
    live.add_argument("--realtime", action="store_true", help="pace --audio at real time (as a live source)")
    _add_video_flags(live)
    live.add_argument("--policy", default="grow", choices=["grow", "skip", "steps"],
                      help="when generation falls behind: let latency grow, skip clips, or use fewer steps")
    live.add_argument("--max-lag", type=LAG_S, default=1.0, help="seconds of lag before --policy acts (default: 1)")
    live.add_argument("--always-on", action="store_true",
                      help="frames at the video's fps even while no audio arrives (idle motion in the pauses of "
                           "--mic or --stdin-pcm, e.g. a TTS that writes in bursts); the MP4's sound keeps the pauses")
    _add_idle_steps_flag(live, "with --always-on: sampler steps of a clip made from silence")
    _add_model_flags(live, OUTPUT_SIZE_HELP, live=" with --mic or --stdin-pcm")
    _add_generation_flags(live)
    live.set_defaults(func=cmd_stream)
    serve = sub.add_parser("serve", help="live avatar web server: talk in the browser, watch the face answer")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    _add_model_flags(serve, "portrait side in pixels, a multiple of 8, 32-2048 (default: the model's)", live="")
    _add_generation_flags(serve, first_clip=4)
    _add_idle_steps_flag(serve, "sampler steps of a clip made from silence in an always-on session")
    serve.add_argument("--max-sessions", "--sessions-per-replica", dest="max_sessions", type=int, default=4,
                       help="sessions at once (with --ray: per replica); more are refused (default: 4)")
    secret = serve.add_mutually_exclusive_group()
    secret.add_argument("--token", default=None,
                        help="access token the page must give (visible in ps: prefer --token-file or "
                             "$EMOTE_TOKEN) (default: $EMOTE_TOKEN if set, else none)")
    secret.add_argument("--token-file", default=None, metavar="PATH",
                        help="read the access token from the first line of PATH")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name the server answers to besides localhost, 127.0.0.1 and [::1] on a "
                            "loopback bind (on another bind: when given, the only names) (repeatable)")
    serve.add_argument("--open-server", action="store_true",
                       help="accept a non-loopback --host without a token (anyone who reaches the port may "
                            "start sessions); refused otherwise")
    serve.add_argument("--policy", default="skip", choices=["grow", "skip", "steps"],
                       help="when generation falls behind: let latency grow, skip clips, or use fewer steps "
                            "(default: skip)")
    serve.add_argument("--max-lag", type=LAG_S, default=1.0, help="seconds of lag before --policy acts (default: 1)")
    serve.add_argument("--webrtc", action="store_true",
                       help="also serve WebRTC (the page's microphone in, video and voice out as media tracks; "
                            "needs the webrtc extra); the WebSocket stays")
    serve.add_argument("--ice-server", action="append", default=[], metavar="URL",
                       help="with --webrtc: a STUN or TURN server (stun:host:port) for clients beyond this "
                            "machine's networks (repeatable; default: none, host candidates only)")
    serve.add_argument("--ray", action="store_true",
                       help="serve on Ray Serve: replicas each holding one model (needs the ray extra)")
    scaling = serve.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=bounded(int, 1, 1024), default=None,
                         help="with --ray: replicas, one GPU each on cuda (default: 1)")
    scaling.add_argument("--autoscale", default=None, metavar="MIN..MAX",
                         help="with --ray: let Serve's autoscaler run MIN to MAX replicas (e.g. 1..4), adding "
                              "one when replicas are 3/4 full")
    serve.add_argument("--address", default=None,
                       help="with --ray: the Ray cluster to join (e.g. auto; default: start a local one)")
    serve.add_argument("--replica-cpus", type=bounded(float, 0.01, 1024), default=1.0,
                       help="with --ray on a CPU: CPUs per replica (default: 1)")
    serve.add_argument("--batch-ms", type=float, default=None, metavar="MS",
                       help="batch the sessions' backbone calls, each batch waiting at most MS for sessions "
                            "with nothing pending (default: off; on a CPU it is slower, see README)")
    serve.add_argument("--max-upload-mb", type=bounded(float, 0.01, 1024), default=10.0,
                       help="largest portrait upload in MiB (default: 10)")
    serve.add_argument("--max-pending-uploads", type=bounded(int, 1, 1024), default=8, metavar="N",
                       help="portrait uploads announced and not yet received, at once; they hold no session slot "
                            "(default: 8)")
    serve.add_argument("--max-pending-uploads-per-client", type=bounded(int, 1, 1024), default=2, metavar="N",
                       help="of those, from one client address (an IPv6 /64 counts as one) (default: 2)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    tune_allocator()  # the process's allocator settings, once, at its start (engine.allocator)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"emote: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emote: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
