"""Peak memory of `clt download --from` against the size of what it stores, and the refusal of
decompression bombs, each in a fresh process:

    python bench/import_memory.py cifar10 PATH/TO/cifar10-jpeg.tar.gz
    python bench/import_memory.py --make-bombs bombs/      # the issue's two archive bombs, rebuilt
    python bench/import_memory.py pixbomb bombs/pixbomb.tar.gz

Prints the outcome, the wall time, the peak resident set (ru_maxrss) and, for a successful
import, the bytes of the stored uint8 images, so peak minus output is the import's overhead.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import clt


def make_bombs(folder: Path) -> None:
    """The issue's archives: two 10000x10000 black PNGs (under 1 KB gzipped), and one 600 MB member."""
    import io
    import tarfile

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.MAX_IMAGE_PIXELS = None  # building the bomb, not reading it
    png = io.BytesIO()
    Image.new("L", (10000, 10000)).save(png, format="PNG", optimize=True)

    class Zeros(io.RawIOBase):
        def __init__(self, n: int):
            self.n = n

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            k = min(len(buffer), self.n)
            buffer[:k] = bytes(k)
            self.n -= k
            return k

    with tarfile.open(folder / "pixbomb.tar.gz", "w:gz") as tar:
        for i in range(2):
            info = tarfile.TarInfo(f"a/{i}.png")
            info.size = len(png.getvalue())
            tar.addfile(info, io.BytesIO(png.getvalue()))
    with tarfile.open(folder / "sizebomb.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("a/big.png")
        info.size = 600 * 2**20
        tar.addfile(info, io.BufferedReader(Zeros(info.size)))
    for name in ("pixbomb", "sizebomb"):
        print(f"{folder / name}.tar.gz: {(folder / f'{name}.tar.gz').stat().st_size:,} bytes")


def main() -> None:
    if sys.argv[1] == "--make-bombs":
        make_bombs(Path(sys.argv[2]))
        return
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
