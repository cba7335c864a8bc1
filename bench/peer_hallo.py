"""Hallo's side of ``python -m bench.peer``, run with the peer environment's python (``bench/peer_env.py``).

It imports nothing of the engine: only torch, Hallo's packages and Hallo's own code (``PYTHONPATH`` is the
environment's ``stubs`` then its ``hallo`` checkout). Two commands:

    python bench/peer_hallo.py tree --size tiny --out TREE
        A checkpoint tree in Hallo's layout (``TREE/pretrained_models/...``), made by Hallo's own classes at
        the widths of :data:`SIZES`, every tensor redrawn at random (seeded): a network's cost does not
        depend on its weights. ``TREE/peer-tree.json`` records the size.
    python bench/peer_hallo.py run --tree TREE --inputs DIR --steps 40 --cfg 3.5 --threads 1 [--warmup]
        Hallo's ``scripts/inference.py`` (``inference_process``) on ``DIR/portrait.png`` and ``DIR/speech.wav``,
        its config ``configs/inference/default.yaml`` with the tree's paths, the size, steps and CFG scale;
        prints one JSON line with the frames and seconds.

What ``run`` times: the generation, from the decoded inputs to the video tensor, which is Hallo's image
preprocessing (face box, embedding and region masks), its audio preprocessing (wav2vec2 over the whole
utterance) and every clip (audio projection, ReferenceNet, face locator, the DDIM loop with CFG, VAE
decoding); not the process start, not the model loading between them, not the video file (its
``tensor_to_video`` is replaced by the timer's stop). ``--warmup`` first runs each of those once untimed (the
audio preprocessing, and one 1-step pipeline call on the first clip).

Harness choices, beside the stand-ins of ``bench/peer_stubs`` (written here so that the report can cite them):
the stand-in face analysis returns the face box and embedding of ``DIR/face.json`` / ``DIR/face_embedding.npy``;
Hallo's ``get_landmark`` (mediapipe's landmarker, a downloaded model) returns 478 fixed points on an ellipse
inside the face box, the lip points on a smaller one below its centre, so that Hallo's own ``get_mask`` draws
the masks; its ``resample_audio`` (ffmpeg) copies the file, which is already 16 kHz mono; its
``AudioProcessor`` runs on the CPU when CUDA is absent (its default is ``cuda:0``); ``ReferenceAttentionControl``
hands the reference bank over in the run's dtype (its default, fp16, is Hallo's own dtype on a GPU); at the
reduced width, the three modules ``inference.py`` builds with SD1.5 sizes (audio projection, image
projection, face locator) get the tree's sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import wave
from pathlib import Path

SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
"""Stable Diffusion 1.5's UNet (the base Hallo inflates)."""
SD15_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 256, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
"""sd-vae-ft-mse."""

SIZES = {
    "sd15": {
        "resolution": 512,
        "unet": SD15_UNET,
        "vae": SD15_VAE,
        "wav2vec": {},  # transformers' Wav2Vec2Config defaults are wav2vec2-base's sizes
        "face_locator": {"conditioning_embedding_channels": 320},
        "face_embedding_dim": 512, "image_tokens": 4,
        "audio_intermediate": 512, "audio_dim": 768, "audio_tokens": 32,
    },
    "tiny": {
        "resolution": 128,
        "unet": dict(SD15_UNET, attention_head_dim=4, block_out_channels=[32, 32, 64, 64], cross_attention_dim=24,
                     norm_num_groups=8, sample_size=16),
        "vae": dict(SD15_VAE, block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4,
                    sample_size=128),
        "wav2vec": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
                    "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
        "face_locator": {"conditioning_embedding_channels": 32, "block_out_channels": [4, 8, 8, 16]},
        "face_embedding_dim": 16, "image_tokens": 4,
        "audio_intermediate": 32, "audio_dim": 20, "audio_tokens": 4,
    },
}
"""The trees ``tree`` writes: ``sd15`` at Hallo's released shapes (512 x 512); ``tiny`` at the reduced widths of
the engine's Hallo import tests (128 x 128, the same shapes as their checkpoint layout)."""


