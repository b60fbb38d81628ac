"""`digitlab export RUN...`: the run's model as ONNX (and LiteRT), each checked against Keras on the test set.

    digitlab export runs/20261126-071500-fastcnn-s0                  # model.onnx, then predict/serve use it
    digitlab export runs/... --format onnx --format litert           # and model.tflite for phones
    digitlab export runs/*-bestcnn-seeds3-s0/s*                       # several runs in one go
    digitlab export runs/... --quantize                               # and model.int8.onnx, if accurate enough

An export is kept only if it gives Keras' top class on >= 99.99% of the test images and no probability
differs by more than 1e-4; the figures go to the run's export.json. `digitlab train` and `digitlab
ensemble` export ONNX by default when they finish (--no-export to skip). --quantize adds an int8 copy of
model.onnx, kept if its test accuracy is at most 0.1 points below model.onnx's; one not kept does not fail
the export. predict and serve keep running model.onnx.
"""
from __future__ import annotations

from digitlab.export import FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX (and LiteRT), checked against Keras",
                       description="Writes model.onnx (and model.tflite) into each run, keeping a file only if it "
                                   "matches the Keras model on the whole test set; the check goes to export.json.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (from `digitlab train` or `ensemble`)")
    p.add_argument("--format", dest="formats", action="append", choices=FORMATS,
                   help="onnx (default) or litert (TF Lite); repeat for both")
    p.add_argument("--quantize", action="store_true",
                   help="also write model.int8.onnx (onnxruntime's quantizer: dynamic for dense networks, static for "
                        "CNNs), kept only if its test accuracy is at most 0.1 points below model.onnx's; its size and "
                        "speed go to export.json")
    # The converters run on TensorFlow, the backend a "conv" run gets (digitlab.export says why).
    p.set_defaults(func=cmd_export, family=lambda args: "conv")


def cmd_export(args) -> int:
    from digitlab.runs import open_run
    runs = [open_run(path) for path in args.runs]
    export_and_print(runs, args.formats or ["onnx"], quantize=args.quantize)
    return 0


def export_and_print(runs, formats=("onnx",), dataset=None, started=None, quantize=False) -> None:
    """Export `runs` and print one line per file kept (and one for an int8 copy, kept or not); what `train` and
    `ensemble` call when they finish. `started`: the export already started (export.start_export), to wait for."""
    from digitlab.export import describe, export_runs
    from digitlab.quantize import describe_quantized
    results = started.result() if started else export_runs(runs, formats, dataset=dataset, quantize=quantize)
    for run, checks in zip(runs, results, strict=True):
        for check in checks.values():
            print(f"exported:      {run.export_path(check.format)} ({check.size_bytes / 1024:,.0f} KB): "
                  f"{describe(check)}; checked in {check.seconds:.1f} s")
            if check.quantized is not None:
                q = check.quantized
                print(f"{'exported:' if q.passed else 'int8:':<15}{run.path / q.file}: {describe_quantized(q)}")


def export_after(runs, dataset=None, started=None) -> None:
    """The ONNX export `train` and `ensemble` end with: if it fails, the error says the runs themselves are fine."""
    from digitlab.export import ExportError
    try:
        export_and_print(runs, dataset=dataset, started=started)
    except ExportError as exc:
        raise ExportError(f"{exc}\nthe training itself is complete and evaluated: predict and serve will run the "
                          "Keras model (--no-export skips this step)") from exc
