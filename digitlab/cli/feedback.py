"""`digitlab feedback`: the corrections users sent to `digitlab serve` (POST /api/feedback).

    digitlab feedback stats                       # the default database (the user's data folder)
    digitlab feedback stats my.sqlite             # counts per label, the model's accuracy on them
    digitlab feedback export my.sqlite my_digits  # my_digits/0/*.png ... my_digits/9/*.png, as the model saw them

The exported folder is a dataset: `digitlab data --dataset folder:my_digits`, `digitlab finetune RUN --data
folder:my_digits`.
"""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("feedback", help="the corrections sent to the server: stats, export as a folder of digits")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("stats", help="corrections per label and the model's accuracy on them")
    s.add_argument("db", nargs="?", default=None, help="the feedback database (default: the user's data folder)")
    s.set_defaults(func=cmd_stats)
    e = actions.add_parser("export", help="write the corrections as OUT/0/*.png ... OUT/9/*.png")
    e.add_argument("db", help="the feedback database")
    e.add_argument("out", help="folder to write (created; existing files of the same names are replaced)")
    e.set_defaults(func=cmd_export)


def _open(path):
    from pathlib import Path

    from digitlab.errors import DataError
    from digitlab.feedback import FeedbackStore, default_db_path
    where = Path(path) if path else default_db_path()
    if not where.is_file():
        raise DataError(f"no feedback database at {where}: corrections are stored where `digitlab serve "
                        "--feedback-db PATH` puts them")
    return FeedbackStore.open(where)


def cmd_stats(args) -> int:
    with _open(args.db) as store:
        stats = store.stats()
        print(f"database: {store.path}\ncorrections: {stats.total}")
    print(f"{'label':>6} {'count':>6}")
    for label, n in stats.per_label.items():
        print(f"{label:>6} {n:>6}")
    if stats.model_accuracy is not None:
        print(f"the model already read {stats.model_correct} of {stats.total} right "
              f"({100 * stats.model_accuracy:.1f}%)")
    return 0


def cmd_export(args) -> int:
    from digitlab.folders import write_digit_folder
    with _open(args.db) as store:
        items = list(store.corrections())
    written = write_digit_folder(args.out, [c.x28 for c in items], [c.label for c in items],
                                 names=[str(c.id) for c in items])
    print(f"wrote {len(written)} digits to {args.out}/0 ... {args.out}/9")
    return 0
