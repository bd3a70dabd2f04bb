"""Serving speed: kerasarch's exports of one model (SavedModel float32 / bfloat16, ONNX, TFLite float32 / int8)
against onnxruntime running the project's own ONNX export, at batch 1 and batch 32, in one process.

Everything goes through the public API: ``kerasarch.build_model`` (random weights, seeded) and
``kerasarch.export.export_model`` for every format, then each export is loaded as a user loads it
(``tf.saved_model.load``, ``onnxruntime.InferenceSession``, the LiteRT/TFLite interpreter). The jobs:

- ``savedmodel_uint8``: the SavedModel's ``predict_images`` signature on a uint8 batch (fit, preprocessing, model,
  softmax and top-5 in the graph) — the like-for-like peer of the ONNX export, which holds the same graph;
- ``savedmodel_jpeg``: its ``serving_default`` signature on the same images as JPEG files (adds the decoding);
- ``savedmodel_bf16_uint8``: ``predict_images`` of the ``precision="bfloat16"`` export (CPUs with AVX512-BF16/AMX);
- ``keras_model``: the bare model under ``tf.function`` on already-preprocessed float32 inputs (the floor);
- ``onnxruntime``: the ONNX export (uint8 in, same fit/preprocessing/softmax/top-5) in onnxruntime's default
  session, and ``onnxruntime_nospin`` with its thread spinning off (fairer when the CPU is shared);
- ``tflite_fp32`` / ``tflite_int8``: the TFLite exports (uint8 ``[1, H, W, 3]`` at the model's size, so batch
  32 is 32 invocations; fitting is not in their graph).

The uint8 inputs are 224 × 224 crops of scikit-learn's two sample photographs, so the fit (resize to 232, centre
crop) runs in every graph that has one. Rounds are interleaved (round 1 in job order, round 2 reversed, ...);
each measurement records wall time, the process's CPU time and the 1-minute load average; the median round is
kept. Prints images/s, images per CPU-second and the ratios against ``onnxruntime``; writes ``OUT.json`` (after
every round) and ``OUT.png``.

    python bench/serving.py --out bench/results/serving_resnet50
    python bench/serving.py --frozen-weights --out bench/results/serving_resnet50_frozen   # a serving process's setting
    python bench/serving.py --model resnet18 --batches 1 --rounds 1 --reps 2 --jobs savedmodel_uint8,onnxruntime
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

JOBS = (
    "savedmodel_uint8",
    "savedmodel_jpeg",
    "savedmodel_bf16_uint8",
    "keras_model",
    "onnxruntime",
    "onnxruntime_nospin",
    "tflite_fp32",
    "tflite_int8",
)
PEER = "onnxruntime"


def photo_crops(size, count, seed=0):
    """``count`` uint8 ``size`` × ``size`` crops (random positions and scales) of scikit-learn's sample photos."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.shape[:2])))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = tf.image.resize(photo[top : top + side, left : left + side], (size, size), antialias=True)
        crops.append(tf.cast(tf.round(crop), tf.uint8).numpy())
    return np.stack(crops)


