"""Heads: config, estimator contract (sklearn), networks, ArcFace head, persistence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from kenner.errors import KennerError
from kenner.heads import HEADS, EmbeddingClassifier, HeadConfig, create_head, load_head, save_head
from kenner.heads.modules import CosineMarginClassifier
from kenner.train.loop import make_generator
from synthetic import blobs

torch.set_num_threads(1)


FAST = dict(epochs=15, batch_size=32, lr=0.01, device="cpu")


# --- HeadConfig ---------------------------------------------------------------------------------------

def test_config_round_trips_through_json() -> None:
    config = HeadConfig(head_type="mlp", hidden_sizes=(64, 32), gelu_ln=True, mixup=0.2, calibrate=True)
    raw = json.loads(json.dumps(config.to_dict()))
    assert raw["hidden_sizes"] == [64, 32]
    assert HeadConfig.from_dict(raw) == config


def test_every_config_field_has_help() -> None:
    import dataclasses

    for f in dataclasses.fields(HeadConfig):
        assert f.metadata.get("help"), f.name


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
        ({"manifold_mixup": 0.2}, "--manifold-mixup"),
        ({"head_type": "arcface", "mixup": 0.2}, "--head-type"),
        ({"balanced_softmax": True, "logit_adjust": "train"}, "--balanced-softmax"),
        ({"device": "tpu"}, "--device"),
    ],
)
def test_invalid_config_names_the_flag(values: dict, flag: str) -> None:
    with pytest.raises(KennerError, match=flag):
        HeadConfig(**values)


def test_from_dict_rejects_unknown_and_mistyped_fields() -> None:
    with pytest.raises(KennerError, match="unknown field"):
        HeadConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(KennerError, match="--epochs"):
        HeadConfig.from_dict({"epochs": 2.5})
    with pytest.raises(KennerError, match="--calibrate"):
        HeadConfig.from_dict({"calibrate": "yes"})


# --- estimator contract -------------------------------------------------------------------------------

@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_heads_separate_gaussian_blobs(head_type: str) -> None:
    X, y = blobs([60, 60, 60, 60])
    X_test, y_test = blobs([50] * 4, draw=1)
    clf = create_head(head_type, hidden_sizes=(32,), **FAST).fit(X, y)
    assert clf.score(X_test, y_test) > 0.95
    proba = clf.predict_proba(X_test)
    assert proba.shape == (200, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X_test), proba.argmax(axis=1))
    np.testing.assert_array_equal(clf.decision_function(X_test).argmax(axis=1), proba.argmax(axis=1))


def test_classes_follow_n_classes_even_when_some_are_absent() -> None:
    X, y = blobs([20, 20])
    clf = EmbeddingClassifier(**FAST).fit(X, y * 2, n_classes=5)  # classes 0 and 2 only
    np.testing.assert_array_equal(clf.classes_, np.arange(5))
    assert clf.predict_proba(X).shape == (40, 5)
    assert set(clf.predict(X)) <= {0, 2}


def test_embed_returns_penultimate_features() -> None:
    X, y = blobs([20, 20])
    mlp = EmbeddingClassifier(head_type="mlp", hidden_sizes=(16, 4), epochs=1, device="cpu").fit(X, y)
    assert mlp.embed(X).shape == (40, 4)
    linear = EmbeddingClassifier(standardize="center", epochs=1, device="cpu").fit(X, y)
    np.testing.assert_allclose(linear.embed(X), X - X.mean(axis=0), atol=1e-5)


def test_gelu_ln_adds_layernorm_and_gelu() -> None:
    X, y = blobs([20, 20])
    plain = EmbeddingClassifier(head_type="mlp", hidden_sizes=(16, 8), epochs=1, device="cpu").fit(X, y)
    fancy = EmbeddingClassifier(head_type="mlp", hidden_sizes=(16, 8), gelu_ln=True, epochs=1, device="cpu")
    fancy.fit(X, y)

    def kinds(clf: EmbeddingClassifier) -> list[str]:
        return [type(m).__name__ for m in clf.model_.blocks.modules()]

    assert kinds(plain).count("ReLU") == 2 and "LayerNorm" not in kinds(plain) and "GELU" not in kinds(plain)
    assert kinds(fancy).count("LayerNorm") == 2 and kinds(fancy).count("GELU") == 2 and "ReLU" not in kinds(fancy)


def test_sklearn_clone_get_set_params_and_cross_validation() -> None:
    clf = EmbeddingClassifier(lr=0.05, epochs=3)
    assert clf.get_params() == {"config": HeadConfig(lr=0.05, epochs=3)}
    copy = clone(clf)
    assert copy.config == clf.config and copy is not clf
    copy.set_params(lr=0.2, label_smoothing=0.1)
    assert copy.config.lr == 0.2 and copy.config.label_smoothing == 0.1 and clf.config.lr == 0.05
    assert clone(EmbeddingClassifier()).config is None
    with pytest.raises(KennerError, match="unknown head option"):
        EmbeddingClassifier(learning_rate=0.1)
    X, y = blobs([20, 20, 20])
    scores = cross_val_score(EmbeddingClassifier(**FAST), X, y, cv=2)
    assert scores.min() > 0.9


def test_create_head_registry() -> None:
    assert HEADS.list() == ["arcface", "linear", "mlp"]
    head = create_head("mlp", hidden_sizes=(8,), lr=0.1)
    assert isinstance(head, EmbeddingClassifier)
    assert head.config.head_type == "mlp" and head.config.lr == 0.1
    with pytest.raises(KennerError, match="unknown head 'svm'"):
        create_head("svm")


def test_bad_inputs_raise_clear_errors() -> None:
    X, y = blobs([10, 10])
    bad = X.copy()
    bad[7, 2] = np.nan
    with pytest.raises(KennerError, match=r"row 7 .*NaN"):
        EmbeddingClassifier(epochs=1, device="cpu").fit(bad, y)
    with pytest.raises(KennerError, match=r"row 3 .*class 5"):
        EmbeddingClassifier(epochs=1, device="cpu").fit(X, np.where(np.arange(20) == 3, 5, y), n_classes=2)
    with pytest.raises(KennerError, match="integer class indices"):
        EmbeddingClassifier(epochs=1, device="cpu").fit(X, y.astype(str))
    with pytest.raises(KennerError, match="calibrate"):
        EmbeddingClassifier(epochs=1, calibrate=True, device="cpu").fit(X, y)
    clf = EmbeddingClassifier(epochs=1, device="cpu").fit(X, y)
    with pytest.raises(KennerError, match=r"4 columns.*built for 8"):
        clf.predict(X[:, :4])


# --- ArcFace ------------------------------------------------------------------------------------------

def test_cosine_margin_classifier_matches_a_naive_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    features, labels = torch.randn(6, 5, generator=gen), torch.tensor([0, 1, 2, 3, 0, 1])
    module = CosineMarginClassifier(5, 4, scale=10.0, margin=0.5)
    module.weight.data = torch.randn(4, 5, generator=gen)
    module.weight.data[1] = -features[1]  # theta = pi for that target: the fallback branch
    logits = module(features, labels)
    plain = module(features)
    for i in range(6):
        for c in range(4):
            f, w = features[i].tolist(), module.weight[c].tolist()
            cos = sum(a * b for a, b in zip(f, w, strict=True)) / math.hypot(*f) / math.hypot(*w)
            assert plain[i, c].item() == pytest.approx(10.0 * cos, abs=1e-4)
            if c == labels[i]:
                theta = math.acos(max(-1.0, min(1.0, cos)))
                expected = math.cos(theta + 0.5) if theta + 0.5 < math.pi else cos - 0.5 * math.sin(0.5)
                assert logits[i, c].item() == pytest.approx(10.0 * expected, abs=1e-4)
            else:
                assert logits[i, c].item() == pytest.approx(10.0 * cos, abs=1e-4)


@pytest.mark.parametrize("hidden_sizes", [(), (32, 16)])
def test_arcface_head_trains_and_predicts(hidden_sizes: tuple[int, ...]) -> None:
    X, y = blobs([50, 50, 50])
    X_test, y_test = blobs([30, 30, 30], draw=1)
    clf = create_head("arcface", hidden_sizes=hidden_sizes, arcface_margin=0.3, **FAST).fit(X, y)
    assert isinstance(clf.model_.classifier, CosineMarginClassifier)
    assert clf.score(X_test, y_test) > 0.95
    logits = clf.decision_function(X_test)
    assert np.abs(logits).max() <= clf.config.arcface_scale + 1e-4  # s * cos at inference, no margin


# --- persistence --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "knobs",
    [
        dict(head_type="mlp", hidden_sizes=(16,), gelu_ln=True, standardize="standardize",
             logit_adjust="infer", calibrate=True, supcon_weight=0.1),
        dict(head_type="arcface", hidden_sizes=(8,), standardize="center"),
    ],
)
def test_save_load_round_trip_predicts_identically(tmp_path: Path, knobs: dict) -> None:
    X, y = blobs([30, 10, 5])
    clf = EmbeddingClassifier(epochs=3, batch_size=16, device="cpu", **knobs).fit(X, y, X_val=X, y_val=y)
    save_head(clf, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["head.json", "head.safetensors"]
    loaded = load_head(tmp_path / "model")
    assert loaded.config == clf.config
    assert loaded.temperature_ == clf.temperature_ and loaded.best_epoch_ == clf.best_epoch_
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
    (folder / "head.json").write_text("{not json")
    with pytest.raises(KennerError, match="corrupt"):
        load_head(folder)


def test_build_is_seeded_by_the_generator() -> None:
    from kenner.heads.modules import build_head_net

    config = HeadConfig(head_type="mlp", hidden_sizes=(8,), supcon_weight=0.5)
    a = build_head_net(config, 4, 3, make_generator(1)).state_dict()
    b = build_head_net(config, 4, 3, make_generator(1)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("projection.") for k in a)
