"""A trained encoder on image files, as a user would run it: the MNIST test set written out as PNG
files, then `clt predict --knn 10` on them against `clt evaluate --knn 10` on the stored split,
the throughput of `clt embed --images` (decoding included), and the exported ONNX encoder
reproducing the probe's accuracy through onnxruntime.

    python bench/images.py --artifacts STORE --encoder mnist_pair --probe PROBE_ID

The encoder must be trained on mnist in STORE (e.g. by `python bench/published.py mnist_pair`);
PROBE_ID is a probe of it. Writes bench/results/images.md and .json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from records import command_line, write_record

import clt
from clt.devices import cpu_supports_bf16
from clt.exporters import run_onnx

RESULTS = Path(__file__).resolve().parent / "results"


def write_pngs(images: np.ndarray, labels: np.ndarray, folder: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        paths.append(folder / f"{i:05d}_{label}.png")
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(paths[-1])
    return paths


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def cpu_model() -> str:
    """E.g. '2-core AMD EPYC (native bf16)': bf16 kernels decide which precision `auto` trains in,
    so every bench figure names them beside the CPU."""
    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16"
    return f"{os.cpu_count()}-core {cpu_name()} ({bf16})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--probe", required=True)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    store = clt.open_store(args.artifacts)
    encoder = clt.load_encoder(args.encoder, store=store)
    manifest = clt.show(encoder.id, store=store)
    test = clt.load_dataset(manifest["inputs"]["dataset"], store=store).test
    images, labels = test.images.numpy(), test.labels.numpy()
    figures: dict = {"encoder": encoder.id, "probe": args.probe, "images": len(images), "cpu": cpu_name()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "png"
        folder.mkdir()
        started = time.perf_counter()
        write_pngs(images, labels, folder)
        figures["write_png_s"] = round(time.perf_counter() - started, 1)
        evaluated = clt.evaluate(encoder.id, knn=args.k, store=store).metrics["knn_accuracy"]
        started = time.perf_counter()
        rows = clt.predict(encoder.id, [folder], knn=args.k, store=store)
        figures["predict_knn_s"] = round(time.perf_counter() - started, 1)
        truth = {str(p): str(p.stem.split("_")[1]) for p in folder.glob("*.png")}
        predicted = float(np.mean([r["top"][0]["class"] == truth[r["path"]] for r in rows]))
        figures.update(evaluate_knn_accuracy=evaluated, predict_knn_accuracy=predicted)
        started = time.perf_counter()
        clt.embed(encoder.id, images=[folder], out=Path(tmp) / "vectors.npy", store=store)
        seconds = time.perf_counter() - started
        figures.update(embed_images_s=round(seconds, 2), embed_images_per_s=round(len(images) / seconds, 1))
        figures.update(onnx_check(store, encoder, args.probe, images, labels, Path(tmp)))
    write(figures, args, title=f"The {manifest['recipe']['name']} encoder on {len(images):,} PNG files")


def onnx_check(store, encoder, probe: str, images: np.ndarray, labels: np.ndarray, tmp: Path) -> dict:
    """The probe's accuracy with features from the exported ONNX file instead of the torch encoder."""
    import torch

    clt.export(encoder.id, format="onnx", out=tmp / "encoder.onnx", store=store)
    started = time.perf_counter()
    features = np.concatenate([run_onnx(tmp / "encoder.onnx", images[i:i + 1000]) for i in range(0, len(images), 1000)])
    onnx_s = time.perf_counter() - started
    classifier = clt.load_classifier(probe, store=store)
    with torch.no_grad():
        predicted = classifier.head(torch.from_numpy(features)).argmax(1).numpy()
    return {"onnx_probe_accuracy": float((predicted == labels).mean()),
            "probe_accuracy": clt.evaluate(probe, store=store).metrics["accuracy"],
            "onnx_max_abs_diff": float(np.abs(features - encoder.embed(images)).max()),
            "onnx_images_per_s": round(len(images) / onnx_s, 1)}


def write(figures: dict, args, title: str) -> None:
    command = command_line("images.py", STORE=args.artifacts)
    text = "\n".join([
        "| measure | value |", "|---|---|",
        f"| `clt evaluate ENC --knn 10` on the stored test split | {100 * figures['evaluate_knn_accuracy']:.2f} % |",
        f"| `clt predict ENC PNGS --knn 10` on the same {figures['images']:,} images as PNG files | "
        f"{100 * figures['predict_knn_accuracy']:.2f} % ({figures['predict_knn_s']} s) |",
        f"| `clt embed ENC --images PNGS --out x.npy`, decoding included | {figures['embed_images_per_s']:,} images/s "
        f"({figures['embed_images_s']} s) |",
        f"| probe accuracy (torch encoder, stored features) | {100 * figures['probe_accuracy']:.2f} % |",
        f"| probe accuracy on features of the exported ONNX encoder (onnxruntime) | "
        f"{100 * figures['onnx_probe_accuracy']:.2f} % (max abs diff {figures['onnx_max_abs_diff']:.1e}, "
        f"{figures['onnx_images_per_s']:,} images/s) |",
    ]) + f"\n\nCommand: `{command}` on {figures['cpu']} (2 cores).\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "images.md").write_text(text)
    pct = {"format": "pct", "digits": 2}
    write_record(RESULTS / "images.json", {**figures, "command": command}, study="images", title=title,
                 command=command, protocol=f"the encoder's test split written as PNG files; kNN {args.k}; ONNX "
                                           "export run by onnxruntime",
                 figures={f"evaluate {args.k}-NN %": {"path": "evaluate_knn_accuracy", **pct},
                          f"predict {args.k}-NN on PNGs %": {"path": "predict_knn_accuracy", **pct},
                          "embed images/s": {"path": "embed_images_per_s", "format": "num", "digits": 0},
                          "probe %": {"path": "probe_accuracy", **pct},
                          "probe on ONNX features %": {"path": "onnx_probe_accuracy", **pct}})
    print(text)


if __name__ == "__main__":
    main()
