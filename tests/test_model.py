"""utils.model: inputs/outputs, months output, augmentation only in training, seed baseline, weights transfer."""

import keras
import numpy as np
import pytest

from utils.parameters import load_parameters
from utils.model import (
    LAST_CONV_LAYER,
    build_model,
    load_initial_weights,
    measure_inference_speed,
    predict_months,
)

SIZE = 32
TINY = {**load_parameters("ci").network_options(), "widths": (4, 8), "dense_units": 8}


def tiny_model(**options):
    keras.utils.set_random_seed(0)
    return build_model(SIZE, target_mean=100.0, target_std=40.0, **{**TINY, **options})


def random_inputs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8), rng.integers(0, 2, n).astype(np.float32)


def test_inputs_outputs_and_last_conv():
    model = tiny_model()
    assert set(model.input) == {"image", "male"}
    assert tuple(model.input["image"].shape) == (None, SIZE, SIZE, 1)
    assert tuple(model.input["male"].shape) == (None, 1)
    assert tuple(model.output.shape) == (None, 1)
    assert len(model.get_layer(LAST_CONV_LAYER).output.shape) == 4


def test_output_is_destandardised_months():
    model = tiny_model()
    # Zero the standardised prediction: the model must then answer the target mean in months.
    dense = model.get_layer("standardised_age")
    dense.set_weights([np.zeros_like(weight) for weight in dense.get_weights()])
    images, male = random_inputs()
    np.testing.assert_allclose(predict_months(model, images, male), 100.0, atol=1e-4)
    dense.set_weights([np.zeros_like(dense.get_weights()[0]), np.ones(1)])
    np.testing.assert_allclose(predict_months(model, images, male), 140.0, atol=1e-3)


@pytest.mark.parametrize("bias, expected", [(-3.0, 0.0), (4.0, 240.0)])
def test_predictions_are_clipped_to_the_age_range(bias, expected):
    model = tiny_model()
    dense = model.get_layer("standardised_age")
    # 100 - 3 * 40 = -20 months and 100 + 4 * 40 = 260 months, outside 0..240.
    dense.set_weights([np.zeros_like(dense.get_weights()[0]), np.array([bias])])
    images, male = random_inputs()
    np.testing.assert_allclose(predict_months(model, images, male), expected)


def test_dropout_never_touches_the_sex_input():
    model = tiny_model(dropout=0.5)
    head_input = keras.Model(model.input, model.get_layer("head_dense").input)
    images, male = random_inputs(n=64)
    inputs = {"image": images[..., None].astype("float32"), "male": male[:, None]}
    for _ in range(3):
        sex_column = keras.ops.convert_to_numpy(head_input(inputs, training=True))[:, -1]
        np.testing.assert_array_equal(sex_column, male)


def test_augmentation_inactive_at_inference_and_active_in_training():
    model = tiny_model()
    images, male = random_inputs()
    first, second = predict_months(model, images, male), predict_months(model, images, male)
    np.testing.assert_array_equal(first, second)
    inputs = {"image": images[..., None].astype("float32"), "male": male[:, None]}
    training_a = keras.ops.convert_to_numpy(model(inputs, training=True))
    training_b = keras.ops.convert_to_numpy(model(inputs, training=True))
    assert not np.allclose(training_a, training_b)


def test_sex_changes_the_prediction_of_ours_but_not_of_the_seed_baseline():
    images, _ = random_inputs()
    ours = tiny_model()
    ours.get_layer("head_dense").set_weights([np.ones_like(w) for w in ours.get_layer("head_dense").get_weights()])
    assert not np.allclose(predict_months(ours, images, np.zeros(6)), predict_months(ours, images, np.ones(6)))
    seed = build_model(SIZE, architecture="seed_baseline", target_mean=100.0, target_std=40.0, widths=(4, 8))
    np.testing.assert_array_equal(predict_months(seed, images, np.zeros(6)), predict_months(seed, images, np.ones(6)))