def randomised(state: dict, seed: int) -> dict:
    """Every floating tensor of ``state`` redrawn uniformly, scaled so activations stay of order one:
    matrices and convolutions within ``sqrt(3 / fan_in)``, biases within 0.1, other vectors (norm scales)
    ``1 +- 0.1``, anything else within 1; the draws are seeded by ``seed`` and the key order."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        u = torch.rand(value.shape, generator=generator, dtype=torch.float32) * 2 - 1
        if key.endswith("bias"):
            u = 0.1 * u
        elif value.dim() >= 2:
            u = u * math.sqrt(3.0 / math.prod(value.shape[1:]))
        elif value.dim() == 1:
            u = 1.0 + 0.1 * u
        out[key] = u.to(value.dtype).contiguous()
    return out


def write_tree(size: str, out: Path, hallo: Path) -> Path:
    """``out/pretrained_models`` in Hallo's layout at ``SIZES[size]``; returns ``out``."""
    import torch
    from diffusers import AutoencoderKL
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config

    from hallo.models.audio_proj import AudioProjModel
    from hallo.models.face_locator import FaceLocator
    from hallo.models.image_proj import ImageProjModel
    from hallo.models.unet_2d_condition import UNet2DConditionModel
    from hallo.models.unet_3d import UNet3DConditionModel
    from hallo.models.wav2vec import Wav2VecModel

    spec = SIZES[size]
    root = out / "pretrained_models"
    base = root / "stable-diffusion-v1-5"
    (base / "unet").mkdir(parents=True, exist_ok=True)
    (base / "unet" / "config.json").write_text(json.dumps(spec["unet"], indent=1))
    save_file({}, str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    kwargs = OmegaConf.to_container(OmegaConf.load(hallo / "configs" / "inference" / "default.yaml")
                                    .unet_additional_kwargs)
    kwargs["audio_attention_dim"] = spec["audio_dim"]
    denoising = UNet3DConditionModel.from_pretrained_2d(str(base), str(root / "motion_module" / "absent.ckpt"),
                                                        subfolder="unet", unet_additional_kwargs=kwargs,
                                                        use_landmark=False)
    reference = UNet2DConditionModel.from_config(spec["unet"])
    face_locator = FaceLocator(conditioning_channels=3, **spec["face_locator"])
    image_proj = ImageProjModel(cross_attention_dim=spec["unet"]["cross_attention_dim"],
                                clip_embeddings_dim=spec["face_embedding_dim"],
                                clip_extra_context_tokens=spec["image_tokens"])
    w2v_config = Wav2Vec2Config(**spec["wav2vec"], architectures=["Wav2Vec2ForCTC"])
    audio_proj = AudioProjModel(seq_len=5, blocks=w2v_config.num_hidden_layers, channels=w2v_config.hidden_size,
                                intermediate_dim=spec["audio_intermediate"], output_dim=spec["audio_dim"],
                                context_tokens=spec["audio_tokens"])
    net = {}
    for seed, (prefix, module) in enumerate((("reference_unet.", reference), ("denoising_unet.", denoising),
                                             ("face_locator.", face_locator), ("imageproj.", image_proj),
                                             ("audioproj.", audio_proj))):
        net.update({prefix + k: v for k, v in randomised(module.state_dict(), seed).items()})
    (root / "hallo").mkdir(parents=True, exist_ok=True)
    torch.save(net, root / "hallo" / "net.pth")
    save_file({k[len("reference_unet."):]: v for k, v in net.items() if k.startswith("reference_unet.")},
              str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    del net, denoising, reference

    vae_dir = root / "sd-vae-ft-mse"
    vae_dir.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_config(spec["vae"])
    save_file(randomised(vae.state_dict(), 10), str(vae_dir / "diffusion_pytorch_model.safetensors"))
    (vae_dir / "config.json").write_text(json.dumps(spec["vae"], indent=1))

    w2v_dir = root / "wav2vec" / "wav2vec2-base-960h"
    w2v_dir.mkdir(parents=True, exist_ok=True)
    wav2vec = Wav2VecModel(w2v_config)
    shipped = {}
    for key, value in randomised(wav2vec.state_dict(), 11).items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        shipped["wav2vec2." + key.replace("parametrizations.weight.original1", "weight_v")] = value
    head = randomised({"lm_head.weight": torch.zeros(w2v_config.vocab_size, w2v_config.hidden_size),
                       "lm_head.bias": torch.zeros(w2v_config.vocab_size)}, 12)
    save_file({**shipped, **head}, str(w2v_dir / "model.safetensors"), metadata={"format": "pt"})
    w2v_config.to_json_file(str(w2v_dir / "config.json"))
    (w2v_dir / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False, "sampling_rate": 16000}))
    for empty in ("face_analysis", "audio_separator"):
        (root / empty).mkdir(exist_ok=True)
    (out / "peer-tree.json").write_text(json.dumps({"size": size, **spec}, indent=1) + "\n")
    return out


