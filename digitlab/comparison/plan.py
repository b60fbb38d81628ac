"""What a comparison will do, decided before anything trains: the models, their data, what is re-used.

    cfg = CompareConfig(models=("kmeans", "knn", "seed-ann"), train_size=10_000, max_train={"knn": 5000})
    checked = check_config(cfg, "runs/compare")   # .models: kmeans-10, kmeans-64, kmeans-256, knn, seed-ann
    plans = plan_models(checked, load_dataset("mnist"))
    plans[3].train_images, plans[3].reuse          # 5000, True if runs/compare/knn holds that very fit

`check_config` needs no data and runs once per comparison; `plan_models` then sizes each model's
training set and checks the SHA-256 of every saved model it will re-use, so a tampered file stops
the run before anything trains. A model is re-used only when its manifest was signed by digitlab on
this machine (manifest.signed_here; or the user vouched for the folder with `trust_folder`) and its
fit key (data checksum, training size, seed, hyperparameters, library versions) is the one that
manifest recorded. A saved model whose manifest was not signed here is trained again, never loaded:
its plan says `foreign`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from digitlab import classic, registry
from digitlab.comparison import signing
from digitlab.comparison.manifest import MANIFEST, Manifest, read_manifest, signed_here
from digitlab.config import TrainConfig, apply_overrides, to_dict
from digitlab.data import Dataset
from digitlab.environment import versions
from digitlab.errors import ConfigError, RunError
from digitlab.runs import MODEL_FILE, Run

DEFAULT_MODELS = ("logreg", "knn", "svm", "rf", "xgboost", "kmeans", "seed-ann")
ALIASES = {"kmeans": tuple(classic.kmeans_name(k) for k in classic.KMEANS_DEFAULT_CLUSTERS),
           "classic": tuple(classic.classic_names())}
QUICK_TRAIN_SIZE = 10_000  # --quick: training images per model; the whole default set runs in minutes
# Training images held out of every model's training (a seeded, stratified split: `digitlab train`'s default
# --val 5000, so a network's validation split is this very split) to calibrate each model by temperature
# scaling and measure its calibration: without held-out images a model cannot be calibrated honestly.
CALIBRATION_IMAGES = 5_000
CLASSIC_VERSIONS = ("scikit-learn", "xgboost", "numpy")  # a pickle from other versions may load wrongly: refit
NEURAL_VERSIONS = ("keras",)


@dataclass(frozen=True)
class CompareConfig:
    models: tuple[str, ...] = DEFAULT_MODELS  # classic names, "kmeans" (= kmeans-10/64/256), registered networks
    dataset: str = "mnist"  # mnist | fashion-mnist
    train_size: int = 0  # training images per model; 0 = all but the calibration split (55,000 for MNIST)
    test_size: int = 0  # test images; 0 = the whole test set (10,000). Smaller only for smoke tests
    max_train: dict = field(default_factory=dict)  # per-model cap on training images, e.g. {"svm": 20000}
    params: dict = field(default_factory=dict)  # per-model hyperparameter overrides: {"xgboost": {"n_estimators": 50}}
    neural_epochs: int = 0  # epochs for registered networks; 0 = each network's registered default
    seed: int = 0  # seeds the subsets, the classic models' randomness and the networks' training
    calibration: int = CALIBRATION_IMAGES  # training images held out to calibrate every model; 0 = none (no ECE after)
    retrain: bool = False  # train again even where a saved model with the same settings exists
    # Re-use saved models whose manifests this machine did not sign (a folder the user copied in and
    # trusts). joblib models are pickles: loading one runs whatever code it holds.
    trust_folder: bool = False


class CompareError(ConfigError):
    """A bad argument, found before anything trains; the message says what to change."""


# ---------------------------------------------------------------- names and flags

def expand_models(names) -> tuple[str, ...]:
    """Aliases expanded, duplicates dropped, order kept: ("kmeans", "knn") -> (kmeans-10, -64, -256, knn)."""
    out: list[str] = []
    for name in names:
        for n in ALIASES.get(name, (name,)):
            if n not in out:
                out.append(n)
    return tuple(out)


def model_kind(name: str) -> str:
    """"classic", "clustering" or "neural"; an unknown name raises CompareError listing the known ones."""
    try:
        spec = classic.classic_spec(name)
    except ConfigError as exc:  # kmeans-N with too few clusters
        raise CompareError(str(exc)) from exc
    if spec is not None:
        return "clustering" if spec.estimator == "kmeans" else "classic"
    if name in registry.model_names():
        return "neural"
    raise CompareError(f"unknown model {name!r}; known: {', '.join(classic.CLASSIC)}, "
                       f"kmeans (= {', '.join(ALIASES['kmeans'])}; any kmeans-N with N >= 10), classic (all of "
                       f"these) and the registered networks {', '.join(registry.model_names())}")


def parse_assignments(text: str, what: str) -> dict[str, str]:
    """"svm=20000, knn=5000" -> {"svm": "20000", "knn": "5000"}; `what` names the flag in errors."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CompareError(f"{what}: expected NAME=VALUE, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def parse_max_train(text: str) -> dict[str, int]:
    """One --max-train: "svm=20000,knn=5000" -> {"svm": 20000, "knn": 5000} (check_config checks the sizes)."""
    out = {}
    for name, raw in parse_assignments(text, "--max-train").items():
        try:
            out[name] = int(raw)
        except ValueError:
            raise CompareError(f"--max-train {name}={raw}: the size must be a whole number of images") from None
    return out


