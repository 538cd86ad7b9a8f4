"""Heads: the estimator's parameters and labels, networks, ArcFace, errors, persistence."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score

from kenner.config.sections import SECTIONS
from kenner.config.tree import RunConfig
from kenner.errors import InvalidInput, KennerError
from kenner.heads import EmbeddingClassifier, head_params, load_head, save_head
from kenner.heads.arcface import ArcFace, margin_at, margin_logits
from kenner.heads.modules import build_head_net
from kenner.loop.epochs import make_generator
from kenner.loop.history import check_history
from synthetic import blobs

torch.set_num_threads(1)

FAST = dict(epochs=15, batch_size=32, lr=0.01, device="cpu")


# --- parameters ---------------------------------------------------------------------------------------


def test_parameters_are_the_config_fields_with_their_defaults() -> None:
    sections = ("head", "optim", "schedule", "early_stopping", "arcface", "loss")
    fields = {f.name: f.default for name in sections for f in dataclasses.fields(SECTIONS[name])}
    fields["device"] = "auto"
    del fields["loss"]  # fine-tuning's objective (ce | supcon); a head's SupCon is supcon_weight
    assert EmbeddingClassifier().get_params() == fields
    signature = inspect.signature(EmbeddingClassifier)
    assert [p for p in signature.parameters.values() if p.kind != p.KEYWORD_ONLY] == [signature.parameters["head_type"]]


def test_head_params_come_from_a_run_config() -> None:
    cfg = RunConfig().replace(lr=0.05, head_type="mlp", hidden_sizes="64,32", device="cpu", arcface_margin=0.2)
    params = head_params(cfg)
    assert params == {
        **EmbeddingClassifier().get_params(),
        "lr": 0.05,
        "head_type": "mlp",
        "hidden_sizes": (64, 32),
        "device": "cpu",
        "arcface_margin": 0.2,
    }
    assert EmbeddingClassifier(**params).settings() == params


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"head_type": "tree"}, "--head-type"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"lr": 0.0}, "--lr"),
        ({"epochs": 0}, "--epochs"),
        ({"hardmine_epochs": 200}, "--hardmine-epochs"),
        ({"head_type": "mlp", "hidden_sizes": ()}, "--hidden-sizes"),
        ({"supcon_weight": 0.5}, "--supcon-weight"),
        ({"head_type": "arcface", "mixup": 0.2}, "--mixup"),
        ({"balanced_softmax": True, "logit_adjust": "train"}, "--balanced-softmax"),
        ({"device": "tpu"}, "--device"),
        ({"epochs": 2.5}, "--epochs"),
        ({"monitor": "recall_at_1"}, "--monitor"),
    ],
)
def test_invalid_parameters_fail_at_fit_naming_the_flag(values: dict, flag: str) -> None:
    X, y = blobs([10, 10])
    clf = EmbeddingClassifier(**values)  # no validation in __init__ (scikit-learn's rule)
    with pytest.raises(KennerError, match=flag):
        clf.fit(X, y)


def test_sklearn_clone_set_params_grid_search_and_cross_validation() -> None:
    clf = EmbeddingClassifier(lr=0.05, epochs=3)
    copy = clone(clf).set_params(lr=0.2, label_smoothing=0.1)
    assert copy.lr == 0.2 and copy.label_smoothing == 0.1 and clf.lr == 0.05
    X, y = blobs([20, 20, 20])
    assert cross_val_score(EmbeddingClassifier(**FAST), X, y, cv=2).min() > 0.9
    search = GridSearchCV(EmbeddingClassifier(**FAST), {"lr": [1e-4, 1e-2]}, cv=2).fit(X, y)
    assert search.best_params_ == {"lr": 1e-2}


# --- labels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_heads_separate_gaussian_blobs(head_type: str) -> None:
    X, y = blobs([60, 60, 60, 60])
    X_test, y_test = blobs([50] * 4, draw=1)
    clf = EmbeddingClassifier(head_type, hidden_sizes=(32,), **FAST).fit(X, y)
    assert clf.score(X_test, y_test) > 0.95
    proba = clf.predict_proba(X_test)
    assert proba.shape == (200, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X_test), proba.argmax(axis=1))
    np.testing.assert_array_equal(clf.decision_function(X_test).argmax(axis=1), proba.argmax(axis=1))
    check_history(clf.history_)


def test_classes_come_from_the_labels() -> None:
    X, y = blobs([20, 20, 20])
    tens = EmbeddingClassifier(**FAST).fit(X, (y + 1) * 10)
    np.testing.assert_array_equal(tens.classes_, [10, 20, 30])
    assert set(tens.predict(X)) <= {10, 20, 30} and tens.score(X, (y + 1) * 10) > 0.9
    names = np.array(["ant", "bee", "cat"])
    words = EmbeddingClassifier(**FAST).fit(X, names[y])
    np.testing.assert_array_equal(words.classes_, names)
    assert words.score(X, names[y]) > 0.9 and words.predict(X).dtype.kind == "U"


def test_classes_fix_the_class_list_when_some_are_absent() -> None:
    X, y = blobs([20, 20])
    clf = EmbeddingClassifier(**FAST).fit(X, np.array(["b", "d"])[y], classes=["a", "b", "c", "d", "e"])
    np.testing.assert_array_equal(clf.classes_, ["a", "b", "c", "d", "e"])
    assert clf.predict_proba(X).shape == (40, 5)
    assert set(clf.predict(X)) <= {"b", "d"}
    with pytest.raises(InvalidInput, match=r"row 0 .*label 'x'"):
        EmbeddingClassifier(**FAST).fit(X, y, X_val=X[:3], y_val=["x", 0, 1], classes=[0, 1])


def test_binary_decision_function_is_the_logit_difference() -> None:
    X, y = blobs([30, 30])
    clf = EmbeddingClassifier(**FAST, logit_adjust="infer").fit(X, np.array(["no", "yes"])[y])
    decision = clf.decision_function(X)
    assert decision.shape == (60,)
    np.testing.assert_allclose(decision, np.diff(clf.logits(X).astype(np.float64), axis=1)[:, 0])
    np.testing.assert_array_equal(np.where(decision > 0, "yes", "no"), clf.predict(X))


def test_embed_returns_penultimate_features() -> None:
    X, y = blobs([20, 20])
    mlp = EmbeddingClassifier("mlp", hidden_sizes=(16, 4), epochs=1, device="cpu").fit(X, y)
    assert mlp.embed(X).shape == (40, 4)
    linear = EmbeddingClassifier(standardize="center", epochs=1, device="cpu").fit(X, y)
    np.testing.assert_allclose(linear.embed(X), X - X.mean(axis=0), atol=1e-5)


def test_gelu_ln_adds_layernorm_and_gelu() -> None:
    X, y = blobs([20, 20])
    plain = EmbeddingClassifier("mlp", hidden_sizes=(16, 8), epochs=1, device="cpu").fit(X, y)
    fancy = EmbeddingClassifier("mlp", hidden_sizes=(16, 8), gelu_ln=True, epochs=1, device="cpu").fit(X, y)

    def kinds(clf: EmbeddingClassifier) -> list[str]:
        return [type(m).__name__ for m in clf.model_.blocks.modules()]

    assert kinds(plain).count("ReLU") == 2 and "LayerNorm" not in kinds(plain) and "GELU" not in kinds(plain)
    assert kinds(fancy).count("LayerNorm") == 2 and kinds(fancy).count("GELU") == 2 and "ReLU" not in kinds(fancy)


def test_bad_inputs_are_value_errors_that_say_what_is_wrong() -> None:
    X, y = blobs([10, 10])
    bad = X.copy()
    bad[7, 2] = np.nan
    for call in (
        lambda: EmbeddingClassifier(epochs=1, device="cpu").fit(bad, y),
        lambda: EmbeddingClassifier(epochs=1, device="cpu").fit(X, y).predict(bad),
    ):
        with pytest.raises(InvalidInput, match=r"row 7 .*NaN") as raised:
            call()
        assert isinstance(raised.value, ValueError) and isinstance(raised.value, KennerError)
    with pytest.raises(InvalidInput, match="one class"):
        EmbeddingClassifier(epochs=1, device="cpu").fit(X, np.zeros(20))
    with pytest.raises(InvalidInput, match="Unknown label type"):
        EmbeddingClassifier(epochs=1, device="cpu").fit(X, np.linspace(0, 1, 20))
    with pytest.raises(InvalidInput, match="inconsistent numbers of samples"):
        EmbeddingClassifier(epochs=1, device="cpu").fit(X, y[:-1])
    assert EmbeddingClassifier(epochs=1, calibrate=True, device="cpu").fit(X, y).temperature_ == 1.0  # no val rows
    clf = EmbeddingClassifier(epochs=1, device="cpu").fit(X, y)
    with pytest.raises(InvalidInput, match="X has 4 features, but EmbeddingClassifier is expecting 8"):
        clf.predict(X[:, :4])


# --- ArcFace ------------------------------------------------------------------------------------------


def test_arcface_margin_logits_give_pml_arcface_loss() -> None:
    """Cross-entropy of our margin logits is pytorch-metric-learning's ArcFaceLoss on the same weights."""
    gen = torch.Generator().manual_seed(0)
    features, labels = torch.randn(12, 5, generator=gen), torch.tensor([0, 1, 2, 3] * 3)
    head = ArcFace(5, 4, scale=10.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4, 5, generator=gen))
        head.weight[1] = -features[1]  # theta = pi for that target: pml's monotonic fallback branch
    reference = ArcFaceLoss(4, 5, margin=math.degrees(0.5), scale=10.0)
    reference.W.data.copy_(head.loss.W.data)
    torch.testing.assert_close(F.cross_entropy(head(features, labels), labels), reference(features, labels))
    torch.testing.assert_close(margin_logits(head.loss, features, labels), head(features, labels))
    cosine = F.normalize(features) @ F.normalize(head.weight).T
    torch.testing.assert_close(head(features), 10.0 * cosine)  # inference: s * cos, no margin
    target = cosine[torch.arange(12), labels]
    theta = torch.acos(target.clamp(-1, 1))
    shifted = torch.where(theta <= math.pi - 0.5, torch.cos(theta + 0.5), target - 0.5 * math.sin(0.5))
    torch.testing.assert_close(head(features, labels)[torch.arange(12), labels], 10.0 * shifted)


