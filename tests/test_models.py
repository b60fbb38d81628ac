"""The model registry: every registered model builds, outputs probabilities and learns; the MLP's options work."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from digitlab.models import BUILDERS, create_model
from digitlab.registry import check_params, get_model_info, model_names, model_params


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("name", model_names())
def test_every_model_builds_outputs_probabilities_and_learns(name):
    import keras
    keras.utils.set_random_seed(0)
    model = create_model(name)
    x, y = _batch()
    proba = np.asarray(model.predict_on_batch(x))
    assert proba.shape == (16, 10)
    assert not np.isnan(proba).any()
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)

    # Learning: ten SGD steps on one batch fit it. The training-mode loss (dropout on, batch statistics)
    # falls, and so does the inference-mode loss (BatchNormalization's moving statistics lag, so less).
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    start = float(model.evaluate(x, y, verbose=0))
    losses = [float(np.asarray(model.train_on_batch(x, y))) for _ in range(10)]
    assert all(not np.isnan(np.asarray(w)).any() for w in model.trainable_weights)
    assert np.mean(losses[-3:]) < losses[0], f"training loss did not fall: {losses}"
    assert float(model.evaluate(x, y, verbose=0)) < start, "the loss on the batch it trained on did not fall"


@pytest.mark.parametrize("name", model_names())
def test_registered_recipe_is_a_valid_training_config(name):
    from digitlab.config import TrainConfig, apply_overrides, validate
    info = get_model_info(name)
    assert info.family in ("dense", "conv")
    validate(apply_overrides(TrainConfig(model=name), info.defaults))


def _plain(value):
    """Tuples and lists compare equal: a builder default (1024, 1024) is the registry's [1024, 1024]."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def test_builders_are_exactly_the_registered_models():
    assert sorted(BUILDERS) == model_names()


@pytest.mark.parametrize("name", model_names())
def test_builder_keyword_defaults_are_the_registered_params(name):
    """timm-style: the registry's params table (read without Keras) is exactly what each builder takes."""
    signature = inspect.signature(BUILDERS[name])
    defaults = {p.name: p.default for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    assert all(v is not inspect.Parameter.empty for v in defaults.values()), f"{name}: a parameter has no default"
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values())
    assert _plain(defaults) == _plain(get_model_info(name).params)
    assert _plain(model_params(name)) == _plain(defaults)


def test_parameter_counts_match_the_published_architectures():
    # Independent references: LeNet-5 as usually rebuilt in Keras has 61,706 parameters, and
    # keras-io's mnist_convnet prints "Total params: 34,826" in its model.summary().
    assert create_model("lenet5").count_params() == 61_706
    assert create_model("convnet").count_params() == 34_826
    # The tutorial's network: 784*128 + 128 + 128*10 + 10.
    assert create_model("seed-ann").count_params() == 101_770


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="known models: .*mlp"):
        get_model_info("resnet-9000")


def test_unknown_parameter_is_rejected_naming_the_known_ones():
    with pytest.raises(ValueError, match="no parameter 'hidden'.*none"):
        check_params("lenet5", {"hidden": [10]})
    with pytest.raises(ValueError, match="its parameters: hidden, activation"):
        create_model("mlp", hiden=[10])
    assert "widths" in model_params("fastcnn")


def test_mlp_hidden_sizes_activation_and_per_layer_dropout():
    from keras import layers
    model = create_model("mlp", hidden="64,32", activation="tanh", dropout=[0.1, 0.4])
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    assert [d.units for d in dense] == [64, 32, 10]
    assert [d.activation.__name__ for d in dense] == ["tanh", "tanh", "softmax"]
    assert [layer.rate for layer in model.layers if isinstance(layer, layers.Dropout)] == [0.1, 0.4]


def test_mlp_batchnorm_puts_the_activation_after_the_normalisation():
    model = create_model("mlp", hidden=[32], batchnorm=True, dropout=0.0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Flatten", "Dense", "BatchNormalization", "Activation", "Dense"]
    assert not model.layers[1].use_bias  # BN's shift does the bias's job


def test_mlp_l2_penalty_is_added_to_the_loss(tmp_path):
    import keras

    from digitlab.predictor import load_keras_model
    x, y = _batch(8)
    plain = create_model("mlp", hidden=[16], dropout=0.0)
    penalised = create_model("mlp", hidden=[16], dropout=0.0, l2=0.01)
    penalised.set_weights(plain.get_weights())
    for m in (plain, penalised):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    kernels = [w for w in penalised.get_weights() if w.ndim == 2]
    expected_penalty = 0.01 * sum(float(np.sum(k ** 2)) for k in kernels)  # the tutorial's regularizers.l2(0.01)
    gap = float(penalised.evaluate(x, y, verbose=0)) - float(plain.evaluate(x, y, verbose=0))
    assert gap == pytest.approx(expected_penalty, rel=1e-3)
    # The penalty is Keras' own L1L2 on every Dense kernel, stored in the model file: a loaded model adds it too.
    penalised.save(tmp_path / "m.keras")
    again = load_keras_model(tmp_path / "m.keras")
    dense = [layer for layer in again.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2
    for layer in dense:
        reg = layer.kernel_regularizer
        assert isinstance(reg, keras.regularizers.L1L2) and (reg.l1, reg.l2) == pytest.approx((0.0, 0.01))
    again.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert float(again.evaluate(x, y, verbose=0)) == pytest.approx(float(penalised.evaluate(x, y, verbose=0)), rel=1e-6)


def test_mlp_max_norm_caps_each_units_incoming_weights():
    import keras
    model = create_model("mlp", hidden=[8], dropout=0.0, max_norm=0.5)
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="sparse_categorical_crossentropy")
    x, y = _batch(32)
    for _ in range(3):
        model.train_on_batch(x, y)
    kernel = np.asarray(model.layers[1].kernel)  # (784, 8): axis 0 is a unit's incoming weights
    assert np.linalg.norm(kernel, axis=0).max() <= 0.5 + 1e-5


@pytest.mark.parametrize("bad, match", [({"activation": "swish"}, "unknown activation"),
                                        ({"dropout": [0.1, 0.2, 0.3]}, "one per hidden layer"),
                                        ({"hidden": "0"}, "positive size"),
                                        ({"dropout": 1.0}, r"in \[0, 1\)")])
def test_mlp_rejects_bad_options_with_a_useful_message(bad, match):
    with pytest.raises(ValueError, match=match):
        create_model("mlp", **bad)


def test_saved_models_load_in_safe_mode(tmp_path):
    """Every model must load with safe_mode=True (no lambdas), as predict and serve load them."""
    import keras

    from digitlab.predictor import load_keras_model as load_model
    x, _ = _batch(4)
    for name in model_names():
        model = create_model(name)
        model.save(tmp_path / f"{name}.keras")
        again = load_model(tmp_path / f"{name}.keras")
        np.testing.assert_allclose(np.asarray(again.predict_on_batch(x)), np.asarray(model.predict_on_batch(x)),
                                   atol=1e-6)
        keras.backend.clear_session()