def test_seed_baseline_has_the_seed_study_layers():
    model = build_model(48, architecture="seed_baseline", target_mean=120.0, target_std=40.0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 4
    assert kinds.count("BatchNormalization") == kinds.count("MaxPooling2D") == kinds.count("Dropout") == 4
    assert "GlobalAveragePooling2D" in kinds
    dense_units = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense_units == [512, 256, 128, 1]
    assert model.get_layer("standardised_age").activation.__name__ == "linear"
    assert {"augment_rotation", "augment_shift", "augment_zoom", "augment_flip"} <= {layer.name for layer in model.layers}
    assert model.get_layer(LAST_CONV_LAYER).filters == 256


def test_unknown_architecture_and_option_are_refused():
    with pytest.raises(ValueError, match="architecture"):
        build_model(SIZE, architecture="resnet", target_mean=0.0, target_std=1.0)
    with pytest.raises(ValueError, match="widht"):
        build_model(SIZE, target_mean=0.0, target_std=1.0, widht=(4,))


def test_tta_returns_one_prediction_per_image():
    model = tiny_model()
    images, male = random_inputs()
    predicted = predict_months(model, images, male, tta=True)
    assert predicted.shape == (6,) and np.all(np.isfinite(predicted))


def test_measure_inference_speed_reports_rates():
    speed = measure_inference_speed(tiny_model(), SIZE, n=64, batch_size=32, repeats=3)
    assert speed["batch_images_per_second"] > 0 and 0 < speed["single_image_seconds"] < 5


@pytest.mark.parametrize("file_name", ["source.keras", "source.weights.h5"])
def test_load_initial_weights_copies_matching_layers(tmp_path, file_name):
    source = tiny_model()
    source.get_layer("head_dense").set_weights([w + 1.0 for w in source.get_layer("head_dense").get_weights()])
    path = tmp_path / file_name
    source.save(path) if file_name.endswith(".keras") else source.save_weights(path)
    keras.utils.set_random_seed(1)
    target = build_model(SIZE, target_mean=100.0, target_std=40.0, **TINY)
    report = load_initial_weights(target, path)
    assert "head_dense" in report["loaded"] and LAST_CONV_LAYER + "_conv" in report["loaded"]
    for layer in source.layers:
        for expected, found in zip(layer.get_weights(), target.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(expected, found)


def test_load_initial_weights_skips_mismatched_shapes(tmp_path):
    source = tiny_model()
    source.save(tmp_path / "source.keras")
    wider = build_model(SIZE, target_mean=100.0, target_std=40.0, **{**TINY, "widths": (4, 16)})
    report = load_initial_weights(wider, tmp_path / "source.keras")
    assert "stem_conv" in report["loaded"]
    assert "shapes differ" in report["skipped"][LAST_CONV_LAYER + "_conv"]


def test_load_initial_weights_refuses_other_files(tmp_path):
    (tmp_path / "weights.txt").write_text("no")
    with pytest.raises(ValueError, match="weights.txt"):
        load_initial_weights(tiny_model(), tmp_path / "weights.txt")


def test_residual_blocks_start_as_the_identity_and_end_at_the_last_conv():
    model = tiny_model(block="residual")
    names = {layer.name for layer in model.layers}
    assert {"stage1_residual1_add", "stage2_residual1_project", LAST_CONV_LAYER} <= names
    # The second BatchNorm of each block starts at zero scale: the block adds nothing yet.
    assert not np.any(model.get_layer("stage1_residual1_b_bn").gamma.numpy())
    assert tiny_model(block="residual").count_params() > tiny_model().count_params()


def _trained_looking(model):
    """Random BatchNorm scales, shifts and moving statistics, so that folding them is not trivial."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.3, channels),
                               rng.normal(0, 0.3, channels), rng.uniform(0.2, 2.0, channels)])
    output = model.get_layer("standardised_age")  # small: the ages stay inside the clipped 0..240 months
    output.set_weights([rng.normal(0, 0.02, output.kernel.shape), np.zeros(1)])
    return model


def test_repvgg_blocks_have_three_branches_where_the_width_stays():
    names = {layer.name for layer in tiny_model(block="repvgg").layers}
    assert {"stage1_repvgg1_3x3_conv", "stage1_repvgg1_1x1_conv", "stage1_repvgg1_identity_bn"} <= names
    # 4 -> 8 filters: no identity branch in the first block of stage 2, one in the last block.
    assert "stage2_repvgg1_identity_bn" not in names and f"{LAST_CONV_LAYER}_identity_bn" in names


def test_repvgg_branches_fold_into_one_conv_with_the_same_predictions():
    from utils.model import fold_into

    trained = _trained_looking(tiny_model(block="repvgg"))
    fused = fold_into(trained, tiny_model(block="repvgg", fused=True))
    assert not [layer.name for layer in fused.layers if "_1x1_" in layer.name or "_identity_" in layer.name]
    assert fused.count_params() < trained.count_params()
    images, male = random_inputs()
    expected = predict_months(trained, images, male)
    assert np.ptp(expected) > 1.0  # the images give different ages: the comparison means something
    np.testing.assert_allclose(predict_months(fused, images, male), expected, atol=1e-3)


def test_for_inference_folds_repvgg_runs_only():
    from utils.model import build_for_run, for_inference

    parameters = load_parameters("ci", {"block": "repvgg", "widths": [4, 8], "dense_units": 8, "image_size": SIZE})
    keras.utils.set_random_seed(0)
    trained = _trained_looking(build_for_run(parameters, target_mean=100.0, target_std=40.0))
    shipped = for_inference(trained, parameters, target_mean=100.0, target_std=40.0)
    assert "stage1_repvgg1_conv" in {layer.name for layer in shipped.layers}
    images, male = random_inputs()
    np.testing.assert_allclose(predict_months(shipped, images, male), predict_months(trained, images, male), atol=1e-3)
    plain = tiny_model()
    assert for_inference(plain, load_parameters("ci"), target_mean=100.0, target_std=40.0) is plain


def test_progressive_resizing_trains_on_any_side_and_ships_at_image_size():
    from utils.model import build_for_run, for_inference

    parameters = load_parameters("ci", {"widths": [4, 8], "dense_units": 8, "image_size": SIZE,
                                        "progressive_image_size": 16, "progressive_epochs": 2})
    keras.utils.set_random_seed(0)
    trained = _trained_looking(build_for_run(parameters, target_mean=100.0, target_std=40.0))
    assert tuple(trained.input["image"].shape) == (None, None, None, 1)
    small_images, small_male = random_inputs()
    assert predict_months(trained, small_images[:, ::2, ::2], small_male).shape == (6,)
    shipped = for_inference(trained, parameters, target_mean=100.0, target_std=40.0)
    assert tuple(shipped.input["image"].shape) == (None, SIZE, SIZE, 1)
    images, male = random_inputs()
    np.testing.assert_allclose(predict_months(shipped, images, male), predict_months(trained, images, male), atol=1e-4)
    with pytest.raises(ValueError, match="any_size .* is for our network, not 'seed_baseline'"):
        build_model(SIZE, architecture="seed_baseline", target_mean=0.0, target_std=1.0, any_size=True)


def test_fold_into_refuses_a_network_of_other_parameters():
    from utils.model import fold_into

    with pytest.raises(ValueError, match="'stage1_repvgg1_conv' of the inference network is not in the trained one"):
        fold_into(tiny_model(), tiny_model(block="repvgg", fused=True))


def test_our_network_needs_every_option_from_the_parameters():
    options = dict(TINY)
    del options["dropout"]
    with pytest.raises(ValueError, match=r"missing option\(s\) \['dropout'\]"):
        build_model(SIZE, target_mean=0.0, target_std=1.0, **options)


@pytest.mark.parametrize("loss, expected", [("huber", keras.losses.Huber), ("l1", keras.losses.MeanAbsoluteError)])
def test_the_loss_parameter_chooses_the_loss(loss, expected):
    from utils.model import compile_model

    model = tiny_model()
    options = {**load_parameters("ci").training_options(), "loss": loss, "ema": True}
    compile_model(model, architecture="ours", learning_rate=1e-3, steps_per_epoch=4, epochs=2, **options)
    assert isinstance(model.loss, expected) and model.optimizer.use_ema


def test_distribution_head_predicts_the_expected_age_of_its_bins():
    from utils.model import distribution_centres

    model = tiny_model(head="distribution", age_bins=9)
    assert tuple(model.output.shape) == (None, 1)
    logits = model.get_layer("age_distribution")
    kernel, bias = logits.get_weights()
    images, male = random_inputs()
    # Equal logits: a uniform distribution over bins symmetric about 0 SD, so the mean age.
    logits.set_weights([np.zeros_like(kernel), np.zeros_like(bias)])
    np.testing.assert_allclose(predict_months(model, images, male), 100.0, atol=1e-3)
    # All the mass on bin 6 (+2 SD of -4..4 in 9 bins): 100 + 2 * 40 months.
    assert distribution_centres(9)[6] == pytest.approx(2.0)
    logits.set_weights([np.zeros_like(kernel), np.where(np.arange(9) == 6, 50.0, 0.0)])
    np.testing.assert_allclose(predict_months(model, images, male), 180.0, atol=1e-3)
    # Half on bin 1 (-3 SD), half on bin 6: the expectation lies between, not at either.
    logits.set_weights([np.zeros_like(kernel), np.where(np.isin(np.arange(9), (1, 6)), 50.0, 0.0)])
    np.testing.assert_allclose(predict_months(model, images, male), 100.0 + 40 * (-3 + 2) / 2, atol=1e-3)


def test_distribution_head_bins_stay_fixed_in_training_and_on_disk(tmp_path):
    from utils.model import compile_model, distribution_centres

    model = tiny_model(head="distribution", age_bins=12)
    compile_model(model, architecture="ours", learning_rate=1e-2, steps_per_epoch=2, epochs=1,
                  **load_parameters("ci").training_options())
    images, male = random_inputs(n=16)
    before = model.get_layer("age_distribution").get_weights()[0].copy()
    model.fit({"image": images[..., None].astype("float32"), "male": male[:, None]},
              np.linspace(20, 200, 16, dtype="float32")[:, None], batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(model.get_layer("age_distribution").get_weights()[0], before)  # the logits learn
    np.testing.assert_allclose(model.get_layer("standardised_age").get_weights()[0][:, 0], distribution_centres(12))
    model.save(tmp_path / "distribution.keras")
    loaded = keras.saving.load_model(tmp_path / "distribution.keras")
    np.testing.assert_allclose(predict_months(loaded, images, male), predict_months(model, images, male), atol=1e-4)


def test_distribution_head_computes_in_float32_under_mixed_precision():
    from utils.model import set_precision, to_float32

    try:
        set_precision("mixed_bfloat16")
        model = tiny_model(head="distribution", age_bins=9)
        assert model.get_layer("head_dense").compute_dtype == "bfloat16"
        assert {model.get_layer(name).compute_dtype for name in ("age_distribution", "standardised_age")} == {"float32"}
    finally:
        set_precision("none")
    images, male = random_inputs()
    np.testing.assert_allclose(predict_months(to_float32(model), images, male), predict_months(model, images, male),
                               atol=0.5)
