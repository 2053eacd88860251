"""Peak memory of `clt download --from` against the size of what it stores, and the refusal of
decompression bombs, each in a fresh process:

    python bench/import_memory.py cifar10 ../shared/datasets/cifar10-jpeg.tar.gz
    python bench/import_memory.py bomb /tmp/pixbomb.tar.gz

Prints the outcome, the wall time, the peak resident set (ru_maxrss) and, for a successful
import, the bytes of the stored uint8 images, so peak minus output is the import's overhead.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time

import clt


def main() -> None:
    name, source = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as store:
        try:
            result = clt.download(name, source, store=store)
            info = result.manifest["dataset"]
            pixels = (info["train"] + info["test"]) * int(__import__("math").prod(info["shape"]))
            outcome = f"stored {info['train']} + {info['test']} images, {pixels / 2**20:.0f} MiB of uint8"
        except clt.CltError as err:
            outcome = f"refused: {err.message}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name}: {outcome}; {time.perf_counter() - started:.1f} s, peak resident {peak:.0f} MiB")


if __name__ == "__main__":
    main()
