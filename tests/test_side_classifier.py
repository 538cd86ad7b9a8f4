"""Side classifier: two rows per coin, mask-weighted token pooling, learning the order of two views."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kenner.cli import main
from kenner.config.tree import RunConfig
from kenner.encoders.tokens import mask_weighted_pool
from kenner.errors import KennerError
from kenner.io import read_json
from kenner.methods.base import Samples, TaskData
from kenner.methods.side import SideMethod, side_class_names


def test_task_gives_two_rows_per_coin_with_swapped_paths_in_the_coins_split():
    paths = [{"obverse": Path(f"o{i}.png"), "reverse": Path(f"r{i}.png")} for i in range(3)]
    data = TaskData(
        Samples(["a", "b", "c"], paths, embedder=None, views="concat"),
        y=[0, 1, 0],
        split=np.array(["train", "val", "test"]),
        class_names=["x", "y"],
        groups=["g1", "g2", "g3"],
    )
    cfg = RunConfig(method="side")
    pair = SideMethod().task(data, cfg)
    assert pair.class_names == ["obverse|reverse", "reverse|obverse"] and pair.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert pair.samples.ids[4] == "b:reverse|obverse" and pair.split.tolist() == ["train", "val", "test"] * 2
    assert pair.samples.paths[4] == {"obverse": Path("r1.png"), "reverse": Path("o1.png")}
    single = SideMethod().task(data, cfg.replace(side_task="single"))
    assert single.class_names == ["obverse", "reverse"] and single.samples.paths[3] == {"image": Path("r0.png")}
    assert side_class_names(["obverse", "reverse"], "single") == ["obverse", "reverse"]


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
        side_class_names(["image"], "pair")
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
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    directory = tmp_path_factory.mktemp("vit")
    Dinov2Model(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(("task", "disable_mask_pooling"), [("pair", False), ("single", True)])
def test_side_classifier_run_on_generated_coins(tmp_path, tiny_vit, task, disable_mask_pooling):
    torch.set_num_threads(1)
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    flags = ["--disable-mask-pooling"] if disable_mask_pooling else []
    assert (
        main(
            [
                "train",
                "--mode",
                "side-classifier",
                "--data",
                str(_coin_manifest(tmp_path)),
                "--out-dir",
                str(out),
                "--encoder",
                f"hf:{tiny_vit}",
                "--cache-dir",
                cache,
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--epochs",
                "100",
                "--lr",
                "0.03",
                "--standardize",
                "standardize",
                "--patience",
                "0",
                "--side-task",
                task,
                "--target-coverage",
                "0.5",
                "--no-track",
                *flags,
            ]
        )
        == 0
    )
    metrics = read_json(out / "metrics.json")
    assert metrics["test"]["accuracy"] >= 0.9
    mapping = read_json(out / "label_mapping.json")
    names = ["obverse|reverse", "reverse|obverse"] if task == "pair" else ["obverse", "reverse"]
    assert mapping["class_to_idx"] == {names[0]: 0, names[1]: 1}
    info = read_json(out / "model" / "model_info.json")
    assert info["predictor"]["features"].startswith("pooled" if disable_mask_pooling else "patch tokens")
    assert len(read_json(out / "history.json")) >= 1
    for name in ("metrics.json", "confusion_matrix.png", "predictions.parquet", "report.md"):
        assert (out / name).is_file(), name
    # Both rows of a coin stay in the coin's split (no leak between train and test).
    table = pd.read_parquet(out / "predictions.parquet")
    coin = table["sample_id"].str.split(":").str[0]
    assert (table.groupby(coin)["split"].nunique() == 1).all()
    assert len(table) == 2 * 36
    # The reject option works on the side classifier's probabilities too, measured on test.
    reject = read_json(out / "reject.json")
    assert reject["val_operating_point"]["coverage"] >= 0.5 and "test" in reject["splits"]
    assert (out / "coverage_accuracy.png").is_file() and "Reject option" in (out / "report.md").read_text()

    # New photos get the features the run trained on: `kenner predict` reproduces the run's scores.
    first = [coin_id for coin_id in table["sample_id"] if coin_id.endswith(":" + names[0])][:6]
    coins = [coin_id.split(":")[0] for coin_id in first]
    if task == "single":  # one loose photo per item: obverses, then reverses
        assert info["input_views"] == ["image"]
        items = [{"image": tmp_path / f"{c}_{side}.png"} for side in ("obv", "rev") for c in coins]
        expected = [f"{c}:{name}" for name in names for c in coins]
    else:  # both photos of a coin, in the manifest's order
        assert info["input_views"] == ["obverse", "reverse"]
        items = [{"obverse": tmp_path / f"{c}_obv.png", "reverse": tmp_path / f"{c}_rev.png"} for c in coins]
        expected = first
    stored = table.set_index("sample_id").loc[expected]
    query = tmp_path / "query.tsv"
    header = "image_path" if task == "single" else "obverse_path\treverse_path"
    query.write_text(header + "\n" + "".join("\t".join(str(p) for p in item.values()) + "\n" for item in items))
    target = tmp_path / "side_predictions.json"
    assert (
        main(
            [
                "predict",
                str(out),
                str(query),
                "-k",
                "1",
                "--output",
                str(target),
                "--cache-dir",
                cache,
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    answers = json.loads(target.read_text())
    assert [a["predictions"][0]["label"] for a in answers] == stored["topk_labels"].str[0].tolist()
    np.testing.assert_allclose([a["predictions"][0]["probability"] for a in answers], stored["score"], atol=1e-4)
