"""Metric mode: the projection head learns an embedding where kNN works better than on raw embeddings."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kenner.errors import KennerError
from kenner.heads.projection import ProjectionHead
from kenner.retrieval.index import Gallery
from kenner.retrieval.metrics import recall_at_k
from kenner.train.metric import MetricTrainConfig, margin_at


def _clustered(n_per_class, n_classes=8, d=48, seed=0):
    """Classes differ in 4 informative dimensions; high-variance nuisance dimensions swamp them."""
    centres = np.zeros((n_classes, d), np.float32)
    centres[:, :4] = np.random.default_rng(123).normal(scale=3.0, size=(n_classes, 4))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    noise = rng.normal(size=(len(labels), d)).astype(np.float32)
    noise[:, :4] *= 0.3
    noise[:, 4:] *= 4.0
    return centres[labels] + noise, labels


def _recall(train, y_train, queries, y_queries):
    return recall_at_k(Gallery.build(train, y_train).search(queries, k=1).labels, y_queries, 1)


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    X, y = _clustered(40, seed=0)
    X_val, y_val = _clustered(10, seed=1)
    config = MetricTrainConfig(epochs=15, lr=1e-2, p=8, k=8, arcface_scale=16, arcface_margin=0.2,
                               warmup_epochs=2, patience=5, seed=0)
    head = ProjectionHead("linear", embedding_dim=16, train_config=config).fit(X, y, X_val=X_val, y_val=y_val)
    return head, X, y, X_val, y_val


def test_metric_mode_improves_recall_at_1_over_raw_embeddings(fitted):
    head, X, y, _, _ = fitted
    X_test, y_test = _clustered(10, seed=2)
    raw = _recall(X, y, X_test, y_test)
    learned = _recall(head.transform(X), y, head.transform(X_test), y_test)
    assert raw < 0.4
    assert learned > 0.8


def test_history_tracks_margin_schedule_and_best_epoch(fitted):
    head = fitted[0]
    margins = [record["margin"] for record in head.history_]
    assert margins[:2] == [0.0, 0.0] and margins[2] == pytest.approx(0.2)
    recalls = [record["val_recall_at_1"] for record in head.history_]
    assert head.best_epoch_ == int(np.argmax(recalls)) + 1
    assert margin_at(1, head.train_config) == 0.0 and margin_at(2, head.train_config) == 0.2


def test_best_epoch_weights_are_restored(fitted):
    head, X, y, X_val, y_val = fitted
    best = max(record["val_recall_at_1"] for record in head.history_)
    assert _recall(head.transform(X), y, head.transform(X_val), y_val) == pytest.approx(best)


def test_transform_is_normalised_and_save_load_round_trips(fitted, tmp_path):
    head, X, *_ = fitted
    Z = head.transform(X[:10])
    assert Z.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
    head.save(tmp_path / "proj")
    loaded = ProjectionHead.load(tmp_path / "proj")
    np.testing.assert_allclose(loaded.transform(X[:10]), Z, atol=1e-6)
    assert loaded.history_ == head.history_ and loaded.train_config == head.train_config


def test_mlp_projection_trains_without_validation():
    torch.set_num_threads(1)
    X, y = _clustered(8, n_classes=3, d=12)
    # P = 16 > 3 classes: clamped to 3.
    config = MetricTrainConfig(epochs=2, p=16, k=4, arcface_scale=16, arcface_margin=0.2)
    head = ProjectionHead("mlp", embedding_dim=8, hidden_dim=16, train_config=config).fit(X, y)
    assert len(head.history_) == 2 and "val_recall_at_1" not in head.history_[0]
    assert head.best_epoch_ == 2
    assert head.transform(X).shape == (24, 8)


def test_user_errors():
    with pytest.raises(KennerError, match="proj-type"):
        ProjectionHead("transformer")
    with pytest.raises(KennerError, match="two classes"):
        ProjectionHead(train_config=MetricTrainConfig(epochs=1)).fit(np.ones((4, 3)), np.zeros(4))
    with pytest.raises(KennerError, match="not fitted"):
        ProjectionHead().transform(np.ones((2, 3)))


def _prepared(tmp_path):
    """PreparedEmbeddings for generated clustered embeddings with a real group-aware split."""
    from kenner.data.manifest import Dataset, Sample
    from kenner.data.splits import make_split, split_of_samples
    from kenner.pipeline import PreparedEmbeddings

    X, y = _clustered(30, n_classes=6, seed=3)
    ids = [f"s{i}" for i in range(len(y))]
    groups = [f"g{i // 2}" for i in range(len(y))]  # two photos per object
    names = [f"class{c}" for c in range(6)]
    samples = [Sample(id=i, label=names[c], group=g, paths={"image": tmp_path / f"{i}.jpg"})
               for i, c, g in zip(ids, y, groups, strict=True)]
    labels = [names[c] for c in y]
    split, _ = make_split(groups, labels, ratios=(0.6, 0.2, 0.2), seed=0)
    return PreparedEmbeddings(
        X=X, y=y, split=np.asarray(split_of_samples(split, groups)), class_names=names, sample_ids=ids,
        groups=groups, dataset=Dataset(samples=samples, views=["image"], source=tmp_path),
        encoder_spec="test", encoder_fingerprint="0" * 16, views="image",
    )


def test_metric_run_writes_retrieval_artifacts_and_reports_reject_honestly(tmp_path):
    import pandas as pd

    from kenner.config.legacy import RunConfig
    from kenner.heads.config import HeadConfig
    from kenner.io import read_json
    from kenner.retrieval.config import RetrievalConfig
    from kenner.retrieval.model import RetrievalModel
    from kenner.retrieval.run import run_metric_mode

    torch.set_num_threads(1)
    prepared = _prepared(tmp_path)
    out = tmp_path / "run"
    cfg = RunConfig(out_dir=str(out), mode="metric", head=HeadConfig(epochs=12, lr=1e-2, device="cpu"))
    rcfg = RetrievalConfig(proj_type="linear", embedding_dim=16, p=6, k=6, knn_k=5, target_precision=0.9,
                           eval_method="hdbscan", metric_scale=16, metric_margin=0.2)
    metrics, history = run_metric_mode(prepared, cfg, rcfg)
    assert len(history) >= 1
    for name in ("metrics.json", "knn_metrics.json", "embeddings_val.npy", "labels_val.npy", "reject.json",
                 "coverage_accuracy.png", "hdbscan_metrics.json", "hdbscan_labels.npy",
                 "confusion_matrix.png",
                 "predictions.parquet", "report.md", "model/retrieval.json", "model/gallery/gallery.faiss",
                 "model/projection/projection.safetensors", "model/model_info.json"):
        assert (out / name).is_file(), name
    val = prepared.split == "val"
    assert np.load(out / "embeddings_val.npy").shape == (val.sum(), 16)
    np.testing.assert_array_equal(np.load(out / "labels_val.npy"), prepared.y[val])
    knn = read_json(out / "knn_metrics.json")
    assert knn["train"]["leave_one_out"] and not knn["test"]["leave_one_out"]
    assert {"recall_at_1", "recall_at_5", "recall_at_10", "map_at_r", "knn_macro_f1"} <= set(knn["test"])
    assert metrics["test"]["recall_at_1"] == knn["test"]["recall_at_1"]

    reject = read_json(out / "reject.json")
    point = reject["val_operating_point"]
    assert point["target_met"] and point["precision"] >= 0.9
    # The test figures are measured: recompute them from predictions.parquet (null = unclassifiable).
    table = pd.read_parquet(out / "predictions.parquet")
    test = table[table["split"] == "test"]
    accepted = test["predicted"].notna()
    assert reject["splits"]["test"]["coverage"] == pytest.approx(accepted.mean())
    right = (test["predicted"] == test["true"])[accepted]
    assert reject["splits"]["test"]["precision"] == pytest.approx(right.mean())
    assert "Reject option" in (out / "report.md").read_text()

    # The saved model answers exactly as the run did.
    model = RetrievalModel.load(out / "model")
    test_mask = prepared.split == "test"
    again = model.classify(prepared.X[test_mask])
    names = np.asarray(prepared.class_names, dtype=object)
    got = np.where(again.predicted >= 0, names[np.maximum(again.predicted, 0)], "unclassifiable")
    assert list(got) == test["predicted"].fillna("unclassifiable").tolist()
    assert 0 < accepted.mean() < 1


def test_raw_knn_run_without_projection(tmp_path):
    from kenner.config.legacy import RunConfig
    from kenner.io import read_json
    from kenner.retrieval.config import RetrievalConfig
    from kenner.retrieval.run import run_metric_mode

    prepared = _prepared(tmp_path)
    out = tmp_path / "raw"
    rcfg = RetrievalConfig(proj_type="none", vote="majority", gallery="train+val", eval_method="none",
                           index_factory="IVF2,Flat", search_params="nprobe=2")
    run_metric_mode(prepared, RunConfig(out_dir=str(out), mode="metric"), rcfg)
    assert not (out / "model" / "projection").exists() and not (out / "knn_metrics.json").exists()
    assert not (out / "hdbscan_metrics.json").exists()
    assert read_json(out / "reject.json")["curve_split"] == "val"
    assert np.load(out / "embeddings_val.npy").shape[1] == prepared.X.shape[1]
    # The index_factory choice travels with the run: the reloaded gallery is the same IVF index.
    from kenner.retrieval.model import RetrievalModel

    model = RetrievalModel.load(out / "model")
    assert model.gallery.factory == "IVF2,Flat" and model.gallery.search_params == "nprobe=2"
    assert "IVF" in type(model.gallery.index).__name__
    in_gallery = np.isin(prepared.split, ["train", "val"])
    assert len(model.gallery) == in_gallery.sum() and model.vote == "majority"


def test_retrieval_config_rejects_bad_values():
    from kenner.retrieval.config import RetrievalConfig

    with pytest.raises(KennerError, match="--vote"):
        RetrievalConfig(vote="borda")
    with pytest.raises(KennerError, match="not both"):
        RetrievalConfig(target_precision=0.9, target_coverage=0.5)
    with pytest.raises(KennerError, match="--k must be at least 2"):
        RetrievalConfig(k=1)


def test_metric_run_from_images_then_kenner_search(tmp_path):
    """A metric run from an image folder through a tiny random ViT; `kenner search` finds an image itself."""
    import argparse

    from PIL import Image
    from transformers import Dinov2Config, Dinov2Model

    from kenner.cli.retrieval import format_results, register
    from kenner.config.legacy import DataConfig, EncoderConfig, RunConfig
    from kenner.heads.config import HeadConfig
    from kenner.retrieval.config import RetrievalConfig
    from kenner.retrieval.run import train_metric_or_side

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(tmp_path / "vit")
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for obj in range(6):
            for seq in range(2):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / name / f"{name}{obj}_{seq}.png")
    out = tmp_path / "run"
    cfg = RunConfig(out_dir=str(out), mode="metric", data=DataConfig(data=str(tmp_path / "data")),
                    encoder=EncoderConfig(encoder=f"hf:{tmp_path / 'vit'}", cache_dir=str(tmp_path / "cache"),
                                          device="cpu", num_workers=0),
                    head=HeadConfig(epochs=3, device="cpu"),
                    retrieval=RetrievalConfig(proj_type="linear", embedding_dim=8, p=3, k=2, knn_k=3,
                                              metric_scale=16, metric_margin=0.2))
    metrics = train_metric_or_side(cfg)
    assert metrics["test"]["recall_at_1"] >= 0.5

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    from kenner.io import read_json

    gallery_paths = read_json(out / "model" / "gallery" / "gallery.json")["paths"]
    gallery_image = next(p for p in gallery_paths if "green" in p)
    args = parser.parse_args(["search", str(out), gallery_image, "-k", "2", "--device", "cpu",
                              "--cache-dir", str(tmp_path / "cache")])
    from kenner.cli.retrieval import search_run

    results = search_run(Path(args.run), args.images, k=args.top_k, cache_dir=args.cache_dir,
                         device=args.device)
    assert len(results) == 1 and len(results[0]["neighbours"]) == 2
    top = results[0]["neighbours"][0]
    assert results[0]["predicted"] == "green"
    assert top["label"] == "green" and top["path"] == gallery_image  # a gallery image finds itself
    assert top["distance"] == pytest.approx(0.0, abs=1e-4)
    assert "green" in format_results(results)
    assert args.func(args) == 0
