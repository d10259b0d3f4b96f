"""``lift3d-render``: the render-farm command line.

    lift3d-render objaverse --uids-file uids.txt --out data/shards/objaverse --rig lrm32 [--resolution 512 ...]
    lift3d-render objaverse --glb-dir path/to/assets --out data/shards/local --rig lrm32
    lift3d-render procedural --count 1000 --seed 0 --out data/shards/procedural --rig lrm32
    lift3d-render mvimgnet  --root /data/mvimgnet --out data/shards/mvimgnet
    lift3d-render zero123   --shards 'data/shards/objaverse/*.tar' --weights /models/zero123-xl \\
                            --out data/shards/one2345
    lift3d-render index     --out data/shards/objaverse      # rebuild index.json from the shards on disk

A user error (bad settings, a missing or empty input, an --out rendered with other settings, a corrupt index) is one
line on stderr naming the file or flag and the fix, with exit status 2; a write that fails mid-run (disk full) is one
line and exit status 1, and the same command resumes once the cause is fixed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from render_farm.config import RenderSettingsError, load_render_config
from render_farm.tasks import report_task, resolve_task


class UserError(Exception):
    """An error in what the user asked for: printed as one line, exit status 2."""


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank", type=int, default=None, help="this task's index (default: SLURM_ARRAY_TASK_ID or 0)")
    p.add_argument("--world-size", type=int, default=None,
                   help="number of tasks (default: SLURM_ARRAY_TASK_COUNT or 1)")


def _objaverse_parser(sub) -> None:
    p = sub.add_parser("objaverse", help="render Objaverse objects (or a local directory of assets) into shards")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--uids-file", help="Objaverse uids, one per line")
    src.add_argument("--lvis-categories", nargs="+", help="render every object of these LVIS categories")
    src.add_argument("--glb-dir", help="a local directory of GLB/glTF/OBJ/PLY/STL/FBX assets instead of Objaverse")
    _add_render_args(p, "--seed")
    p.add_argument("--licences", nargs="+", help="Objaverse licence allow-list, e.g. by by-sa cc0")
    p.add_argument("--limit", type=int, help="render at most this many objects (before task slicing)")
    p.add_argument("--cache-dir", help="Objaverse download cache (default ~/.objaverse)")
    p.add_argument("--download-processes", type=int, default=4,
                   help="parallel Objaverse downloads (the next batch downloads while this one renders)")
    _add_run_args(p)


def _add_render_args(p: argparse.ArgumentParser, seed_flag: str) -> None:
    """The render settings and output flags every Blender source shares (``seed_flag``: the render seed's name)."""
    p.add_argument("--out", required=True, help="output directory for shards, index.json, _state/ and _logs/")
    p.add_argument("--config", help="render config YAML (default configs/render/default.yaml)")
    p.add_argument("--rig", help="camera rig: lrm32 | orbit | one2345 | eval24")
    p.add_argument("--resolution", type=int)
    p.add_argument("--samples", type=int)
    p.add_argument("--lighting", choices=["fixed", "random"])
    p.add_argument(seed_flag, dest="render_seed", type=int, help="render seed (rig jitter, random lighting)")
    p.add_argument("--timeout", dest="timeout_s", type=float, help="hard limit per object, seconds")
    p.add_argument("--shard-maxcount", type=int, help="objects per shard")
    p.add_argument("--num-workers", type=int, default=1, help="Blender worker processes on this machine")
    p.add_argument("--custom-blender-path", help="a pre-staged portable Blender 4.2 directory to run workers in")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retry-failed", action="store_true", help="render objects in the failure manifest again")
    p.add_argument("--allow-missing-textures", action="store_true", default=None,
                   help="render assets whose texture images are missing (recorded as a warning in meta.json) instead "
                        "of recording them as failed")
    p.add_argument("--allow-settings-change", action="store_true",
                   help="render into an --out whose samples were made with other settings (_state/settings.json)")
    p.add_argument("--no-progress", action="store_true")
    _add_task_args(p)


def _procedural_parser(sub) -> None:
    p = sub.add_parser("procedural", help="render procedural objects (LRM-Zero's Zeroverse recipe) into shards",
                       description="Object i of --seed S is a deterministic composition of textured primitives with "
                                   "boolean differences, height fields and wireframes (render_farm/procedural.py); "
                                   "its GLB is written under OUT/_assets/ and rendered like a --glb-dir asset")
    p.add_argument("--count", type=int, required=True, help="render objects 0 .. COUNT-1 of the seed")
    p.add_argument("--seed", type=int, default=0, help="the procedural seed (default 0): which objects")
    _add_render_args(p, "--render-seed")
    _add_run_args(p)


def _make_source(args):
    if args.command == "procedural":
        from render_farm.procedural import ProceduralSource

        return ProceduralSource(args.count, args.seed, os.path.join(args.out, "_assets"))
    if args.glb_dir:
        from render_farm.sources import LocalDirSource

        return LocalDirSource(args.glb_dir)
    from render_farm.sources import ObjaverseSource

    return ObjaverseSource(uids_file=args.uids_file, lvis_categories=args.lvis_categories, licences=args.licences,
                           limit=args.limit, cache_dir=args.cache_dir, download_processes=args.download_processes)


def run_objaverse(args) -> int:
    from render_farm.farm import AssetSelectionError, render_task
    from render_farm.shards import SettingsMismatchError, ShardIndexError
    from render_farm.sources import ObjaverseError

    try:  # everything named on the command line: the settings, the task, the source's directory or uids file
        cfg = load_render_config(args.config, rig=args.rig, resolution=args.resolution, samples=args.samples,
                                 lighting=args.lighting, seed=args.render_seed, timeout_s=args.timeout_s,
                                 shard_maxcount=args.shard_maxcount,
                                 allow_missing_textures=args.allow_missing_textures)
        task, count = resolve_task(args.rank, args.world_size)
        source = _make_source(args)
    except (RenderSettingsError, ObjaverseError, FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    try:
        summary = render_task(source, args.out, cfg, task, count, num_workers=args.num_workers,
                              blender_path=args.custom_blender_path, retry_failed=args.retry_failed,
                              progress=not args.no_progress, allow_settings_change=args.allow_settings_change)
    except (RenderSettingsError, SettingsMismatchError, AssetSelectionError, ShardIndexError, ObjaverseError) as exc:
        raise UserError(str(exc)) from exc
    report_task(summary, args.out, task)
    return 0


def run_index(args) -> int:
    from render_farm.shards import update_index

    if not os.path.isdir(args.out):
        raise UserError(f"--out {args.out!r} is not a directory; pass the shard directory whose index to rebuild")
    doc = update_index(args.out, rebuild=True)
    print(json.dumps({"shards": len(doc["shardlist"]), "samples": doc["total_samples"]}))
    return 0


def _zero123_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``lift3d-render zero123`` (defined here so that the other commands never import torch)."""
    p.add_argument("--shards", nargs="+", required=True,
                   help="input render shards (one2345 rig): globs (quote them), directories or .tar files")
    p.add_argument("--weights", required=True, help="local diffusers Zero123 checkpoint directory "
                   "(subfolders unet/ vae/ image_encoder/ feature_extractor/ scheduler/ cc_projection/)")
    p.add_argument("--out", required=True, help="output directory for shards, index.json, _state/ and _logs/")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, as Zero123)")
    p.add_argument("--guidance-scale", type=float, default=3.0,
                   help="classifier-free guidance (default 3.0, as Zero123; ≤ 1 runs the conditional branch only)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM η (default 1.0, Zero123's sampler)")
    p.add_argument("--batch-size", type=int, default=32, help="predicted views per UNet call (default 32)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each view's noise depends on (seed, key, view)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--shard-maxcount", type=int, default=64, help="objects per output shard")
    p.add_argument("--retry-failed", action="store_true", help="predict objects in the failure manifest again")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rank", type=int, default=None, help="this task's index (default: SLURM_ARRAY_TASK_ID or 0)")
    p.add_argument("--world-size", type=int, default=None,
                   help="number of tasks (default: SLURM_ARRAY_TASK_COUNT or 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lift3d-render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _objaverse_parser(sub)
    _procedural_parser(sub)
    try:
        from render_farm import mvimgnet
    except ImportError as exc:  # pycolmap missing: the other commands still work
        sub.add_parser("mvimgnet", help=f"unavailable: {exc}")
    else:
        mvimgnet.add_arguments(sub.add_parser("mvimgnet", help="convert MVImgNet videos (COLMAP) into shards"))
    p = sub.add_parser("zero123", help="predict the 4 neighbours of each gt view of one2345 render shards (Zero123)",
                       description="Zero123 prediction pass of One-2-3-45: reads render shards made with the "
                                   "one2345 rig and writes new shards with 32 predicted views appended")
    _zero123_arguments(p)
    p = sub.add_parser("index", help="rebuild index.json from the shards in a directory")
    p.add_argument("--out", required=True)
    return parser


def _dispatch(args) -> int:
    if args.command in ("objaverse", "procedural"):
        return run_objaverse(args)
    if args.command == "index":
        return run_index(args)
    if args.command == "zero123":
        from render_farm import zero123

        return zero123.run(args)
    from render_farm import mvimgnet

    return mvimgnet.run(args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as exc:
        print(f"lift3d-render {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except OSError as exc:  # a write failing mid-run (disk full): the message says how to resume
        print(f"lift3d-render {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
