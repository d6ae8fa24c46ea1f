"""``lyco world ...``: the embedded micro-world from the command line.

    lyco world list                                  held-out concepts (and the base world)
    lyco world make-dataset olis OUT [--seed 0]      a kohya dataset + evaluation prompt sets
    lyco world make-dataset all OUT                  every held-out concept, class-balanced (OUT/<name>/)
    lyco world render OUT.png [--concept olis]       a sample grid of the world (captions printed)
    lyco world sample OUT.png --prompt "a red star on a blue background"   images from builtin:tiny
    lyco world check IMAGE.png [...] --prompt "..."  what the world's classifier reads in images
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
from PIL import Image

from ..errors import ConfigError
from . import checks as K
from . import render as R
from .concepts import CONCEPTS, get_concept
from .dataset import base_items, concept_items, write_all, write_dataset
from .sampling import generate

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lyco world", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the held-out concepts")
    md = sub.add_parser("make-dataset", help="write a concept dataset (kohya layout) and its prompt sets")
    md.add_argument("name",
                    help="concept name (see 'lyco world list'), 'base', or 'all' (every concept, class-balanced)")
    md.add_argument("out", help="output folder")
    md.add_argument("--seed", type=int, default=0, help="render seed (the same seed gives the same bytes)")
    md.add_argument("--size", type=int, default=32, help="image size in pixels (multiple of 16, >= 32)")
    md.add_argument("-n", "--n-images", type=int, default=None, help="number of images (default: the concept's)")
    md.add_argument("--force", action="store_true", help="write into a non-empty folder")
    md.add_argument("--exposures", type=int, default=None,
                    help="'all': samples per concept per epoch (default: the largest concept's image count)")
    rd = sub.add_parser("render", help="render a sample grid of the world")
    rd.add_argument("out", help="output .png")
    rd.add_argument("--concept", default=None, help="render this concept's training images instead")
    rd.add_argument("-n", type=int, default=32, help="number of scenes (default 32)")
    rd.add_argument("--seed", type=int, default=0, help="render seed (default 0)")
    rd.add_argument("--size", type=int, default=32, help="scene size in pixels (default 32)")
    rd.add_argument("--cols", type=int, default=8, help="scenes per grid row (default 8)")
    rd.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale of the grid (default 2)")
    sp = sub.add_parser("sample", help="generate images with a model (default builtin:tiny)")
    sp.add_argument("out", help="output .png grid")
    sp.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    sp.add_argument("--model", default="builtin:tiny", help="diffusers folder, single file or builtin:tiny")
    sp.add_argument("-n", type=int, default=8, help="images per prompt")
    sp.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    sp.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")
    sp.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale of the grid (default 2)")
    ck = sub.add_parser("check", help="read images with the world classifier (and check them against a prompt)")
    ck.add_argument("images", nargs="+", help="image files to read")
    ck.add_argument("--prompt", default=None, help="check the images against this prompt's shape/colour/background")
    return ap


def _list() -> int:
    print(f"{'name':<6} {'descriptor':<16} {'category':<10} {'images':>6} {'repeats':>7}  description")
    for c in CONCEPTS.values():
        print(f"{c.name:<6} {c.descriptor:<16} {c.category:<10} {c.n_images:>6} {c.repeats:>7}  {c.description}")
    print(f"{'base':<6} {'-':<16} {'base':<10} {100:>6} {1:>7}  base-world scenes with plain descriptions")
    return 0


def _save(img: np.ndarray, path: str) -> None:
    Image.fromarray(img).save(path)


def _render(args: argparse.Namespace) -> int:
    if args.concept:
        items = concept_items(get_concept(args.concept), args.seed, args.size, args.n)
    else:
        items = base_items(args.seed, args.size, args.n)
    _save(R.grid([im for im, _, _ in items], args.cols, args.scale), args.out)
    for i, (_, cap, _) in enumerate(items):
        print(f"{i:3d}  {cap}")
    log.info("wrote %s", args.out)
    return 0


def _sample(args: argparse.Namespace) -> int:
    prompts: list[str] = []
    for p in args.prompt:
        prompts += [p] * args.n
    images = generate(prompts, model=args.model, steps=args.steps, guidance=args.cfg, seed=args.seed)
    _save(R.grid(list(images), args.n, args.scale), args.out)
    log.info("wrote %s (%d images)", args.out, len(images))
    return 0


def _check(args: argparse.Namespace) -> int:
    imgs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.Resampling.BOX))
                     for p in args.images])
    spec = K.parse_scene_prompt(args.prompt) if args.prompt else None
    for path, reading in zip(args.images, K.read_images(imgs)):
        line = ", ".join(f"{k}={v}({reading.probs[k][v]:.2f})" for k, v in reading.labels.items())
        if spec is not None:
            ok = K.check(reading, spec)
            line += "  | " + " ".join(f"{k}:{'ok' if v else 'NO'}" for k, v in ok.items())
        print(f"{path}: {line}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "list":
        return _list()
    if args.cmd == "make-dataset" and args.name == "all":
        if args.n_images is not None:
            raise ConfigError("make-dataset all: -n/--n-images is per concept; write single concepts to change it")
        for info in write_all(args.out, seed=args.seed, size=args.size, exposures=args.exposures, overwrite=args.force):
            log.info("wrote %s: %d images in %s", info.name, info.n_images, info.image_dir)
        return 0
    if args.cmd == "make-dataset":
        info = write_dataset(args.name, args.out, seed=args.seed, size=args.size, n=args.n_images,
                             overwrite=args.force)
        log.info("wrote %d images to %s and prompt sets to %s/prompts", info.n_images, info.image_dir, info.root)
        return 0
    if args.cmd == "render":
        return _render(args)
    if args.cmd == "sample":
        return _sample(args)
    if args.cmd == "check":
        return _check(args)
    raise ConfigError(f"unknown world command {args.cmd!r}")
