"""``kerasarch list [PATTERN] [--build] [--pretrained]``: the registered models, optionally built to show their sizes,
or only those with published checkpoints (each with its source, top-1 and evaluation transform)."""

from __future__ import annotations


def register(sub):
    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("pattern", nargs="?", default=None, help="glob pattern, e.g. 'resnet*'")
    p.add_argument("--family", default=None, help="only this family")
    p.add_argument(
        "--build", action="store_true", help="build each model and print its parameter count and output shape"
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="only models with published ImageNet checkpoints, listing each checkpoint (the first is what "
        "--weights imagenet loads)",
    )
    p.set_defaults(func=run)


def run(args):
    from kerasarch.errors import KerasarchError
    from kerasarch.registry import get_spec, list_models

    if args.family is not None:
        families = sorted({get_spec(n).family for n in list_models()})
        if args.family not in families:
            raise KerasarchError(f"--family must be one of {', '.join(families)}. Received: --family {args.family!r}")
    names = list_models(args.pattern, family=args.family, pretrained=args.pretrained)
    if not names:
        raise KerasarchError(
            f"No registered model matches {args.pattern!r}"
            + (f" in family {args.family!r}" if args.family else "")
            + " (see `kerasarch list`)."
        )
    header = f"{'name':24s} {'family':14s} {'input':>13s} {'ref params':>14s}"
    if args.build:
        header += f" {'built params':>14s} {'output':>12s}"
    print(header)
    for name in names:
        spec = get_spec(name)
        ref = (
            f"{spec.params:,}"
            if spec.params
            else (f"~{spec.params_approx[0]}{spec.params_approx[1]}" if spec.params_approx else "-")
        )
        line = f"{name:24s} {spec.family:14s} {'x'.join(map(str, spec.input_shape)):>13s} {ref:>14s}"
        if args.build:
            import keras

            model = spec.build()
            trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
            shape = model.output_shape
            out = "multi" if isinstance(shape, (list, dict)) else str(tuple(shape[1:]))
            line += f" {trainable:>14,} {out:>12s}"
            del model
            keras.backend.clear_session()
        print(line, flush=True)
        if args.pretrained:
            for i, c in enumerate(spec.checkpoints):
                fit = (
                    f"resize {c.input.resize_size} crop {c.input.size[0]}"
                    if c.input.fit == "resize_crop"
                    else (c.input.fit)
                )
                top1 = f"{c.top1:.2f}%" if c.top1 is not None else "-"
                tag = f"imagenet = {c.source}:{c.id}" if i == 0 else f"imagenet:{c.source}:{c.id}"
                print(
                    f"    {tag:40s} top-1 {top1:>7s}  {fit}, {c.input.interpolation}, {c.input.preprocessing}  "
                    f"{c.file_name}",
                    flush=True,
                )
    return 0
