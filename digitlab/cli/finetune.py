"""`digitlab finetune RUN --data feedback:DB|folder:PATH --out NEW_RUN`: teach a run your handwriting.

    digitlab feedback export ~/.local/share/digitlab/feedback.sqlite my_digits    # or collect a folder yourself
    digitlab finetune runs/fastcnn --data folder:my_digits --out runs/fastcnn-mine
    digitlab finetune runs/fastcnn --data feedback:feedback.sqlite --out runs/mine --epochs 6 --freeze none

Prints the held-out share, before/after figures and whether the new run is promoted (digitlab.finetune);
the new run's report.html shows the same. Exit code 0 when promoted, 3 when not (the run is kept either way).
"""
from __future__ import annotations

from digitlab.cli import run_family, typed

NOT_PROMOTED = 3  # exit code: the fine-tuned run is written, but is worse on MNIST or on the held-out digits


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a run on your own digits (corrections or a folder), keeping MNIST")
    p.add_argument("run", help="the run directory to start from")
    p.add_argument("--data", required=True, help="feedback:DB (the server's corrections) or folder:PATH "
                   "(subfolders 0/ ... 9/ of images)")
    p.add_argument("--out", required=True, help="the new run directory (must be empty or missing)")
    p.add_argument("--overwrite", action="store_true", help="replace a digitlab run already in --out")
    p.add_argument("--epochs", type=typed(int, "epochs"), default=None)
    p.add_argument("--lr", type=typed(float, "lr"), default=None)
    p.add_argument("--replay", type=typed(int, "replay"), default=None, help="MNIST training images mixed in")
    p.add_argument("--holdout", type=typed(float, "holdout"), default=None,
                   help="share of your digits held out per label (default: 0.25)")
    p.add_argument("--freeze", choices=["auto", "none", "features"], default=None,
                   help="auto (default): freeze a CNN's convolutional layers, nothing of a dense net")
    p.add_argument("--seed", type=typed(int, "seed"), default=None)
    p.set_defaults(func=cmd_finetune, family=lambda args: run_family(args.run))


def cmd_finetune(args) -> int:
    import dataclasses

    from digitlab.finetune import FinetuneConfig, finetune, user_digits
    from digitlab.runs import open_run
    run = open_run(args.run)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "replay", "holdout", "freeze", "seed")
                 if getattr(args, k) is not None}
    cfg = dataclasses.replace(FinetuneConfig(), **overrides)
    digits = user_digits(args.data)
    for name, why in digits.skipped:
        print(f"skipped: {name}: {why}")
    new = finetune(run, digits, args.out, cfg, overwrite=args.overwrite)
    s = new.metrics.extra["finetune"]
    b, a = s["before"], s["after"]
    print(f"your digits: {s['user_digits']} ({s['user_train']} trained on, {s['user_held_out']} held out, "
          f"stratified); MNIST replay: {s['replay']}; frozen: {s['freeze']}; {s['seconds']:.1f} s")
    print(f"held-out accuracy: {100 * b['user_held_out_accuracy']:.1f}% -> {100 * a['user_held_out_accuracy']:.1f}%")
    print(f"MNIST test accuracy: {100 * b['mnist_test_accuracy']:.2f}% -> {100 * a['mnist_test_accuracy']:.2f}%")
    print(f"held-out digits that changed answer: {len(s['changed'])}")
    if s["promoted"]:
        print(f"promoted: {new.path} (report: {new.path / 'report.html'})")
        return 0
    print(f"not promoted: {'; '.join(s['not_promoted_because'])} (the run is kept in {new.path})")
    return NOT_PROMOTED