def test_margin_schedule() -> None:
    assert [margin_at(e, margin=0.4, warmup_epochs=2, ramp_epochs=1) for e in range(5)] == pytest.approx(
        [0, 0, 0.2, 0.4, 0.4]
    )
    assert [margin_at(e, margin=0.3, warmup_epochs=1, ramp_epochs=0) for e in range(3)] == [0, 0.3, 0.3]
    assert margin_at(0, margin=0.3, warmup_epochs=0, ramp_epochs=2) == pytest.approx(0.1)


@pytest.mark.parametrize("hidden_sizes", [(), (32, 16)])
def test_arcface_head_trains_and_predicts(hidden_sizes: tuple[int, ...]) -> None:
    X, y = blobs([50, 50, 50])
    X_test, y_test = blobs([30, 30, 30], draw=1)
    clf = EmbeddingClassifier(
        "arcface", hidden_sizes=hidden_sizes, arcface_margin=0.3, arcface_scale=16, margin_warmup_epochs=2, **FAST
    ).fit(X, y, X_val=X_test, y_val=y_test)
    assert isinstance(clf.model_.classifier, ArcFace)
    assert clf.score(X_test, y_test) > 0.95
    assert np.abs(clf.decision_function(X_test)).max() <= 16 + 1e-4  # s * cos at inference, no margin
    assert [r["margin"] for r in clf.history_[:3]] == [0.0, 0.0, 0.3]


