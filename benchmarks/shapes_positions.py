"""Where a text-to-image model of the shapes puts a shape, for each position its prompt names: the same prompt but
for the position words, the same seed, so the only thing that may move the shape is the prompt.

    OMP_NUM_THREADS=1 python benchmarks/shapes_positions.py out/diffusion-text-shapes --num_images 30

Prints, for each prompted position, how many of `--num_images` images the shapes' attribute reader
(`hfgen.metrics.adherence.predict_attributes`: the foreground centroid's nearest position) puts at each position.
A model that follows the position words puts them on the diagonal; one that ignores them prints one row five
times.
"""

import argparse
import collections
import json

import hfgen
from hfgen.data import COLORS, POSITIONS, SHAPES, SIZES
from hfgen.metrics.adherence import predict_attributes, template_prompt


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A text-conditioned pipeline trained on the shapes.")
    parser.add_argument("--num_images", type=int, default=30, help="Images per position.")
    parser.add_argument("--shape", default="square", choices=SHAPES)
    parser.add_argument("--color", default="red", choices=list(COLORS))
    parser.add_argument("--size", default="large", choices=list(SIZES))
    parser.add_argument("--guidance_scale", type=float, default=4.0)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pipeline = hfgen.load_pipeline(args.model)
    pipeline.set_progress_bar_config(disable=True)
    counts = {}
    for position in POSITIONS:
        targets = {"shape": args.shape, "color": args.color, "size": args.size, "position": position}
        images = pipeline.generate(
            args.num_images,
            prompt=template_prompt(targets, "shapes"),  # the training captions' wording
            seed=args.seed,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
        )
        found = collections.Counter(predict_attributes(images, "shapes")["position"])
        counts[position] = {p: found.get(p, 0) for p in POSITIONS}
        print(f"{position:>12}: {json.dumps(counts[position])}", flush=True)
    correct = sum(counts[p][p] for p in POSITIONS) / (len(POSITIONS) * args.num_images)
    print(f"at the prompted position: {correct:.3f} (chance {1 / len(POSITIONS):.2f})")
    return {"counts": counts, "at_prompted_position": correct}


if __name__ == "__main__":
    main()