def parse_settings(text: str) -> dict[str, dict]:
    """One --set: "xgboost.n_estimators=50" -> {"xgboost": {"n_estimators": 50}}, typed like the default value."""
    out: dict[str, dict] = {}
    for dotted, raw in parse_assignments(text, "--set").items():
        name, _, key = dotted.partition(".")
        if not key or classic.classic_spec(name) is None:
            raise CompareError(f"--set {dotted}={raw}: expected CLASSIC_MODEL.SETTING=VALUE "
                               f"(classic models: {', '.join(classic.classic_names())})")
        defaults = classic.resolved_params(name)
        if key not in defaults:
            raise CompareError(f"--set {dotted}: {name} has no setting {key!r}; settable: {', '.join(defaults)}")
        out.setdefault(name, {})[key] = _typed_like(defaults[key], raw, f"--set {dotted}")
    return out


def _typed_like(default, raw: str, what: str):
    # The hyperparameters are plain constructor arguments with no declared types; the default's
    # type is the one the estimator expects.
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise CompareError(f"{what}: expected a {type(default).__name__}, got {raw!r}") from None
    for kind in (int, float):  # a string setting may also take a number (svm gamma="scale" or 0.05)
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


# ---------------------------------------------------------------- the checks that need no data

@dataclass(frozen=True)
class CheckedConfig:
    """A CompareConfig that passed check_config, with its models expanded and their kinds."""
    cfg: CompareConfig
    out: Path  # exists and is writable
    kinds: dict[str, str]  # model name -> "classic" | "clustering" | "neural", in the order compared

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.kinds)


