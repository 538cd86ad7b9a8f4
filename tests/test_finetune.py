"""Fine-tuning: a few steps of a tiny timm model on generated images, and everything around the loop."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from kenner.predict import predict_run
from kenner.track import MlflowTracker
from safetensors.torch import load_file

from conftest import write_image
from kenner.config.legacy import DataConfig, EncoderConfig, SplitConfig
from kenner.errors import KennerError
from kenner.train.checkpoint import load_checkpoint
from kenner.train.finetune import finetune, finetune_folds, loo_recall_at_1, margin_at, view_plan
from kenner.train.finetune_config import FinetuneConfig, FinetuneRun, load_finetune_run

COLORS = {"alpha": (220, 40, 40), "beta": (40, 200, 60), "gamma": (50, 70, 230)}
PER_CLASS = 8


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared machine more threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A class-folder dataset (3 classes x 8 one-image groups, 40x48 px) and test_resnet weights."""
    root = tmp_path_factory.mktemp("finetune")
    for label, color in COLORS.items():
        for i in range(PER_CLASS):
            write_image(root / "data" / label / f"{label}{i}_1.png", (48, 40), color=color, noise=40, seed=i)
    weights = root / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), weights)
    return root / "data", weights


def make_run(tiny: tuple[Path, Path], out_dir: Path, **knobs) -> FinetuneRun:
    data, weights = tiny
    settings = {"epochs": 2, "batch_size": 4, "img_size": 32, "num_workers": 0, "warmup_epochs": 0,
                "lr": 1e-3, **knobs}
    return FinetuneRun(out_dir=str(out_dir), data=DataConfig(data=str(data)), split=SplitConfig(split_seed=0),
                       encoder=EncoderConfig(encoder="timm:test_resnet", weights=str(weights)),
                       finetune=FinetuneConfig(**settings))