def litert_interpreter(path, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def export_in_child(source, out, kw):
    import keras

    import kerasarch  # noqa: F401  (registers kerasarch's layers and model card for loading)
    from kerasarch.export import export_model

    export_model(keras.models.load_model(source, compile=False), out, **kw)


def build_jobs(args, folder):
    """``{job: (export seconds, {batch: callable})}``: every export of one model, loaded, with its inputs bound."""
    import keras
    import numpy as np
    import tensorflow as tf

    import kerasarch
    from kerasarch.preprocessing import prepare_images

    keras.utils.set_random_seed(0)
    model = kerasarch.build_model(args.model)
    source = os.path.join(folder, "model.keras")
    model.save(source)
    size = int(model.input_shape[1])
    images = photo_crops(size, max(args.batches))
    jpegs = np.array([tf.io.encode_jpeg(image, quality=90).numpy() for image in images], dtype=object)
    config = kerasarch.card_of(model).input
    wanted = set(args.jobs)
    jobs = {}

    def timed_export(**kw):
        # Each export in its own process: converting ResNet-50 (tf2onnx, the TFLite converter) holds several GB,
        # which a process keeps; the model travels as its .keras file.
        start = time.perf_counter()
        out = os.path.join(folder, "_".join(f"{v}" for v in kw.values()))
        context = multiprocessing.get_context("spawn")
        child = context.Process(target=export_in_child, args=(source, out, kw))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"export {kw} failed (exit code {child.exitcode}); see its output above")
        path = out if kw.get("format") != "saved_model" else os.path.join(out, "1")
        return path, time.perf_counter() - start

    if wanted & {"savedmodel_uint8", "savedmodel_jpeg"}:
        path, secs = timed_export(format="saved_model")
        loaded = tf.saved_model.load(path)
        pixels, encoded = loaded.signatures["predict_images"], loaded.signatures["serving_default"]
        jobs["savedmodel_uint8"] = (
            secs,
            {b: (lambda x=tf.constant(images[:b]): pixels(images=x)) for b in args.batches},
        )
        jobs["savedmodel_jpeg"] = (
            secs,
            {b: (lambda x=tf.constant(jpegs[:b]): encoded(image_bytes=x)) for b in args.batches},
        )
    if "savedmodel_bf16_uint8" in wanted:
        path, secs = timed_export(format="saved_model", precision="bfloat16")
        bf16 = tf.saved_model.load(path).signatures["predict_images"]
        jobs["savedmodel_bf16_uint8"] = (
            secs,
            {b: (lambda x=tf.constant(images[:b]): bf16(images=x)) for b in args.batches},
        )
    if "keras_model" in wanted:
        bare = tf.function(lambda x: model(x, training=False))
        jobs["keras_model"] = (
            0.0,
            {b: (lambda x=tf.constant(prepare_images(tf.constant(images[:b]), config)): bare(x)) for b in args.batches},
        )
    if wanted & {"onnxruntime", "onnxruntime_nospin"}:
        import onnxruntime as ort

        path, secs = timed_export(format="onnx")
        for job, spin in (("onnxruntime", None), ("onnxruntime_nospin", "0")):
            options = ort.SessionOptions()
            if args.threads:
                options.intra_op_num_threads = args.threads
            if spin is not None:
                options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            session = ort.InferenceSession(
                os.path.join(path, "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            jobs[job] = (secs, {b: (lambda s=session, x=images[:b]: s.run(None, {"images": x})) for b in args.batches})
    for job, quantize in (("tflite_fp32", None), ("tflite_int8", "int8")):
        if job not in wanted:
            continue
        path, secs = timed_export(format="tflite", quantize=quantize)
        interpreter = litert_interpreter(os.path.join(path, "model.tflite"), args.threads or os.cpu_count())
        detail, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def run(x, it=interpreter, i=detail["index"], o=output["index"]):
            for image in x:
                it.set_tensor(i, image[None])
                it.invoke()
                it.get_tensor(o)

        jobs[job] = (secs, {b: (lambda x=images[:b], run=run: run(x)) for b in args.batches})
    return {job: jobs[job] for job in args.jobs if job in jobs}, model


def measure(fn, reps):
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def chart(summary, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({row["batch"] for row in summary})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [row for row in summary if row["batch"] == batch]
        ax.barh([row["job"] for row in rows], [row["images_per_s"] for row in rows], color="tab:blue")
        for i, row in enumerate(rows):
            ratio = row.get("ratio_vs_onnxruntime")
            ax.text(row["images_per_s"], i, f" {ratio:.2f}×" if ratio else "", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("images/s (median round); label: ratio vs onnxruntime")
        ax.set_title(f"batch {batch}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(records):
    summary = []
    keys = sorted({(r["job"], r["batch"]) for r in records}, key=lambda k: (k[1], JOBS.index(k[0])))
    for job, batch in keys:
        rows = [r for r in records if (r["job"], r["batch"]) == (job, batch)]
        rate = statistics.median(r["images"] / r["wall_s"] for r in rows)
        cpu_rate = statistics.median(r["images"] / max(r["cpu_s"], 1e-9) for r in rows)
        summary.append(
            {
                "job": job,
                "batch": batch,
                "images_per_s": rate,
                "ms_per_batch": 1e3 * batch / rate,
                "images_per_cpu_s": cpu_rate,
                "load_1min": statistics.mean(r["load_1min"] for r in rows),
                "rounds": len(rows),
            }
        )
    for row in summary:
        peer = next((p for p in summary if p["job"] == PEER and p["batch"] == row["batch"]), None)
        if peer:
            row["ratio_vs_onnxruntime"] = row["images_per_s"] / peer["images_per_s"]
            row["cpu_ratio_vs_onnxruntime"] = row["images_per_cpu_s"] / peer["images_per_cpu_s"]
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="registry name (random weights)")
    p.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
    p.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated subset of {', '.join(JOBS)}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--reps", type=int, default=8, help="timed calls per measurement at batch 1 (batch 32: a quarter)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per job and batch before the first round")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for onnxruntime/TFLite (0: default)")
    p.add_argument(
        "--frozen-weights",
        action="store_true",
        help="serve with TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 (oneDNN keeps its reordered kernels between calls; for "
        "serving processes only, see docs/serving.md)",
    )
    p.add_argument("--out", default=None, help="write OUT.json and OUT.png")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.jobs = [j for j in args.jobs.split(",") if j]
    unknown = sorted(set(args.jobs) - set(JOBS))
    if unknown:
        p.error(f"unknown job(s) {', '.join(unknown)}; choose from {', '.join(JOBS)}. Received: --jobs {args.jobs}")
    if args.frozen_weights:  # read once, when TensorFlow starts: before its import
        os.environ["TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"] = "1"

    import keras
    import tensorflow as tf

    import kerasarch

    info = {
        "model": args.model,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "kerasarch": getattr(kerasarch, "__version__", "?"),
        "batches": args.batches,
        "rounds": args.rounds,
        "reps": args.reps,
        "threads": args.threads,
        "command": "python bench/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as folder:
        jobs, _ = build_jobs(args, folder)
        info["export_s"] = {job: round(secs, 1) for job, (secs, _) in jobs.items()}
        for job, (_, fns) in jobs.items():
            for batch, fn in fns.items():
                for _ in range(args.warmup):
                    fn()
        records = []
        order = list(jobs)
        for r in range(args.rounds):
            for job in order if r % 2 == 0 else order[::-1]:
                for batch in args.batches:
                    reps = args.reps if batch == 1 else max(1, args.reps // 4)
                    wall, cpu = measure(jobs[job][1][batch], reps)
                    record = {
                        "round": r,
                        "job": job,
                        "batch": batch,
                        "images": reps * batch,
                        "wall_s": wall,
                        "cpu_s": cpu,
                        "load_1min": os.getloadavg()[0],
                    }
                    records.append(record)
                    print(
                        f"round {r} {job:22s} batch {batch:3d} {record['images'] / wall:8.2f} img/s "
                        f"{record['images'] / max(cpu, 1e-9):7.2f} img/CPU-s  load {record['load_1min']:.1f}",
                        flush=True,
                    )
            if args.out:
                with open(args.out + ".json", "w") as f:
                    json.dump({"info": info, "records": records, "summary": summarise(records)}, f, indent=1)
    summary = summarise(records)
    print(f"\n# {args.model}, {info['cpus']} CPUs, median of {args.rounds} interleaved rounds")
    print(
        f"{'job':24s}{'batch':>6s}{'img/s':>9s}{'ms/batch':>10s}{'img/CPU-s':>11s}"
        f"{'vs ORT':>8s}{'(CPU)':>7s}{'load':>6s}"
    )
    for row in summary:
        ratio = row.get("ratio_vs_onnxruntime")
        cpu_ratio = row.get("cpu_ratio_vs_onnxruntime")
        print(
            f"{row['job']:24s}{row['batch']:6d}{row['images_per_s']:9.2f}{row['ms_per_batch']:10.1f}"
            f"{row['images_per_cpu_s']:11.2f}{ratio if ratio else float('nan'):8.2f}"
            f"{cpu_ratio if cpu_ratio else float('nan'):7.2f}{row['load_1min']:6.1f}"
        )
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump({"info": info, "records": records, "summary": summary}, f, indent=1)
        loads = [r["load_1min"] for r in records]
        chart(
            summary,
            args.out + ".png",
            f"{args.model} serving, {info['cpus']} CPUs, load {min(loads):.1f}–{max(loads):.1f}",
        )
        print(f"# wrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
