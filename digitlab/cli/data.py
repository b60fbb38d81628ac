"""`digitlab data`: load a dataset, print where it came from and its class counts, write a sample grid.

    digitlab data                          # MNIST: source, SHA-256, cache, per-class counts, samples.png
    digitlab data --dataset fashion-mnist --out fashion.png
    digitlab data --dataset folder:my_digits   # your own digits, in subfolders 0/ ... 9/; bad files listed
"""
from __future__ import annotations

import argparse

from digitlab.data import SPECS


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="load a dataset, print its provenance and class counts, write a sample grid")
    p.add_argument("--dataset", default="mnist", type=dataset_name, metavar="{" + ",".join(SPECS) + ",folder:PATH}",
                   help="a known dataset, or folder:PATH, a folder of your own digits in subfolders 0/ ... 9/")
    p.add_argument("--data-dir", help="folder with the four IDX files or mnist.npz (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--out", default="samples.png", help="PNG grid of sample digits to write (default: samples.png)")
    p.set_defaults(func=run)


def dataset_name(raw: str) -> str:
    if raw in SPECS or (raw.startswith("folder:") and len(raw) > len("folder:")):
        return raw
    raise argparse.ArgumentTypeError(f"invalid choice: {raw!r} (choose from {', '.join(SPECS)}, or folder:PATH)")


def run(args) -> int:
    import numpy as np

    if args.dataset.startswith("folder:"):
        return run_folder(args)

    from digitlab.data import load_dataset
    from digitlab.plots import samples_png, save_png
    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    p = ds.provenance
    print(f"dataset: {ds.name}\nsource:  {p['source']} ({p['detail']})\nsha256:  {p['sha256']}\ncache:   {p['cache']}")
    print(f"train:   {len(ds.y_train)} images {ds.x_train.shape[1:]} {ds.x_train.dtype}; test: {len(ds.y_test)}")
    print(f"{'class':>14} {'train':>7} {'test':>6}")
    for c, name in enumerate(ds.class_names):
        print(f"{name:>14} {int(np.sum(ds.y_train == c)):>7} {int(np.sum(ds.y_test == c)):>6}")
    save_png(args.out, samples_png(ds.x_train, ds.y_train, ds.class_names))
    print(f"sample grid: {args.out}")
    return 0


def run_folder(args) -> int:
    import numpy as np

    from digitlab.folders import read_digit_folder
    from digitlab.plots import samples_png, save_png
    digits = read_digit_folder(args.dataset.removeprefix("folder:"))
    print(f"dataset: folder {digits.path}\nimages:  {len(digits.y)} read, {len(digits.bad)} skipped")
    for name, why in digits.bad:
        print(f"skipped: {name}: {why}")
    print(f"{'class':>14} {'images':>7}")
    for c in range(10):
        print(f"{c:>14} {int(np.sum(digits.y == c)):>7}")
    save_png(args.out, samples_png(digits.x, digits.y, [str(d) for d in range(10)]))
    print(f"sample grid: {args.out}")
    return 0
