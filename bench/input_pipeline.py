"""Input-pipeline throughput: JPEG decoding and a paper's augmentation (images/s) against what a model consumes.

The pipeline is kerasarch's own: ``data.from_directory`` (parallel decode, bad-file checks) and
``data.InputPipeline`` (augmentation preset, preprocessing, batching, prefetch), uncached so every image is
decoded. Images come from ``--dir`` (class sub-folders) or are synthesised as JPEGs of ImageNet's typical size.
The model side is one training step at the same batch size (``bench/train_throughput.py``'s measurement); a
pipeline/model ratio above 1 means the input keeps up.

The pipeline and the training step are measured in alternating rounds (pipeline, step, pipeline, step, …) so
that a busy minute hurts both; the medians and their ratio are printed and, with ``--out``, written as JSON.

    python bench/input_pipeline.py                                     # 512 synthetic 500×375 JPEGs, resnet50
    python bench/input_pipeline.py --images 64 --batches 2 --model-steps 1 --model lenet5 --input-size 32   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthesise(folder, images, size, classes=4, seed=0):
    """Writes ``images`` smooth random JPEGs of ``size`` = (width, height) into ``classes`` folders."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(images):
        low = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype("float32")
        image = tf.image.resize(low, (h, w), method="bicubic") + rng.normal(0, 8, (h, w, 3))
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        cls = os.path.join(folder, f"class{i % classes}")
        os.makedirs(cls, exist_ok=True)
        with open(os.path.join(cls, f"{i:06d}.jpg"), "wb") as f:
            f.write(tf.io.encode_jpeg(image, quality=90).numpy())


def measure(dataset, batches, warmup=2):
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="a folder of class sub-folders of images (default: synthesise)")
    p.add_argument("--images", type=int, default=512, help="synthetic images to write")
    p.add_argument("--image-size", default="500x375", help="synthetic image size WxH")
    p.add_argument("--augment", default="resnet", help="augmentation preset")
    p.add_argument("--preprocessing", default="torch")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="timed batches")
    p.add_argument("--model", default="resnet50", help="model whose consumption to compare with ('' to skip)")
    p.add_argument("--precision", default="mixed_bfloat16")
    p.add_argument("--model-steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="alternating pipeline / training-step rounds (median)")
    p.add_argument("--out", default=None, help="write OUT.json")
    args = p.parse_args(argv)

    import tensorflow as tf

    from kerasarch import data

    tmp = None
    folder = args.dir
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        folder = tmp.name
        w, h = (int(v) for v in args.image_size.split("x"))
        synthesise(folder, args.images, (w, h))
    source = data.from_directory(folder, image_size=None)
    n_files = len(source.file_paths)
    batches = max(1, min(args.batches, n_files // args.batch - 3))
    size = (args.input_size, args.input_size, 3)

    decode_only = source.map(lambda x, y: (tf.image.resize(x, size[:2]), y), num_parallel_calls=tf.data.AUTOTUNE)
    decode_only = decode_only.repeat().batch(args.batch).prefetch(tf.data.AUTOTUNE)
    decode_rate = measure(decode_only, batches)
    pipe = data.InputPipeline(
        source.repeat(),
        size,
        batch_size=args.batch,
        training=True,
        augment=args.augment,
        preprocessing=args.preprocessing,
        cache=False,
        shuffle_buffer=256,
    )
    dataset = pipe.dataset(0)

    def model_rate_once():
        import kerasarch
        from bench.train_throughput import bench_keras

        return bench_keras(
            lambda: kerasarch.build_model(
                args.model, input_shape=size if args.model not in ("lenet5", "lenet5_relu") else None
            ),
            args.precision,
            args.batch,
            1,
            args.model_steps,
        )

    augment_rates, model_rates, loads = [], [], []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        augment_rates.append(measure(dataset, batches))
        print(f"round {r + 1}  decode + '{args.augment}' augment {augment_rates[-1]:9.1f} images/s", flush=True)
        if args.model:
            model_rates.append(model_rate_once())
            print(f"round {r + 1}  {args.model} training step {model_rates[-1]:9.1f} images/s", flush=True)
    loads.append(os.getloadavg()[0])
    augment_rate = statistics.median(augment_rates)
    print(
        f"# {n_files} JPEGs from {'synthetic ' + args.image_size if args.dir is None else folder}, "
        f"{os.cpu_count()} CPUs, batch {args.batch}, {batches} timed batches, {args.rounds} alternating rounds "
        f"(medians), 1-min load {min(loads):.1f}–{max(loads):.1f}"
    )
    print(f"decode + resize            {decode_rate:9.1f} images/s")
    print(f"decode + '{args.augment}' augment {augment_rate:9.1f} images/s")
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv)),
        "cpus": os.cpu_count(),
        "load": [min(loads), max(loads)],
        "decode_resize_images_per_s": decode_rate,
        "augment_images_per_s": augment_rates,
        "model": args.model,
        "precision": args.precision,
        "model_images_per_s": model_rates,
    }
    if args.model:
        model_rate = statistics.median(model_rates)
        print(f"{args.model} training step ({args.precision}) {model_rate:9.1f} images/s")
        print(f"pipeline / model           {augment_rate / model_rate:9.2f}  (>1: the input keeps up)")
        result["ratio"] = augment_rate / model_rate
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        print(f"# wrote {args.out}.json")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