def ellipse(cx: float, cy: float, rx: float, ry: float, count: int = 478):
    """``count`` points ``[count, 2]`` (x, y in pixels) evenly spaced in angle on an ellipse."""
    import numpy as np

    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], 1)


def run(args: argparse.Namespace) -> dict:
    """Hallo's ``inference_process`` on the inputs, timed (see the module docstring); returns the figures."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    hallo = Path(args.hallo)
    tree = json.loads((Path(args.tree) / "peer-tree.json").read_text())
    root = Path(args.tree) / "pretrained_models"
    inputs = Path(args.inputs)
    face = json.loads((inputs / "face.json").read_text())
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    import insightface.app

    insightface.app.FACES[:] = [{"bbox": np.array(face["bbox"], dtype=np.float64),
                                 "embedding": np.load(inputs / "face_embedding.npy")}]

    import hallo.datasets.audio_processor as audio_processor
    import hallo.datasets.image_processor as image_processor
    import hallo.utils.util as util

    side = tree["resolution"]
    x0, y0, x1, y1 = face["bbox"]
    points = ellipse((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)
    lips = ellipse((x0 + x1) / 2, y0 + 0.78 * (y1 - y0), 0.18 * (x1 - x0), 0.06 * (y1 - y0))
    points[util.lip_ids] = lips[util.lip_ids]
    util.get_landmark = lambda file: (points, side, side)

    def resample_audio(source: str, dest: str, sample_rate: int) -> str:
        with wave.open(source) as f:
            if f.getframerate() != sample_rate:
                raise ValueError(f"{source}: expected {sample_rate} Hz")
        shutil.copyfile(source, dest)
        return dest

    audio_processor.resample_audio = resample_audio
    if not cuda:
        defaults = audio_processor.AudioProcessor.__init__.__defaults__
        audio_processor.AudioProcessor.__init__.__defaults__ = (*defaults[:-1], "cpu")
    dtype = torch.float16 if cuda else torch.float32

    sys.argv = ["inference.py"]
    sys.path.insert(0, str(hallo / "scripts"))
    import inference

    from hallo.animate.face_animate import FaceAnimatePipeline
    from hallo.models.mutual_self_attention import ReferenceAttentionControl

    ReferenceAttentionControl.update.__defaults__ = (dtype,)
    if tree["size"] != "sd15":
        audio_proj, image_proj, face_locator = inference.AudioProjModel, inference.ImageProjModel, inference.FaceLocator
        inference.AudioProjModel = lambda **kw: audio_proj(**dict(
            kw, intermediate_dim=tree["audio_intermediate"], output_dim=tree["audio_dim"],
            context_tokens=tree["audio_tokens"], blocks=tree["wav2vec"]["num_hidden_layers"],
            channels=tree["wav2vec"]["hidden_size"]))
        inference.ImageProjModel = lambda **kw: image_proj(**dict(
            kw, clip_embeddings_dim=tree["face_embedding_dim"], clip_extra_context_tokens=tree["image_tokens"]))
        inference.FaceLocator = lambda **kw: face_locator(**dict(kw, conditioning_channels=3, **tree["face_locator"]))

    spent: dict[str, float] = {"image": 0.0, "audio": 0.0, "warmup_in_clips": 0.0}
    marks: dict[str, float] = {}
    frames: list[int] = []
    calls = {"pipeline": 0}

    def timed(name: str, function, warm: bool):
        def wrapper(self, *a, **kw):
            if warm and args.warmup:
                function(self, *a, **kw)
                sync()
            started = time.perf_counter()
            result = function(self, *a, **kw)
            sync()
            spent[name] += time.perf_counter() - started
            return result
        return wrapper

    image_processor.ImageProcessor.preprocess = timed("image", image_processor.ImageProcessor.preprocess, False)
    audio_processor.AudioProcessor.preprocess = timed("audio", audio_processor.AudioProcessor.preprocess, True)
    pipeline_call = FaceAnimatePipeline.__call__

    def call(self, **kw):
        if args.warmup and calls["pipeline"] == 0:
            started = time.perf_counter()
            pipeline_call(self, **dict(kw, num_inference_steps=1))
            sync()
            spent["warmup_in_clips"] += time.perf_counter() - started
        calls["pipeline"] += 1
        return pipeline_call(self, **kw)

    FaceAnimatePipeline.__call__ = call
    process_audio_emb = inference.process_audio_emb

    def start_clips(audio_emb):
        sync()
        marks["clips"] = time.perf_counter()
        return process_audio_emb(audio_emb)

    def stop(tensor, path, audio):
        sync()
        marks["done"] = time.perf_counter()
        frames.append(int(tensor.shape[1]))

    inference.process_audio_emb = start_clips
    inference.tensor_to_video = stop

    config = OmegaConf.load(hallo / "configs" / "inference" / "default.yaml")
    config.weight_dtype = "fp16" if cuda else "fp32"
    config.inference_steps = args.steps
    config.cfg_scale = args.cfg
    config.data.source_image.width = config.data.source_image.height = side
    config.audio_ckpt_dir = str(root / "hallo")
    config.base_model_path = str(root / "stable-diffusion-v1-5")
    config.motion_module_path = str(root / "motion_module" / "absent.ckpt")
    config.face_analysis.model_path = str(root / "face_analysis")
    config.wav2vec.model_path = str(root / "wav2vec" / "wav2vec2-base-960h")
    config.audio_separator.model_path = str(root / "audio_separator" / "Kim_Vocal_2.onnx")
    config.vae.model_path = str(root / "sd-vae-ft-mse")
    work = Path(args.work)
    config.save_path = str(work / "cache")
    config.unet_additional_kwargs.audio_attention_dim = tree["audio_dim"]
    OmegaConf.save(config, work / "hallo-config.yaml")
    inference.inference_process(argparse.Namespace(
        config=str(work / "hallo-config.yaml"), source_image=str(inputs / "portrait.png"),
        driving_audio=str(inputs / "speech.wav"), output=str(work / "cache" / "out.mp4"), pose_weight=None,
        face_weight=None, lip_weight=None, face_expand_ratio=None, audio_ckpt_dir=None))
    clips = marks["done"] - marks["clips"] - spent["warmup_in_clips"]
    seconds = spent["image"] + spent["audio"] + clips
    return {"frames": frames[0], "seconds": seconds, "s_per_frame": seconds / frames[0],
            "preprocess_seconds": spent["image"] + spent["audio"], "clip_seconds": clips,
            "pipeline_calls": calls["pipeline"], "steps": args.steps, "cfg": args.cfg, "threads": args.threads,
            "dtype": str(dtype).replace("torch.", ""), "device": "cuda" if cuda else "cpu",
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peer_hallo.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tree = commands.add_parser("tree", help="write a random checkpoint tree in Hallo's layout")
    tree.add_argument("--size", choices=sorted(SIZES), required=True)
    tree.add_argument("--out", type=Path, required=True)
    timed = commands.add_parser("run", help="time Hallo's inference_process")
    timed.add_argument("--tree", type=Path, required=True)
    timed.add_argument("--inputs", type=Path, required=True, help="portrait.png, speech.wav, face.json, "
                       "face_embedding.npy")
    timed.add_argument("--work", type=Path, required=True, help="a scratch folder for Hallo's cache")
    timed.add_argument("--steps", type=int, default=40)
    timed.add_argument("--cfg", type=float, default=3.5)
    timed.add_argument("--threads", type=int, default=1)
    timed.add_argument("--warmup", action="store_true")
    for sub in (tree, timed):
        sub.add_argument("--hallo", type=Path, default=Path(os.environ.get("HALLO_SOURCE", ".")),
                         help="Hallo's checkout (default: $HALLO_SOURCE, else the current folder)")
    args = parser.parse_args(argv)
    if args.command == "tree":
        write_tree(args.size, args.out, args.hallo)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