def test_run_folder_frozen_phase_checkpoints_and_predict(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run = make_run(tiny, tmp_path / "run", freeze_epochs=1, ema_decay=0.9, checkpoint_every=1)
    metrics = finetune(run)
    out = Path(run.out_dir)
    assert set(metrics) == {"train", "val", "test"}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in ("report.md", "per_class.csv", "confusion_matrix.png", "class_to_idx.json",
                 "splits/train_ids.json", "model/finetuned.safetensors", "model/model_info.json",
                 "checkpoints/latest_model.pt", "checkpoints/best_model.pt",
                 "checkpoints/checkpoint_epoch_1.pt", "checkpoints/checkpoint_epoch_2.pt"):
        assert (out / name).is_file(), name
    assert load_finetune_run(out / "run_config.json") == run
    history = json.loads((out / "history.json").read_text())
    assert [r["frozen"] for r in history] == [True, False]
    assert all("ema_val_accuracy" in r and "ema_gap" in r for r in history)

    # the frozen epoch trains the head only: backbone weights and BatchNorm statistics are untouched
    initial = torch.load(tiny[1], weights_only=True)
    after_frozen = load_checkpoint(out / "checkpoints/checkpoint_epoch_1.pt")
    last = load_checkpoint(out / "checkpoints/checkpoint_epoch_2.pt")
    for key, value in initial.items():
        assert torch.equal(after_frozen["model"][f"backbone.model.{key}"], value), key
    assert not torch.equal(after_frozen["model"]["classifier.weight"], last["model"]["classifier.weight"])
    assert any(not torch.equal(last["model"][f"backbone.model.{k}"], v) for k, v in initial.items())
    assert last["train_state"]["epoch"] == 2 and last["train_state"]["done"]

    # the saved weights are those of the best checkpoint (model or EMA, as recorded) in fp32
    info = json.loads((out / "model/model_info.json").read_text())
    assert info["mode"] == "finetune" and info["class_names"] == sorted(COLORS)
    best = load_checkpoint(out / "checkpoints/best_model.pt")
    saved = load_file(out / "model/finetuned.safetensors")
    source = best["ema"] if info["best_source"] == "ema" else best["model"]
    prefix = "module." if info["best_source"] == "ema" else ""
    assert all(v.dtype != torch.float16 and torch.equal(v, source[prefix + k]) for k, v in saved.items())

    # kenner predict on the fine-tuned run gives the probabilities written to predictions.parquet
    predictions = pd.read_parquet(out / "predictions.parquet").set_index("sample_id")
    results = predict_run(out, [str(Path(tiny[0]) / "beta")], k=3, device="cpu")
    assert len(results) == PER_CLASS
    for result in results:
        row = predictions.loc[f"beta/{Path(result['id']).stem}"]  # sample id: class/file stem
        assert result["predictions"][0]["label"] == row["topk_labels"][0] == result["predicted"]
        assert abs(result["predictions"][0]["probability"] - row["topk_scores"][0]) < 1e-5


def test_early_stopping_restores_the_best_epoch(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    # GroupNorm, no running statistics: with a negligible learning rate val macro-F1 cannot change
    weights = tmp_path / "test_efficientnet_gn.pth"
    model = timm.create_model("test_efficientnet_gn", pretrained=False, num_classes=0)
    torch.save(model.state_dict(), weights)
    run = make_run(tiny, tmp_path / "run", epochs=6, patience=2, lr=1e-12, scheduler="constant")
    encoder = EncoderConfig(encoder="timm:test_efficientnet_gn", weights=str(weights))
    run = dataclasses.replace(run, encoder=encoder)
    finetune(run)
    history = json.loads((Path(run.out_dir) / "history.json").read_text())
    assert len(history) == 3  # epoch 1 sets the best; epochs 2 and 3 do not beat it
    assert json.loads((Path(run.out_dir) / "model/model_info.json").read_text())["best_epoch"] == 1


def test_binary_task_arcface_and_mlflow(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run = make_run(tiny, tmp_path / "run", head_type="arcface", pos_class="beta", epochs=2, freeze_epochs=1,
                   sampler="pk", pk_k=2, aug_preset="strong", aug_backend="alb", target_coverage=0.5)
    tracker = MlflowTracker("kenner-test", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            run_dir=tmp_path)
    metrics = finetune(run, tracker=tracker)
    for values in metrics.values():
        assert {"auroc", "threshold", "f1_pos", "score_flipped"} <= set(values)
    history = json.loads((Path(run.out_dir) / "history.json").read_text())
    assert all("val_recall_at_1" in r and "val_auroc" in r for r in history)
    info = json.loads((Path(run.out_dir) / "model/model_info.json").read_text())
    assert info["monitor"] == "recall_at_1" and info["threshold"] == metrics["test"]["threshold"]
    # the reject option, tuned on val for half coverage, is measured on test and applied by predict
    reject = json.loads((Path(run.out_dir) / "reject.json").read_text())
    assert info["reject"] == reject["rule"] and "test" in reject["splits"]
    stored = pd.read_parquet(Path(run.out_dir) / "predictions.parquet").set_index("sample_id")
    images = sorted(tiny[0].rglob("*.png"))
    results = predict_run(Path(run.out_dir), [str(p) for p in images], k=1, device="cpu")
    for image, result in zip(images, results, strict=True):
        row = stored.loc[f"{image.parent.name}/{image.stem}"]
        expected = row["predicted"] if row["accepted"] else None  # thresholded binary label, or rejected
        assert (None if result["predicted"] == "unclassifiable" else result["predicted"]) == expected

    client = tracker.client
    (logged,) = client.search_runs([client.get_experiment_by_name("kenner-test").experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["finetune.head_type"] == "arcface"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val_loss")] == [1, 2]
    assert logged.data.metrics["test/macro_f1"] == metrics["test"]["macro_f1"]
    assert {"metrics.json", "report.md"} <= {a.path for a in client.list_artifacts(logged.info.run_id)}


def test_kfold_writes_one_run_per_fold_and_the_mean(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run = make_run(tiny, tmp_path / "run", epochs=1, precision="bf16", accum_steps=2)  # CPU autocast path
    run = FinetuneRun(out_dir=run.out_dir, data=run.data, split=SplitConfig(folds=2), encoder=run.encoder,
                      finetune=run.finetune)
    summary = finetune_folds(run)
    out = Path(run.out_dir)
    per_fold = [json.loads((out / f"fold_{i}" / "metrics.json").read_text()) for i in range(2)]
    values = [fold["test"]["macro_f1"] for fold in per_fold]
    assert summary["test"]["macro_f1"]["values"] == values
    assert summary["test"]["macro_f1"]["mean"] == pytest.approx(np.mean(values))
    assert summary["test"]["macro_f1"]["std"] == pytest.approx(np.std(values))
    assert "macro_f1" in (out / "folds_summary.md").read_text()
    tests = [set(json.loads((out / f"fold_{i}" / "splits" / "test_ids.json").read_text())) for i in range(2)]
    assert not tests[0] & tests[1] and len(tests[0] | tests[1]) == len(COLORS) * PER_CLASS
    fold_config = load_finetune_run(out / "fold_1" / "run_config.json")
    assert fold_config.split.folds == 0 and fold_config.split.splits.endswith("fold_1")


def test_margin_schedule_views_and_recall() -> None:
    cfg = FinetuneConfig(head_type="arcface", arcface_margin=0.4, freeze_epochs=2, margin_ramp_epochs=1,
                         epochs=5)
    assert [margin_at(e, cfg) for e in range(5)] == pytest.approx([0, 0, 0.2, 0.4, 0.4])
    assert view_plan(["obverse", "reverse"], "concat") == (["obverse", "reverse"], "concat")
    assert view_plan(["obverse", "reverse"], "both_avg") == (["obverse", "reverse"], "avg")
    assert view_plan(["obverse", "reverse"], "rev") == (["reverse"], "avg")
    with pytest.raises(KennerError, match="unknown view mode"):
        view_plan(["obverse", "reverse"], "side")
    rng = np.random.default_rng(0)
    features, y = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = z @ z.T - 10 * np.eye(30)
    assert loo_recall_at_1(features, y) == pytest.approx(np.mean(y[sim.argmax(axis=1)] == y))


def test_config_errors_and_cli_flags(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from kenner.cli.finetune import register, run_from_args

    with pytest.raises(KennerError, match="--freeze-epochs"):
        FinetuneConfig(epochs=2, freeze_epochs=2)
    with pytest.raises(KennerError, match="--mixup"):
        FinetuneConfig(head_type="arcface", mixup=0.2)
    with pytest.raises(KennerError, match="--monitor auroc needs --pos-class"):
        FinetuneConfig(monitor="auroc")
    with pytest.raises(KennerError, match="--aug-preset"):
        FinetuneConfig(aug_preset="medium")
    with pytest.raises(KennerError, match="--pos-class 'delta'"):
        finetune(make_run(tiny, tmp_path / "bad", pos_class="delta"))

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    flags = ("--data", str(tiny[0]), "--encoder", "timm:test_resnet", "--epochs", "15",
             "--warmup-epochs", "1", "--batch-size", "16", "--img-size", "224", "--mixup", "0.1",
             "--lr", "5e-4", "--freeze-epochs", "2", "--ema-decay", "0.99", "--pos-class", "hibrido",
             "--aug-backend", "alb", "--aug-preset", "strong", "--num-workers", "3",
             "--out-dir", str(tmp_path / "cli"), "--no-track")
    args = parser.parse_args(["finetune", *flags])
    run = run_from_args(args)
    assert run.finetune == FinetuneConfig(epochs=15, warmup_epochs=1, batch_size=16, img_size=224, mixup=0.1,
                                          lr=5e-4, freeze_epochs=2, ema_decay=0.99, pos_class="hibrido",
                                          aug_backend="alb", aug_preset="strong", num_workers=3)
    assert run.encoder.encoder == "timm:test_resnet"
    assert run.encoder.num_workers == EncoderConfig().num_workers  # --num-workers is the fine-tuning one
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "run_config.json").write_text(json.dumps(run.to_dict()))
    config = str(tmp_path / "cli" / "run_config.json")
    again = run_from_args(parser.parse_args(["finetune", "--config", config, "--epochs", "3"]))
    assert again.finetune.epochs == 3 and again.finetune.pos_class == "hibrido"
    assert again.out_dir == run.out_dir


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_schedules_per_epoch() -> None:
    from kenner.train.schedulers import build_scheduler, step_scheduler, warmup_cosine_factor

    factors = [warmup_cosine_factor(e, warmup=1, total=5, floor=0.0) for e in range(5)]
    half_cos = [0.5 * (1 + np.cos(np.pi * t)) for t in (0.25, 0.75)]
    assert factors == pytest.approx([0.5, 1.0, half_cos[0], 0.5, half_cos[1]])

    def lrs(cfg: FinetuneConfig, metrics: list[float | None]) -> list[float]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        scheduler = build_scheduler(optimizer, cfg)
        seen = []
        for metric in metrics:
            seen.append(optimizer.param_groups[0]["lr"])
            step_scheduler(scheduler, metric)
        return seen

    cosine = lrs(FinetuneConfig(lr=1.0, min_lr=0.0, warmup_epochs=1, epochs=5), [None] * 5)
    assert cosine == pytest.approx(factors)
    restarts = lrs(FinetuneConfig(lr=1.0, min_lr=0.0, scheduler="restarts", t0=2), [None] * 4)
    assert restarts == pytest.approx([1.0, 0.5, 1.0, 0.5])
    plateau = lrs(FinetuneConfig(lr=1.0, scheduler="plateau", plateau_patience=1, plateau_factor=0.1),
                  [0.5, 0.6, 0.6, 0.6, 0.6])
    assert plateau == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1])  # 1 stalled epoch tolerated, the 2nd cuts
    assert lrs(FinetuneConfig(lr=1.0, scheduler="constant"), [None] * 3) == [1.0, 1.0, 1.0]


def test_cli_resume_from_another_run_fresh_and_predict_elsewhere(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kenner.cli import main
    from kenner.train.schedulers import warmup_cosine_factor

    data, weights = tiny
    monkeypatch.chdir(weights.parent)  # a relative --weights path, as users type it
    flags = ["finetune", "--data", str(data), "--encoder", "timm:test_resnet", "--weights", weights.name,
             "--img-size", "32", "--batch-size", "4", "--num-workers", "0", "--warmup-epochs", "0",
             "--lr", "1e-3", "--no-track"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*flags, "--epochs", "2", "--ema-decay", "0.9", "--checkpoint-every", "1",
                 "--out-dir", str(first)]) == 0

    # --resume an epoch checkpoint of another run, with more epochs: the cosine follows the new length
    resume = str(first / "checkpoints" / "checkpoint_epoch_1.pt")
    assert main([*flags, "--epochs", "3", "--out-dir", str(second), "--resume", resume]) == 0
    history = json.loads((second / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[0] == json.loads((first / "history.json").read_text())[0]
    floor = 1e-6 / 1e-3
    assert [r["lr"] for r in history[1:]] == pytest.approx(
        [1e-3 * warmup_cosine_factor(e, warmup=0, total=3, floor=floor) for e in (1, 2)])
    info = json.loads((second / "model" / "model_info.json").read_text())
    best = load_checkpoint(second / "checkpoints" / "best_model.pt")
    assert best["train_state"]["epoch"] == info["best_epoch"]  # best_model.pt is the best epoch's
    assert Path(info["weights"]).is_absolute()

    assert main([*flags, "--epochs", "1", "--out-dir", str(second), "--fresh"]) == 0
    assert [r["epoch"] for r in json.loads((second / "history.json").read_text())] == [1]
    with pytest.raises(SystemExit):
        main([*flags, "--out-dir", str(second), "--fresh", "--resume", resume])
    capsys.readouterr()

    # kenner predict through the CLI, from another working folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    image = data / "gamma" / "gamma3_1.png"
    assert main(["predict", str(second), str(image), "--format", "json", "-k", "2"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    row = pd.read_parquet(second / "predictions.parquet").set_index("sample_id").loc["gamma/gamma3_1"]
    assert result["predicted"] == row["predicted"]
    assert result["predictions"][0]["probability"] == pytest.approx(row["topk_scores"][0], abs=1e-5)


class _Pixels(torch.nn.Module):
    """A stand-in backbone without batch statistics: flatten [B, 3, 4, 4] -> 6 features."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(48, 6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.linear(pixels.flatten(1))


def test_gradient_accumulation_equals_the_full_batch() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from kenner.train.finetune import FinetuneNet, train_one_epoch
    from kenner.train.precision import TrainSettings

    generator = torch.Generator().manual_seed(0)
    pixels, labels = torch.randn(8, 1, 3, 4, 4, generator=generator), torch.arange(8) % 3
    cfg = FinetuneConfig(epochs=1, aug_preset="none")
    weights = []
    for micro, accum in ((8, 1), (4, 2), (2, 4)):
        torch.manual_seed(0)
        model = FinetuneNet(_Pixels(), torch.nn.Linear(6, 3), combine="avg", dropout=0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        settings = TrainSettings(device="cpu", precision="fp32", tf32=False, num_workers=0, accum_steps=accum)
        loader = DataLoader(TensorDataset(pixels, labels), batch_size=micro)
        train_one_epoch(model, loader, optimizer, torch.amp.GradScaler("cpu", enabled=False), None, settings,
                        cfg, epoch=0, n_classes=3)
        weights.append([p.detach().clone() for p in model.parameters()])
    for other in weights[1:]:
        for full, accumulated in zip(weights[0], other, strict=True):
            torch.testing.assert_close(full, accumulated)


def test_samplers() -> None:
    from kenner.train.finetune import _train_sampler

    y = np.array([0] * 12 + [1] * 4 + [2] * 2)
    weighted = _train_sampler(FinetuneConfig(sampler="weighted"), y, 6)
    assert torch.allclose(weighted.weights, torch.as_tensor(1.0 / np.bincount(y)[y], dtype=torch.double))
    torch.manual_seed(0)
    drawn = np.bincount(y[list(weighted)], minlength=3)
    assert len(y) == drawn.sum() and drawn.min() >= 2  # about a third each, not 12 : 4 : 2
    assert _train_sampler(FinetuneConfig(), y, 6) is None  # plain shuffling
    pk = _train_sampler(FinetuneConfig(sampler="pk", pk_k=2), y, 6)
    order = list(pk)
    for start in range(0, len(order) - 5, 6):  # each micro-batch: 3 classes x 2 images
        assert sorted(np.bincount(y[order[start:start + 6]], minlength=3)) == [2, 2, 2]
    with pytest.raises(KennerError, match="multiple of --pk-k 4"):
        _train_sampler(FinetuneConfig(sampler="pk", pk_k=4), y, 6)
    with pytest.raises(KennerError, match="at most 3 classes"):
        _train_sampler(FinetuneConfig(sampler="pk", pk_k=2), y, 8)
