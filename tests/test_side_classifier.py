"""Side classifier: pair/single datasets, mask-weighted token pooling, learning the order of two views."""

import numpy as np
import pytest
import torch

from kenner.errors import KennerError
from kenner.heads import create_head
from kenner.heads.side import mask_weighted_pool, side_class_names, side_dataset


def _two_views(n, d=16, seed=0):
    """Per-coin features; the obverse is shifted one way along a fixed direction, the reverse the other."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).normal(size=d).astype(np.float32)
    base = rng.normal(scale=1.0, size=(n, d)).astype(np.float32)
    obverse = base + 0.8 * direction + rng.normal(scale=0.3, size=(n, d)).astype(np.float32)
    reverse = base - 0.8 * direction + rng.normal(scale=0.3, size=(n, d)).astype(np.float32)
    return obverse, reverse


def test_pair_dataset_swaps_views_and_keeps_the_source_sample():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = -a
    X, y, source = side_dataset(a, b, "pair")
    assert X.shape == (6, 4) and y.tolist() == [0, 0, 0, 1, 1, 1] and source.tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(X[1], np.r_[a[1], b[1]])
    np.testing.assert_array_equal(X[4], np.r_[b[1], a[1]])
    X, y, source = side_dataset(a, b, "single")
    assert X.shape == (6, 2) and y.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(X[3], b[0])
    assert side_class_names(["obverse", "reverse"]) == ["obverse|reverse", "reverse|obverse"]
    assert side_class_names(["obverse", "reverse"], "single") == ["obverse", "reverse"]


@pytest.mark.parametrize("task", ["pair", "single"])
def test_side_classifier_learns_the_systematic_difference(task):
    torch.set_num_threads(1)
    X_train, y_train, _ = side_dataset(*_two_views(150, seed=0), task)
    X_test, y_test, _ = side_dataset(*_two_views(50, seed=1), task)
    head = create_head("linear", epochs=60, lr=1e-2, device="cpu").fit(X_train, y_train, n_classes=2)
    accuracy = (head.predict(X_test) == y_test).mean()
    assert accuracy > 0.95
    # The task is not solvable by chance: with shuffled labels the same head stays near 50 %.
    shuffled = np.random.default_rng(2).permutation(y_train)
    control = create_head("linear", epochs=60, lr=1e-2, device="cpu").fit(X_train, shuffled, n_classes=2)
    assert (control.predict(X_test) == y_test).mean() < 0.75


def test_mask_weighted_pool_follows_high_norm_tokens():
    torch.manual_seed(0)
    background = torch.randn(2, 12, 8) * 0.1
    foreground = torch.tensor([1.0] * 8) * 3
    tokens = background.clone()
    tokens[:, :4] += foreground  # 4 foreground tokens with large norms
    pooled = mask_weighted_pool(tokens, temperature=0.3)
    fg_mean = tokens[:, :4].mean(dim=1)
    plain_mean = tokens.mean(dim=1)
    assert pooled.shape == (2, 8)
    error = torch.linalg.norm(pooled - fg_mean, dim=1)
    assert error.max() < 0.1 * torch.linalg.norm(plain_mean - fg_mean, dim=1).min()
    # A very large temperature gives the plain mean; equal norms give the plain mean at any temperature.
    torch.testing.assert_close(mask_weighted_pool(tokens, temperature=1e6), plain_mean, atol=1e-4, rtol=0)
    equal = torch.nn.functional.normalize(torch.randn(1, 5, 8), dim=-1)
    torch.testing.assert_close(mask_weighted_pool(equal), equal.mean(dim=1), atol=1e-4, rtol=0)


def test_user_errors_name_the_problem():
    with pytest.raises(KennerError, match="two-view"):
        side_class_names(["image"])
    with pytest.raises(KennerError, match="same shape"):
        side_dataset(np.ones((3, 2)), np.ones((2, 2)))
    with pytest.raises(KennerError, match="task"):
        side_dataset(np.ones((3, 2)), np.ones((3, 2)), "triple")
    with pytest.raises(KennerError, match=r"\[B, T, D\]"):
        mask_weighted_pool(torch.ones(3, 4))


def _coin_manifest(root, n=36, seed=0):
    """Two photos per coin: the obverse is a bright disc on dark ground, the reverse the opposite."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    rows = ["id\tlabel\tobverse_path\treverse_path"]
    for i in range(n):
        paths = []
        for side, (ground, disc) in (("obv", (20, 240)), ("rev", (240, 20))):
            jitter = rng.integers(-15, 16, size=3)
            image = Image.new("RGB", (40, 40), tuple(int(v) for v in np.clip(ground + jitter, 0, 255)))
            r = int(rng.integers(10, 17))
            ImageDraw.Draw(image).ellipse((20 - r, 20 - r, 20 + r, 20 + r), fill=(disc, disc, disc))
            image.save(root / f"c{i}_{side}.png")
            paths.append(f"c{i}_{side}.png")
        rows.append(f"c{i}\ttype{i % 3}\t{paths[0]}\t{paths[1]}")
    manifest = root / "coins.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    directory = tmp_path_factory.mktemp("vit")
    Dinov2Model(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(("task", "disable_mask_pooling"), [("pair", False), ("single", True)])
def test_side_classifier_run_on_generated_coins(tmp_path, tiny_vit, task, disable_mask_pooling):
    from kenner.config.legacy import DataConfig, EncoderConfig, RunConfig
    from kenner.heads.config import HeadConfig
    from kenner.io import read_json
    from kenner.retrieval.config import RetrievalConfig
    from kenner.retrieval.run import train_metric_or_side

    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = RunConfig(
        out_dir=str(out), mode="side-classifier",
        data=DataConfig(data=str(_coin_manifest(tmp_path))),
        encoder=EncoderConfig(encoder=f"hf:{tiny_vit}", cache_dir=str(tmp_path / "cache"), device="cpu",
                              num_workers=0),
        head=HeadConfig(epochs=100, lr=3e-2, standardize="standardize", early_stopping_patience=0,
                        device="cpu"),
        retrieval=RetrievalConfig(side_task=task, disable_mask_pooling=disable_mask_pooling, target_coverage=0.5),
    )
    metrics = train_metric_or_side(cfg)
    assert metrics["test"]["accuracy"] >= 0.9
    mapping = read_json(out / "label_mapping.json")
    names = ["obverse|reverse", "reverse|obverse"] if task == "pair" else ["obverse", "reverse"]
    assert mapping["class_to_idx"] == {names[0]: 0, names[1]: 1}
    assert mapping["features"].startswith("pooled" if disable_mask_pooling else "patch tokens")
    assert len(read_json(out / "history.json")) >= 1
    for name in ("metrics.json", "confusion_matrix.png", "predictions.parquet", "report.md",
                 "model/model_info.json"):
        assert (out / name).is_file(), name
    # Both rows of a coin stay in the coin's split (no leak between train and test).
    import pandas as pd

    table = pd.read_parquet(out / "predictions.parquet")
    coin = table["sample_id"].str.split(":").str[0]
    assert (table.groupby(coin)["split"].nunique() == 1).all()
    assert len(table) == 2 * 36
    # The reject option works on the side classifier's probabilities too, measured on test.
    reject = read_json(out / "reject.json")
    assert reject["val_operating_point"]["coverage"] >= 0.5 and "test" in reject["splits"]
    assert (out / "coverage_accuracy.png").is_file() and "Reject option" in (out / "report.md").read_text()

    # New photos get the features the run trained on: the saved head reproduces the run's scores.
    from kenner.retrieval.side_predict import side_input_views, side_proba
    from kenner.train.run import load_model_info

    info = load_model_info(out)
    first = [coin_id for coin_id in table["sample_id"] if coin_id.endswith(":" + names[0])][:6]
    coins = [coin_id.split(":")[0] for coin_id in first]
    if task == "single":  # one loose photo per item: obverses, then reverses
        assert side_input_views(info) == ["image"]
        items = [{"image": tmp_path / f"{c}_{side}.png"} for side in ("obv", "rev") for c in coins]
        expected = [f"{c}:{name}" for name in names for c in coins]
    else:  # both photos of a coin, in the manifest's order
        assert side_input_views(info) == ["obverse", "reverse"]
        items = [{"obverse": tmp_path / f"{c}_obv.png", "reverse": tmp_path / f"{c}_rev.png"} for c in coins]
        expected = first
    proba = side_proba(out, info, items, cache_dir=str(tmp_path / "cache"), device="cpu")
    stored = table.set_index("sample_id").loc[expected]
    np.testing.assert_allclose(proba.max(axis=1), stored["score"].to_numpy(), atol=1e-4)
    assert [info["class_names"][c] for c in proba.argmax(axis=1)] == stored["topk_labels"].str[0].tolist()

    # ... and `kenner predict` gives the same answers from the command line.
    import json

    from kenner.cli import main

    query = tmp_path / "query.tsv"
    header = "image_path" if task == "single" else "obverse_path\treverse_path"
    query.write_text(header + "\n" + "".join(
        "\t".join(str(p) for p in item.values()) + "\n" for item in items))
    target = tmp_path / "side_predictions.json"
    assert main(["predict", str(out), str(query), "-k", "1", "--output", str(target),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    answers = json.loads(target.read_text())
    assert [a["predictions"][0]["label"] for a in answers] == stored["topk_labels"].str[0].tolist()