def check_config(cfg: CompareConfig, out_dir: str | Path) -> CheckedConfig:
    """Validate everything that needs no data, and create the output folder. Raises CompareError."""
    models = expand_models(cfg.models)
    if not models:
        raise CompareError("no models to compare: pass --models NAME[,NAME...]")
    kinds = {name: model_kind(name) for name in models}
    for flag, size in (("--train-size", cfg.train_size), ("--test-size", cfg.test_size)):
        if size < 0:  # 0 means "all of them" here; the CLI rejects an explicit 0
            raise CompareError(f"{flag} must be a positive number of images, got {size}")
    for name, cap in cfg.max_train.items():
        if name not in kinds:
            raise CompareError(f"--max-train {name}={cap}: {name} is not among the models compared "
                               f"({', '.join(models)})")
        if cap < 1:
            raise CompareError(f"--max-train {name}={cap}: a model needs at least 1 training image")
    for name, overrides in cfg.params.items():
        if name not in kinds:
            raise CompareError(f"--set {name}.*: {name} is not among the models compared ({', '.join(models)})")
        if kinds[name] == "neural":
            raise CompareError(f"--set {name}.*: --set is for classic models; {name} is a network (see --epochs)")
        try:
            classic.resolved_params(name, overrides)
        except ConfigError as exc:
            raise CompareError(str(exc)) from None
    if cfg.neural_epochs < 0:
        raise CompareError(f"--epochs must be 1 or more, got {cfg.neural_epochs}")
    if cfg.calibration < 0:
        raise CompareError(f"the calibration split must be 0 or more images, got {cfg.calibration}")
    out = Path(out_dir)
    _check_writable(out)
    signing.machine_key()  # made now if need be: a state folder we can't write fails before hours of training
    return CheckedConfig(cfg, out, kinds)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CompareError(f"cannot write to the output folder {out}: {exc.strerror or exc}. "
                           f"Pass --out with a folder you can write to.") from None


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class ModelPlan:
    name: str
    kind: str  # "classic", "clustering" or "neural"
    description: str
    train_images: int
    seed: int
    params: dict | None  # classic models: the hyperparameters, overrides applied
    train_config: TrainConfig | None  # networks: what digitlab.training.train runs
    fit_key: dict  # everything the fitted model depends on; a saved model is reused only if this matches
    reuse: bool  # a saved model with this fit_key exists (and its SHA-256 checks out): evaluate only
    saved: Manifest | None = None  # when reuse: the manifest believed, whose SHA-256 the model file matched
    foreign: bool = False  # a saved model is there, but this machine did not sign its manifest: trained again
    adopt: bool = False  # reuse of a foreign manifest under trust_folder: it is signed here once loaded


def plan_comparison(cfg: CompareConfig, out_dir: str | Path, ds: Dataset) -> list[ModelPlan]:
    """check_config, then plan_models: for callers that have not checked the config yet."""
    return plan_models(check_config(cfg, out_dir), ds)


def plan_models(checked: CheckedConfig, ds: Dataset) -> list[ModelPlan]:
    """One plan per model: its training size, its fit key and whether its saved model is reused.

    Every saved model that will be reused has its SHA-256 checked here (classic.ModelIntegrityError).
    A manifest this machine did not sign is not read any further, unless `cfg.trust_folder`."""
    cfg = checked.cfg
    n_train, n_test = pool_size(cfg, ds), len(ds.y_test)
    if n_train < 1:
        raise CompareError(f"a calibration split of {cfg.calibration} images leaves none of {ds.name}'s "
                           f"{len(ds.y_train)} training images to train on")
    if cfg.train_size > n_train:
        held = f" ({cfg.calibration} more are held out for calibration)" if cfg.calibration else ""
        raise CompareError(f"--train-size {cfg.train_size}: {ds.name} has only {n_train} training images{held}")
    if cfg.test_size > n_test:
        raise CompareError(f"--test-size {cfg.test_size}: {ds.name} has only {n_test} test images")
    plans = []
    for name, kind in checked.kinds.items():
        size = min(cfg.train_size or n_train, cfg.max_train.get(name, n_train))
        if kind == "neural":
            plan = _neural_plan(cfg, name, size, ds)
        else:
            plan = _classic_plan(cfg, name, kind, size, ds)
        if not cfg.retrain:
            plan = _reuse(plan, checked.out / name, cfg.trust_folder)
        plans.append(plan)
    return plans


def pool_size(cfg: CompareConfig, ds: Dataset) -> int:
    """The training images a model may train on: the training set less the calibration split."""
    return len(ds.y_train) - cfg.calibration


def split_config(cfg: CompareConfig, train_images: int = 0) -> TrainConfig:
    """The TrainConfig whose data.prepare_split is compare's: the calibration split held out as its validation
    split ("0": none), then a seeded, stratified subset of `train_images` of the rest (0: all of it)."""
    return TrainConfig(val=str(cfg.calibration), seed=cfg.seed, train_size=train_images)


