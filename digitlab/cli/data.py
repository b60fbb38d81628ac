"""`digitlab data`: load a dataset, print where it came from and its class counts, write a sample grid.

    digitlab data                          # MNIST: source, SHA-256, cache, per-class counts, samples.png
    digitlab data --dataset fashion-mnist --out fashion.png
"""
from __future__ import annotations

from digitlab.data import SPECS


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="load a dataset, print its provenance and class counts, write a sample grid")
    p.add_argument("--dataset", default="mnist", choices=list(SPECS))
    p.add_argument("--data-dir", help="folder with the four IDX files or mnist.npz (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--out", default="samples.png", help="PNG grid of sample digits to write (default: samples.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

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