# --- persistence --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs",
    [
        dict(
            head_type="mlp",
            hidden_sizes=(16,),
            gelu_ln=True,
            standardize="standardize",
            logit_adjust="infer",
            calibrate=True,
            supcon_weight=0.1,
        ),
        dict(head_type="arcface", hidden_sizes=(8,), standardize="center"),
    ],
)
def test_save_load_round_trip_predicts_identically(tmp_path: Path, knobs: dict) -> None:
    X, y = blobs([30, 10, 5])
    labels = np.array(["gold", "silver", "bronze"])[y]
    clf = EmbeddingClassifier(epochs=3, batch_size=16, device="cpu", **knobs).fit(X, labels, X_val=X, y_val=labels)
    save_head(clf, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["head.json", "head.safetensors"]
    loaded = load_head(tmp_path / "model")
    assert loaded.get_params() == clf.get_params()
    assert loaded.temperature_ == clf.temperature_ and loaded.best_epoch_ == clf.best_epoch_
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.embed(X), clf.embed(X))
    assert EmbeddingClassifier.load(clf.save(tmp_path / "again")).history_ == clf.history_


def test_load_head_reports_missing_and_corrupt_folders(tmp_path: Path) -> None:
    with pytest.raises(KennerError, match="no saved head"):
        load_head(tmp_path / "nowhere")
    with pytest.raises(KennerError, match="not been fitted"):
        save_head(EmbeddingClassifier(), tmp_path / "unfitted")
    X, y = blobs([10, 10])
    folder = save_head(EmbeddingClassifier(epochs=1, device="cpu").fit(X, y), tmp_path / "model")
    weights = (folder / "head.safetensors").read_bytes()
    (folder / "head.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(KennerError, match="corrupt"):
        load_head(folder)
    (folder / "head.safetensors").write_bytes(weights)
    meta = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(KennerError, match="upgrade kenner"):
        load_head(folder)
    (folder / "head.json").write_text(json.dumps({**meta, "input_dim": 3}))
    with pytest.raises(KennerError, match="inconsistent"):
        load_head(folder)
    (folder / "head.json").write_text(json.dumps({**meta, "params": {**meta["params"], "lr": -1}}))
    with pytest.raises(KennerError, match="--lr"):
        load_head(folder)
    (folder / "head.json").write_text("{not json")
    with pytest.raises(KennerError, match="corrupt"):
        load_head(folder)


def test_build_is_seeded_by_the_generator() -> None:
    params = EmbeddingClassifier("mlp", hidden_sizes=(8,), supcon_weight=0.5).get_params()
    a = build_head_net(params, 4, 3, make_generator(1)).state_dict()
    b = build_head_net(params, 4, 3, make_generator(1)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("projection.") for k in a)


def test_the_fine_tuning_objective_is_refused_for_a_head() -> None:
    with pytest.raises(KennerError, match="--loss supcon fine-tunes an encoder"):
        head_params(RunConfig().replace(loss="supcon"))
