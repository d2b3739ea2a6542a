"""``rsfm convert <verb>``: checkpoint conversion, in the order a checkpoint usually goes through."""
from __future__ import annotations

import argparse
import json

from .common import verb

TAG_HELP = "tag in a checkpoints folder (default: newest complete)"


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="checkpoint conversion: zero-to-fp32, mae-to-backbone, to-timm, reshard, "
                                       "inspect (docs/checkpoints.md)")
    verbs = p.add_subparsers(dest="convert_verb", required=True, metavar="VERB")
    for add_verb in (_zero_to_fp32, _mae_to_backbone, _to_timm, _reshard, _inspect):
        add_verb(verbs)


def _zero_to_fp32(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("zero-to-fp32", help="ZeRO checkpoint -> consolidated fp32 safetensors (sharded, streamed)")
    p.add_argument("ckpt_dir", help="tag directory (.../checkpoints/step_00000020) or checkpoints folder")
    p.add_argument("out", help="output folder: model.safetensors, or shards + model.safetensors.index.json")
    p.add_argument("--tag", default=None, help=TAG_HELP)
    p.add_argument("--max-shard-size", default="5GB",
                   help="bytes per file at most, e.g. 5GB, 500MB, 2GiB (default 5GB)")

    def run(args: argparse.Namespace) -> int:
        from ..checkpoint import zero_to_fp32

        result = zero_to_fp32(args.ckpt_dir, args.out, tag=args.tag, max_shard_size=args.max_shard_size)
        print(f"{result.num_tensors} tensors, {result.num_params:,} parameters (step {result.metadata.get('step')}) "
              f"-> {', '.join(str(f) for f in result.files)}")
        return 0

    verb(p, run)


def _mae_to_backbone(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("mae-to-backbone", help="MAE checkpoint -> backbone safetensors + json sidecar")
    p.add_argument("src", metavar="IN", help="ZeRO tag dir / checkpoints folder, or zero-to-fp32 output (folder, "
                                             ".safetensors or index json)")
    p.add_argument("out", metavar="OUT", help="output .safetensors (the sidecar is OUT with .json)")
    p.add_argument("--tag", default=None, help=TAG_HELP)
    p.add_argument("--img-size", type=int, default=None,
                   help="resolution the backbone is meant for, e.g. 512, 800, 1024 (default: pretraining's)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weights dtype (default fp32)")
    p.add_argument("--with-pos-embed", action="store_true",
                   help="also store the sin-cos pos_embed for the --img-size grid (our backbones recompute it)")

    def run(args: argparse.Namespace) -> int:
        from ..checkpoint import mae_to_backbone

        result = mae_to_backbone(args.src, args.out, img_size=args.img_size, dtype=args.dtype,
                                 with_pos_embed=args.with_pos_embed, tag=args.tag)
        m = result.metadata
        bands = f", bands {', '.join(json.loads(m['band_names']))}" if "band_names" in m else ""
        print(f"backbone {m['preset']} (step {m.get('step')}, {m['img_size']} px, {m['in_chans']} input bands{bands}, "
              f"{m['dtype']}): {result.num_params:,} parameters -> {', '.join(str(f) for f in result.files)}")
        return 0

    verb(p, run)


def _to_timm(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("to-timm", help="weights for timm.create_model('rsfm_<preset>', pretrained=True, "
                                         "pretrained_cfg_overlay=dict(file=OUT))")
    p.add_argument("src", metavar="IN", help="as for mae-to-backbone")
    p.add_argument("out", metavar="OUT", help="output .safetensors")
    p.add_argument("--tag", default=None, help=TAG_HELP)

    def run(args: argparse.Namespace) -> int:
        from ..checkpoint import to_timm

        result = to_timm(args.src, args.out, tag=args.tag)
        print(f"wrote {args.out}; load it with timm.create_model({result.metadata['timm_model']!r}, pretrained=True, "
              f"pretrained_cfg_overlay=dict(file={str(args.out)!r})) after importing rsfm_ds.models.presets")
        return 0

    verb(p, run)


def _reshard(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("reshard", help="ZeRO checkpoint -> DeepSpeed universal checkpoint (resume on any "
                                         "number of ranks)")
    p.add_argument("ckpt_dir", help="tag directory or checkpoints folder")
    p.add_argument("out", help="output tag directory (step_XXXXXXXX) or a folder to write the tag into, e.g. "
                               "the new run's checkpoints/")
    p.add_argument("--tag", default=None, help=TAG_HELP)
    p.add_argument("--workers", type=int, default=1, help="DeepSpeed extract/merge processes (default 1)")

    def run(args: argparse.Namespace) -> int:
        from ..checkpoint import reshard

        out = reshard(args.ckpt_dir, args.out, tag=args.tag, workers=args.workers)
        print(f"universal checkpoint {out}; resume with `rsfm pretrain ... --resume {out}`")
        return 0

    verb(p, run)


def _inspect(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("inspect", help="preset, step, samples seen, world size, dtype, parameters, files")
    p.add_argument("path", help="tag dir, checkpoints folder, safetensors file / index / folder, or timm file")
    p.add_argument("--tag", default=None, help=TAG_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")

    def run(args: argparse.Namespace) -> int:
        from ..checkpoint import inspect_checkpoint

        info = inspect_checkpoint(args.path, tag=args.tag)
        print(json.dumps(info.to_json(), indent=2) if args.json else info.format())
        return 0

    verb(p, run)
