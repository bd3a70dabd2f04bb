"""``kerasarch export MODEL --format saved_model|tflite|onnx --out DIR``: a registered model with its weights, a
``.keras`` file or a training run folder, exported for serving with the input convention its model card records
(see :mod:`kerasarch.export`)."""

from __future__ import annotations

import os
import sys


def register(sub):
    p = sub.add_parser(
        "export",
        help="export a model for serving (SavedModel, TFLite, ONNX)",
        description="Export a registered model for serving: encoded images (JPEG, PNG, GIF, BMP; "
        "SavedModel) or uint8 pixels in, float32 probabilities (and top-5 with class "
        "names) out, with decoding, fitting and preprocessing inside the graph. See "
        "docs/serving.md for TensorFlow Serving.",
    )
    p.add_argument(
        "model",
        help="registry name, e.g. vgg16 (see `kerasarch list`), a .keras file, or a training run "
        "folder (its model.keras)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="'imagenet', 'imagenet:keras', 'imagenet:torchvision' or a weights file (.keras, .weights.h5, "
        "keras.applications .h5, torchvision .pth, .safetensors); default: random initialisation",
    )
    p.add_argument("--format", required=True, choices=("saved_model", "tflite", "onnx"))
    p.add_argument(
        "--out",
        required=True,
        help="SavedModel: the model base folder, written as OUT/<version>/ (TensorFlow Serving's layout); "
        "TFLite/ONNX: the export folder (must not exist unless --overwrite)",
    )
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="SavedModel only: the version folder's number (default: one more than the highest in OUT)",
    )
    p.add_argument(
        "--tap",
        default=None,
        help="SavedModel only: add a 'features' signature for this tap (paper name such as fc7, or a layer name)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export (the --version folder, or a TFLite/ONNX folder); anything that "
        "is not an export is never replaced",
    )
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="SavedModel only: leave out TF Serving's warm-up requests (assets.extra/tf_serving_warmup_requests)",
    )
    p.add_argument("--quantize", default=None, choices=("float16", "int8"), help="TFLite only")
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="SavedModel only: bfloat16 runs the model in bfloat16 (CPUs with AVX512-BF16/AMX; docs/serving.md)",
    )
    p.add_argument(
        "--preprocessing",
        default=None,
        choices=("caffe", "torch", "tf", "unit", "lecun", "none"),
        help="pixel convention (default: the model card's; needed for a .keras made outside kerasarch)",
    )
    p.add_argument(
        "--fit",
        default=None,
        choices=("resize", "pad", "resize_crop", "auto"),
        help="how images are fitted to the input size (default: the model card's)",
    )
    p.add_argument(
        "--input-size", type=int, default=None, help="build the model for SIZE x SIZE inputs (the TFLite input size)"
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="int8 only: a .npy of uint8 images [N, H, W, 3] to calibrate on (default: scikit-learn digits, upscaled)",
    )
    p.set_defaults(func=run)


def _fail(message):
    print(f"kerasarch export: error: {message}", file=sys.stderr)
    return 2


def run(args):
    out = os.path.abspath(args.out)
    if args.version is not None and args.format != "saved_model":
        return _fail(f"--version applies to --format saved_model only (got --format {args.format}).")
    if args.quantize and args.format != "tflite":
        return _fail(f"--quantize applies to --format tflite only (got --format {args.format}).")
    if args.precision != "float32" and args.format != "saved_model":
        return _fail(f"--precision applies to --format saved_model only (got --format {args.format}).")
    if args.tap and args.format != "saved_model":
        return _fail(f"--tap applies to --format saved_model only (got --format {args.format}).")
    if args.calibration and args.quantize != "int8":
        return _fail("--calibration applies to --quantize int8 only.")

    import numpy as np

    from kerasarch.export import ExportError, export_model, export_target, prepare_model

    try:
        export_target(out, format=args.format, version=args.version, overwrite=args.overwrite)  # before any work
    except (ExportError, FileExistsError) as e:
        return _fail(str(e))
    try:
        calibration = np.load(args.calibration) if args.calibration else None
        model, preprocessing, class_names = prepare_model(
            args.model, args.weights, preprocessing=args.preprocessing, input_size=args.input_size, fit=args.fit
        )
        path = export_model(
            model,
            out,
            format=args.format,
            tap=args.tap,
            overwrite=args.overwrite,
            quantize=args.quantize,
            preprocessing=preprocessing,
            class_names=class_names,
            calibration_images=calibration,
            version=args.version,
            warmup=args.warmup,
            precision=args.precision,
        )
    except (ExportError, FileExistsError, FileNotFoundError, ValueError, OSError) as e:
        return _fail(str(e))
    print(
        f"Exported {args.model} ({args.format}{', ' + args.quantize if args.quantize else ''}"
        f"{', bfloat16' if args.precision == 'bfloat16' else ''}; preprocessing "
        f"{preprocessing}) to {path}"
    )
    if args.format == "saved_model":
        print(f"Serve it with TensorFlow Serving: --model_base_path={out} (see docs/serving.md)")
        print(
            "On a CPU, start the serving process with TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 (never a training one): "
            "1.3-1.6x the images/s at batch 1 (docs/serving.md, CPU threading)"
        )
    return 0
