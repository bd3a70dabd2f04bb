"""``kerasarch export MODEL --format saved_model|tflite|onnx --out DIR``: a registered model, with its weights,
exported for serving (see :mod:`kerasarch.export`)."""

from __future__ import annotations

import os
import sys


def register(sub):
    p = sub.add_parser("export", help="export a model for serving (SavedModel, TFLite, ONNX)",
                       description="Export a registered model for serving: uint8 RGB images in, float32 "
                                   "probabilities (and top-5) out, with resize and preprocessing inside the graph.")
    p.add_argument("model", help="registry name, e.g. vgg16 (see `kerasarch list`)")
    p.add_argument("--weights", default=None,
                   help="'imagenet', 'imagenet:keras', 'imagenet:torchvision' or a weights file (.keras, .weights.h5, "
                        "keras.applications .h5, torchvision .pth, .safetensors); default: random initialisation")
    p.add_argument("--format", required=True, choices=("saved_model", "tflite", "onnx"))
    p.add_argument("--out", required=True, help="export directory (must not exist unless --overwrite)")
    p.add_argument("--tap", default=None,
                   help="SavedModel only: add a 'features' signature for this tap (paper name such as fc7, or a "
                        "layer name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    p.add_argument("--quantize", default=None, choices=("float16", "int8"), help="TFLite only")
    p.add_argument("--preprocessing", default=None, choices=("caffe", "torch", "tf", "none"),
                   help="input convention (default: what the weights expect, else the model's spec)")
    p.add_argument("--input-size", type=int, default=None,
                   help="build the model for SIZE x SIZE inputs (the TFLite input size)")
    p.add_argument("--calibration", default=None,
                   help="int8 only: a .npy of uint8 images [N, H, W, 3] to calibrate on (default: scikit-learn "
                        "digits, upscaled)")
    p.set_defaults(func=run)


def _fail(message):
    print(f"kerasarch export: error: {message}", file=sys.stderr)
    return 2


def run(args):
    out = os.path.abspath(args.out)
    if os.path.lexists(out) and not args.overwrite:
        return _fail(f"{out} exists; pass --overwrite to replace it.")
    if args.quantize and args.format != "tflite":
        return _fail(f"--quantize applies to --format tflite only (got --format {args.format}).")
    if args.tap and args.format != "saved_model":
        return _fail(f"--tap applies to --format saved_model only (got --format {args.format}).")
    if args.calibration and args.quantize != "int8":
        return _fail("--calibration applies to --quantize int8 only.")

    import numpy as np

    from kerasarch.export import ExportError, export_model, prepare_model

    try:
        calibration = np.load(args.calibration) if args.calibration else None
        model, preprocessing, class_names = prepare_model(args.model, args.weights, preprocessing=args.preprocessing,
                                                          input_size=args.input_size)
        path = export_model(model, out, format=args.format, tap=args.tap, overwrite=args.overwrite,
                            quantize=args.quantize, preprocessing=preprocessing, class_names=class_names,
                            calibration_images=calibration)
    except (ExportError, FileExistsError, FileNotFoundError, ValueError, OSError) as e:
        return _fail(str(e))
    print(f"Exported {args.model} ({args.format}{', ' + args.quantize if args.quantize else ''}; preprocessing "
          f"{preprocessing}) to {path}")
    return 0
