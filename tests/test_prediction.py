"""digitlab.prediction and `digitlab predict`: per-file errors, folder expansion, one batch, --save-input."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from digitlab.prediction import FilePrediction, collect_inputs, predict_paths
from digitlab.predictor import Predictor


class CentroidModel(Predictor):
    """A stand-in model: nearest class mean of 2000 MNIST training digits (about 80% accurate).

    It records its calls, so tests can check that all good inputs go through in one batch.
    """

    def __init__(self, mnist):
        x = mnist.x_train[:2000].reshape(2000, -1) / 255.0
        self.means = np.stack([x[mnist.y_train[:2000] == c].mean(0) for c in range(10)])
        self.batches: list[int] = []
        super().__init__(self.forward, name="centroid", runtime="numpy")

    def forward(self, x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32 and x.shape[1:] == (28, 28) and x.min() >= 0 and x.max() <= 1
        self.batches.append(len(x))
        d = ((x.reshape(len(x), 1, -1) - self.means[None]) ** 2).sum(-1)  # (n, 10)
        e = np.exp(-(d - d.min(1, keepdims=True)))
        return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def model(mnist):
    return CentroidModel(mnist)


def as_photo_png(digit: np.ndarray, scale: int = 4) -> bytes:
    """An MNIST digit as a user would send it: dark ink on white, enlarged, in a wider frame."""
    im = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    frame = Image.new("L", (28 * scale + 60, 28 * scale + 20), 255)
    frame.paste(im, (45, 5))
    buf = io.BytesIO()
    frame.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def inputs(tmp_path, mnist):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a_seven.png").write_bytes(as_photo_png(mnist.x_test[0]))
    (d / "b_two.png").write_bytes(as_photo_png(mnist.x_test[1]))
    np.save(d / "c_three.npy", mnist.x_test[2:5])
    (d / "d_blank.png").write_bytes(as_photo_png(np.zeros((28, 28), np.uint8)))
    (d / "e_text.png").write_text("not a png")
    np.save(d / "f_nan.npy", np.full((28, 28), np.nan))
    (d / "notes.txt").write_text("ignored in folders")
    (d / ".hidden.png").write_bytes(as_photo_png(mnist.x_test[0]))
    (d / "sub").mkdir()
    return d


def test_collect_inputs_expands_folders_and_keeps_explicit_files(inputs, tmp_path):
    got = collect_inputs([inputs, inputs / "notes.txt", tmp_path / "missing.png"])
    assert [p.name for p in got] == ["a_seven.png", "b_two.png", "c_three.npy", "d_blank.png", "e_text.png",
                                     "f_nan.npy", "sub", "notes.txt", "missing.png"]  # a subfolder is reported, not skipped (issue 15, D7)
    assert collect_inputs([inputs / "sub"]) == [inputs / "sub"]  # an empty folder stays, to fail


def test_mixed_good_and_bad_files(inputs, tmp_path, model, mnist):
    model.batches.clear()
    results = predict_paths(model, [inputs, inputs / "notes.txt", tmp_path / "missing.png", inputs / "sub"])
    by = {(r.path.split("/")[-1], r.index): r for r in results}
    good = [r for r in results if r.ok]
    assert len(good) == 6 and model.batches == [5]  # 2 images + 3 digits of the .npy, one call; the blank: none
    assert [by["c_three.npy", i].ok for i in range(3)] == [True] * 3
    # A blank image is a verdict, not an error (issue 11): no model runs, no probabilities, no digit.
    blank = by["d_blank.png", None]
    assert blank.ok and blank.verdict.kind == "blank" and blank.digit is None and blank.top3 == []

    errors = {k[0]: r.error for k, r in by.items() if not r.ok}
    assert "not an image" in errors["e_text.png"]
    assert "NaN" in errors["f_nan.npy"]
    assert "not an image" in errors["notes.txt"]
    assert "no such file" in errors["missing.png"]
    assert "no images" in errors["sub"]
    for r in results:
        assert (r.verdict is None) == (r.error is not None)


def test_predictions_are_what_the_model_says_about_the_digit(inputs, model, mnist):
    results = predict_paths(model, [inputs / "a_seven.png", inputs / "b_two.png", inputs / "c_three.npy"])
    direct = model(mnist.x_test[:5].astype(np.float32) / 255)
    for r, p in zip(results, direct):
        assert r.best == int(np.argmax(p)) and r.verdict.kind == "digit" and r.digit == r.best  # clear digits
        assert r.probability == pytest.approx(r.top3[0][1])
        assert [c for c, _ in r.top3] == list(np.argsort(-p)[:3])  # the images survive preprocessing
        assert r.top3[0][1] >= r.top3[1][1] >= r.top3[2][1]
    assert [r.index for r in results] == [None, None, 0, 1, 2]


def test_save_input_writes_what_the_model_saw(inputs, tmp_path, model):
    out = tmp_path / "seen"
    results = predict_paths(model, [inputs], save_input_dir=out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_seven-28x28.png", "b_two-28x28.png", "c_three-0-28x28.png", "c_three-1-28x28.png",
                     "c_three-2-28x28.png"]
    saved = np.asarray(Image.open(out / "a_seven-28x28.png"))
    assert np.array_equal(saved, np.round(results[0].input28 * 255).astype(np.uint8))


def test_save_input_never_overwrites_an_input(tmp_path, model, mnist):
    # The user points --save-input at the input folder; same stems from two folders.
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "d-28x28.png").write_bytes(as_photo_png(mnist.x_test[0]))
    (tmp_path / "d.png").write_bytes(as_photo_png(mnist.x_test[1]))
    (tmp_path / "x" / "d.png").write_bytes(as_photo_png(mnist.x_test[2]))
    before = (tmp_path / "x" / "d-28x28.png").read_bytes()
    predict_paths(model, [tmp_path / "x", tmp_path / "d.png"], save_input_dir=tmp_path / "x")
    assert (tmp_path / "x" / "d-28x28.png").read_bytes() == before
    assert {"d-28x28-28x28.png", "d-28x28-2.png", "d-28x28-3.png"} <= {p.name for p in (tmp_path / "x").iterdir()}


def test_all_bad_means_no_model_call(tmp_path, model):
    model.batches.clear()
    results = predict_paths(model, [tmp_path / "nope.png"])
    assert model.batches == [] and not results[0].ok


def test_to_json_has_no_array(inputs, model):
    results = predict_paths(model, [inputs / "a_seven.png", inputs / "e_text.png"])
    items = json.loads(json.dumps([r.to_json() for r in results]))
    assert set(items[0]) == {"path", "index", "verdict", "digit", "best", "runner_up", "probability", "top3",
                             "ood_score", "explanation", "error"}
    assert items[0]["error"] is None and len(items[0]["top3"]) == 3 and items[0]["verdict"] == "digit"
    assert items[1]["digit"] is None and items[1]["verdict"] is None and items[1]["error"]
    assert isinstance(results[0], FilePrediction) and results[0].input28.shape == (28, 28)


# ---------------------------------------------------------------- the command

class FakeRun:
    class_names = [str(d) for d in range(10)]


@pytest.fixture
def cli(monkeypatch, model):
    """Run `digitlab predict` through main() with a fake run and model (no keras, no training)."""
    import digitlab.runs
    from digitlab.cli import main
    from digitlab.errors import RunError

    def open_run(path):
        if "missing" in str(path):
            raise RunError(f"{path} is not a run directory (train one with `digitlab train`)")
        return FakeRun()

    monkeypatch.setattr(digitlab.runs, "open_run", open_run)
    monkeypatch.setattr(Predictor, "from_run", classmethod(lambda cls, run: model))

    def invoke(*argv):
        return main(["predict", *map(str, argv)])
    return invoke


def test_cli_text_output(cli, inputs, capsys):
    assert cli("runs/x", inputs / "a_seven.png", inputs / "c_three.npy") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert out[0].startswith(f"{inputs / 'a_seven.png'}: digit ")
    assert "(p=" in out[0] and "  top3: " in out[0]
    assert out[1].startswith(f"{inputs / 'c_three.npy'}[0]: digit ")


def test_cli_errors_go_to_stderr_with_status_1(cli, inputs, capsys):
    assert cli("runs/x", inputs / "a_seven.png", inputs / "e_text.png") == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    assert captured.err.startswith(f"{inputs / 'e_text.png'}: ERROR not an image")


def test_cli_json(cli, inputs, tmp_path, capsys):
    assert cli("runs/x", inputs, "--json", "--save-input", tmp_path / "seen") == 1
    items = json.loads(capsys.readouterr().out)
    assert len(items) == 9 and sum(i["error"] is None for i in items) == 6  # the blank image: a verdict
    assert [i["verdict"] for i in items if i["path"].endswith("d_blank.png")] == ["blank"]
    assert all(i["label"] == (str(i["digit"]) if i["digit"] is not None else None) for i in items)
    assert len(list((tmp_path / "seen").iterdir())) == 5


def test_cli_missing_run_is_a_usage_error(cli, inputs, capsys):
    assert cli("runs/missing", inputs / "a_seven.png") == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_unwritable_save_input(cli, inputs, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli("runs/x", inputs / "a_seven.png", "--save-input", tmp_path / "file" / "sub") == 2
    assert "--save-input" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not-a-model", "folder"])
def test_cli_unloadable_model_is_a_usage_error(tmp_path, inputs, capsys, damage):
    # The real command and real Keras on a damaged run: one clear line, exit 2, no traceback.
    from digitlab.cli import main
    run = tmp_path / "run"
    run.mkdir()
    model = run / "model.keras"
    if damage == "garbage":
        model.write_bytes(b"\0" * 100)
    elif damage == "truncated":  # a zip cut short, as by a full disk or an interrupted copy
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("config.json", "{}" + " " * 5000)
        model.write_bytes(buf.getvalue()[:200])
    elif damage == "not-a-model":
        with zipfile.ZipFile(model, "w") as z:
            z.writestr("config.json", "{not json")
    else:
        model.mkdir()
    assert main(["predict", str(run), str(inputs / "a_seven.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("digitlab: error: cannot load the model") and len(err.splitlines()) == 1
    assert str(model) in err and "digitlab train" in err
    assert "Traceback" not in err and "File not found" not in err  # Keras' own words mislead here


@pytest.mark.slow
def test_real_run_reads_real_digits(trained_run, mnist, tmp_path):
    # End to end with a trained network: MNIST test digits sent as dark-on-light PNGs.
    from digitlab.runs import open_run
    for i in range(30):
        (tmp_path / f"{i:02d}.png").write_bytes(as_photo_png(mnist.x_test[i]))
    results = predict_paths(Predictor.from_run(open_run(trained_run.path)), [tmp_path])
    accuracy = np.mean([r.best == y for r, y in zip(results, mnist.y_test[:30])])
    assert accuracy >= 0.9