def _classic_plan(cfg: CompareConfig, name: str, kind: str, size: int, ds: Dataset) -> ModelPlan:
    spec = classic.classic_spec(name)
    if kind == "clustering" and size < spec.params["n_clusters"]:
        raise CompareError(f"{name} needs at least {spec.params['n_clusters']} training images, got {size}")
    params = classic.resolved_params(name, cfg.params.get(name))
    key = _fit_key(name, ds, size, cfg.seed, params=params, calibration=cfg.calibration,
                   versions=versions(CLASSIC_VERSIONS))
    return ModelPlan(name, kind, spec.description, size, cfg.seed, params, None, key, False)


def _neural_plan(cfg: CompareConfig, name: str, size: int, ds: Dataset) -> ModelPlan:
    tc = neural_train_config(cfg, name, size, pool_size(cfg, ds))
    key = _fit_key(name, ds, size, cfg.seed, train_config=to_dict(tc), versions=versions(NEURAL_VERSIONS))
    return ModelPlan(name, "neural", registry.get_model_info(name).description, size, cfg.seed, None, tc, key, False)


def neural_train_config(cfg: CompareConfig, name: str, train_images: int, n_available: int) -> TrainConfig:
    """The TrainConfig for a registered network: its own defaults, the calibration split as its validation split
    (so it trains on exactly the classic models' images), our subset."""
    tc = apply_overrides(TrainConfig(model=name), registry.get_model_info(name).defaults)
    split = split_config(cfg, 0 if train_images >= n_available else train_images)
    return dataclasses.replace(tc, dataset=cfg.dataset, seed=split.seed, val=split.val, train_size=split.train_size,
                               epochs=cfg.neural_epochs or tc.epochs)


def _fit_key(name: str, ds: Dataset, size: int, seed: int, **settings) -> dict:
    key = {"model": name, "dataset": ds.name, "data_sha256": ds.provenance.get("sha256"),
           "train_images": size, "seed": seed, **settings}
    return json.loads(json.dumps(key))  # the form it takes in manifest.json, for comparison


MODEL_FILES = {"classic": {classic.JOBLIB_FILE, classic.XGBOOST_FILE}, "clustering": {classic.JOBLIB_FILE},
               "neural": {MODEL_FILE}}  # what a manifest of each kind may name, beside it


def _reuse(plan: ModelPlan, folder: Path, trust_folder: bool) -> ModelPlan:
    """`plan`, marked to re-use the saved model in `folder` if its manifest is believed and matches."""
    manifest = read_manifest(folder)
    if manifest is None:
        return plan
    here = signed_here(manifest)
    if not here and not trust_folder:
        return dataclasses.replace(plan, foreign=True)  # its claims (hash, settings) are nobody's we know
    if _saved_model_matches(folder, manifest, plan.fit_key, plan.kind):
        return dataclasses.replace(plan, reuse=True, saved=manifest, adopt=not here)
    return plan


def _saved_model_matches(folder: Path, manifest: Manifest, key: dict, kind: str) -> bool:
    if (manifest.fit_key != key or manifest.kind != kind or not isinstance(manifest.model_file, str)
            or manifest.model_file not in MODEL_FILES[kind]):
        return False
    path = folder / manifest.model_file
    if not path.is_file():
        return False
    if kind == "neural" and not _completed(folder):
        return False
    actual = classic.sha256_file(path)
    if actual != manifest.model_sha256:
        raise classic.ModelIntegrityError(
            f"{path} has SHA-256 {actual[:16]}..., not the {str(manifest.model_sha256)[:16]}... recorded in "
            f"{folder / MANIFEST} when it was saved: the file changed since. Refusing to load it; "
            f"pass --retrain to train it again (or delete {folder}).")
    return True


def _completed(folder: Path) -> bool:
    """A network's run finished all its epochs (an interrupted one is trained again)."""
    try:
        return Run(folder).state.status == "completed"
    except RunError:  # a damaged or foreign state.json: train again rather than trust it
        return False
