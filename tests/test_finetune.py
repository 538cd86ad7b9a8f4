"""Fine-tuning: a few steps of a tiny timm model on generated images, and everything around the loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import write_image
from kenner.config.tree import RunConfig
from kenner.errors import KennerError
from kenner.evaluate.metrics import macro_f1_rows
from kenner.heads.modules import HeadNet
from kenner.loop.history import check_history
from kenner.loop.schedulers import warmup_cosine_factor
from kenner.train.checkpoint import load_checkpoint
from kenner.train.data import train_sampler, view_plan
from kenner.train.finetune import fit_finetune
from kenner.train.finetuned import FinetunedModel

COLORS = {"alpha": (220, 40, 40), "beta": (40, 200, 60), "gamma": (50, 70, 230)}
CLASSES = sorted(COLORS)
PER_CLASS = 8
SPLIT = ["train"] * 5 + ["val"] * 2 + ["test"]  # per class


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared machine more threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Path]], np.ndarray, np.ndarray, Path]:
    """3 classes x 8 one-image samples (40x48 px), split 5/2/1 per class, and test_resnet weights."""
    root = tmp_path_factory.mktemp("finetune")
    paths, labels = [], []
    for label, color in COLORS.items():
        for i in range(PER_CLASS):
            path = write_image(root / "data" / label / f"{label}{i}_1.png", (48, 40), color=color, noise=40, seed=i)
            paths.append({"image": path})
            labels.append(CLASSES.index(label))
    weights = root / "test_resnet.pth"
    torch.manual_seed(0)  # the same random backbone whichever tests ran before
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), weights)
    return paths, np.array(labels), np.array(SPLIT * len(COLORS)), weights


def config(weights: Path, **knobs) -> RunConfig:
    settings = {
        "encoder": "timm:test_resnet",
        "weights": str(weights),
        "epochs": 2,
        "batch_size": 4,
        "img_size": 32,
        "num_workers": 0,
        "lr": 1e-3,
        "device": "cpu",
        "patience": 5,
        **knobs,
    }
    return RunConfig().replace(**settings)


def test_frozen_phase_checkpoints_ema_and_save_load(tiny, tmp_path: Path) -> None:
    paths, y, split, weights = tiny
    records: list[dict] = []
    model = fit_finetune(
        paths,
        y,
        split,
        CLASSES,
        config(weights, freeze_epochs=1, ema_decay=0.9, checkpoint_every=1),
        out_dir=tmp_path / "run",
        on_epoch=records.append,
    )
    check_history(model.history)
    assert records == model.history and [r["phase"] for r in model.history] == ["frozen", "train"]
    assert all("ema_val_accuracy" in r and "ema_gap" in r and "val_macro_f1" in r for r in model.history)
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("latest_model.pt", "best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt"):
        assert (checkpoints / name).is_file(), name

    # the frozen epoch trains the head only: backbone weights and BatchNorm statistics are untouched
    initial = torch.load(weights, weights_only=True)
    after_frozen = load_checkpoint(checkpoints / "checkpoint_epoch_1.pt")
    last = load_checkpoint(checkpoints / "checkpoint_epoch_2.pt")
    for key, value in initial.items():
        assert torch.equal(after_frozen["model"][f"backbone.model.{key}"], value), key
    head_weight = "head.classifier.weight"
    assert not torch.equal(after_frozen["model"][head_weight], last["model"][head_weight])
    assert any(not torch.equal(last["model"][f"backbone.model.{k}"], v) for k, v in initial.items())
    assert last["train_state"]["epoch"] == 2 and last["early_stopping"]["last_epoch"] == [2]

    # the model holds the best checkpoint's weights (model or EMA, as recorded)
    best = load_checkpoint(checkpoints / "best_model.pt")
    assert best["train_state"]["epoch"] == model.best_epoch
    source, prefix = (best["ema"], "module.") if model.best_source == "ema" else (best["model"], "")
    state = model.model.state_dict()
    assert all(torch.equal(state[k].float(), source[prefix + k]) for k in state)
    summary = model.summary()
    assert summary["best_epoch"] == model.best_epoch and summary["monitor"] == "macro_f1"
    assert (
        summary["best_value"]
        == model.history[model.best_epoch - 1]["val_macro_f1" if model.best_source == "model" else "ema_val_macro_f1"]
    )

    # predict_proba after save/load equals before; the weights are fp32
    proba = model.predict_proba(paths)
    assert proba.shape == (len(paths), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    model.save(tmp_path / "model")
    assert all(
        v.dtype == torch.float32
        for v in load_file(tmp_path / "model" / "finetuned.safetensors").values()
        if v.is_floating_point()
    )
    loaded = FinetunedModel.load(tmp_path / "model", device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(paths), proba)
    assert loaded.history == json.loads(json.dumps(model.history)) and loaded.class_names == CLASSES


def test_early_stopping_restores_the_best_epoch(tiny, tmp_path: Path) -> None:
    """Validation labels shifted by one class: the better the model learns, the worse it scores on val."""
    paths, y, split, weights = tiny
    shifted = np.where(split == "val", (y + 1) % 3, y)
    model = fit_finetune(
        paths, shifted, split, CLASSES, config(weights, epochs=10, patience=2, lr=3e-3), out_dir=tmp_path / "run"
    )
    history = model.history
    scores = [(r["val_macro_f1"], -r["val_loss"]) for r in history]
    assert model.best_epoch == 1 + max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert len(history) == model.best_epoch + 2 < 10
    val = split == "val"
    predicted = model.predict_proba([p for p, v in zip(paths, val, strict=True) if v]).argmax(axis=1)
    restored = macro_f1_rows(shifted[val], predicted[None], 3)[0]
    assert restored == pytest.approx(history[model.best_epoch - 1]["val_macro_f1"])


def test_binary_arcface_head_with_pk_batches_and_strong_augmentation(tiny, tmp_path: Path, caplog) -> None:
    paths, y, split, weights = tiny
    cfg = config(
        weights,
        head_type="arcface",
        hidden_sizes="16",
        arcface_scale=16,
        arcface_margin=0.3,
        pos_class="beta",
        epochs=3,
        freeze_epochs=1,
        margin_ramp_epochs=1,
        sampler="pk",
        pk_k=2,
        batch_size=6,
        aug_preset="strong",
        aug_backend="alb",
        label_smoothing=0.1,
        class_weight="inverse",
    )
    with caplog.at_level("INFO", logger="kenner.train.finetune"):
        model = fit_finetune(paths, y, split, CLASSES, cfg, out_dir=tmp_path / "run")
    history = model.history
    assert all("val_recall_at_1" in r and "val_auroc" in r and "val_threshold" in r for r in history)
    assert [r["margin"] for r in history] == pytest.approx([0.0, 0.15, 0.3])  # 0 while frozen, then a ramp
    assert model.summary()["monitor"] == "recall_at_1"
    assert isinstance(model.model.head, HeadNet) and model.model.head.classifier.weight.shape == (3, 16)
    assert "Epoch 1/3 (frozen)" in caplog.text and "AUROC" in caplog.text and "R@1" in caplog.text


def test_resume_from_another_run_fresh_and_predict_elsewhere(tiny, tmp_path: Path, monkeypatch) -> None:
    paths, y, split, weights = tiny
    monkeypatch.chdir(weights.parent)
    cfg = config(weights.name, scheduler="cosine", min_lr=1e-6, ema_decay=0.9, checkpoint_every=1)  # relative
    first = fit_finetune(paths, y, split, CLASSES, cfg, out_dir=tmp_path / "first")

    # resume an epoch checkpoint of another run, with more epochs: the cosine follows the new length
    resume = str(tmp_path / "first" / "checkpoints" / "checkpoint_epoch_1.pt")
    second = fit_finetune(paths, y, split, CLASSES, cfg.replace(epochs=3), out_dir=tmp_path / "second", resume=resume)
    assert [r["epoch"] for r in second.history] == [1, 2, 3]
    assert second.history[0] == first.history[0]
    floor = 1e-6 / 1e-3
    assert [r["lr"] for r in second.history[1:]] == pytest.approx(
        [1e-3 * warmup_cosine_factor(e, warmup=0, total=3, floor=floor) for e in (1, 2)]
    )
    best = load_checkpoint(tmp_path / "second" / "checkpoints" / "best_model.pt")
    assert best["train_state"]["epoch"] == second.best_epoch  # best_model.pt is the best epoch's

    again = fit_finetune(paths, y, split, CLASSES, cfg.replace(epochs=1), out_dir=tmp_path / "second", fresh=True)
    assert [r["epoch"] for r in again.history] == [1]
    with pytest.raises(KennerError, match="--resume and --fresh"):
        fit_finetune(paths, y, split, CLASSES, cfg, out_dir=tmp_path / "second", fresh=True, resume=resume)

    second.save(tmp_path / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = FinetunedModel.load(tmp_path / "model", device="cpu")
    assert Path(loaded.info["weights"]).is_absolute()
    np.testing.assert_array_equal(loaded.predict_proba(paths[:4]), second.predict_proba(paths[:4]))


def test_errors(tiny, tmp_path: Path) -> None:
    paths, y, split, weights = tiny
    with pytest.raises(KennerError, match="--freeze-epochs"):
        fit_finetune(paths, y, split, CLASSES, config(weights, freeze_epochs=2), out_dir=tmp_path)
    with pytest.raises(KennerError, match="--pos-class 'delta'"):
        fit_finetune(paths, y, split, CLASSES, config(weights, pos_class="delta"), out_dir=tmp_path)
    with pytest.raises(KennerError, match="no training samples"):
        fit_finetune(paths, y, np.full(len(y), "test"), CLASSES, config(weights), out_dir=tmp_path)
    with pytest.raises(KennerError, match="no fine-tuned model"):
        FinetunedModel.load(tmp_path / "nowhere")


def test_view_plan() -> None:
    assert view_plan(["obverse", "reverse"], "concat") == (["obverse", "reverse"], "concat")
    assert view_plan(["obverse", "reverse"], "both_avg") == (["obverse", "reverse"], "avg")
    assert view_plan(["obverse", "reverse"], "rev") == (["reverse"], "avg")
    with pytest.raises(KennerError, match="unknown view mode"):
        view_plan(["obverse", "reverse"], "side")


class _Pixels(torch.nn.Module):
    """A stand-in backbone without batch statistics: flatten [B, 3, 4, 4] -> 6 features."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(48, 6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.linear(pixels.flatten(1))


def test_gradient_accumulation_equals_the_full_batch() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from kenner.heads.classifier import EmbeddingClassifier
    from kenner.heads.modules import build_head_net
    from kenner.loop.epochs import make_generator
    from kenner.train.epoch import train_one_epoch
    from kenner.train.model import FinetuneNet
    from kenner.train.precision import TrainSettings

    generator = torch.Generator().manual_seed(0)
    pixels, labels = torch.randn(8, 1, 3, 4, 4, generator=generator), torch.arange(8) % 3
    params = EmbeddingClassifier("mlp", hidden_sizes=(5,)).get_params()
    weights = []
    for micro, accum in ((8, 1), (4, 2), (2, 4)):
        torch.manual_seed(0)
        model = FinetuneNet(_Pixels(), build_head_net(params, 6, 3, make_generator(0)), combine="avg")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        settings = TrainSettings(device="cpu", precision="fp32", tf32=False, num_workers=0, accum_steps=accum)
        loader = DataLoader(TensorDataset(pixels, labels), batch_size=micro)
        train_one_epoch(
            model,
            loader,
            optimizer,
            torch.amp.GradScaler("cpu", enabled=False),
            None,
            settings,
            frozen=False,
            n_classes=3,
        )
        weights.append([p.detach().clone() for p in model.parameters()])
    for other in weights[1:]:
        for full, accumulated in zip(weights[0], other, strict=True):
            torch.testing.assert_close(full, accumulated)


def test_samplers() -> None:
    y = np.array([0] * 12 + [1] * 4 + [2] * 2)
    weighted = train_sampler("weighted", y, 6, 4)
    assert torch.allclose(weighted.weights, torch.as_tensor(1.0 / np.bincount(y)[y], dtype=torch.double))
    torch.manual_seed(0)
    drawn = np.bincount(y[list(weighted)], minlength=3)
    assert len(y) == drawn.sum() and drawn.min() >= 2  # about a third each, not 12 : 4 : 2
    assert train_sampler("random", y, 6, 4) is None  # plain shuffling
    order = list(train_sampler("pk", y, 6, 2))
    for start in range(0, len(order) - 5, 6):  # each micro-batch: 3 classes x 2 images
        assert sorted(np.bincount(y[order[start : start + 6]], minlength=3)) == [2, 2, 2]
    with pytest.raises(KennerError, match="multiple of --pk-k 4"):
        train_sampler("pk", y, 6, 4)
    with pytest.raises(KennerError, match="at most 3 classes"):
        train_sampler("pk", y, 8, 2)


def test_wise_ft_interpolates_the_start_and_the_best_weights_with_the_alpha_val_prefers(tiny, tmp_path: Path) -> None:
    paths, y, split, weights = tiny
    rng = np.random.default_rng(0)
    start = (rng.normal(size=(3, 96)).astype(np.float32), np.array([0.5, -0.5, 0.0], dtype=np.float32))
    cfg = config(weights, wise_ft=True, monitor="loss", init="probe")
    model = fit_finetune(paths, y, split, CLASSES, cfg, out_dir=tmp_path / "run", head_init=start)
    wise = model.info["wise_ft"]
    assert list(wise["val"]) == [str(a / 10) for a in range(11)] and model.info["init"] == "probe"
    losses = {float(a): s["val_loss"] for a, s in wise["val"].items()}
    assert losses[wise["alpha"]] == min(losses.values())
    assert model.summary()["WiSE-FT alpha"] == wise["alpha"]

    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best_model.pt")["model"]
    alpha, state = wise["alpha"], model.model.state_dict()
    expected_head = (1 - alpha) * torch.from_numpy(start[0]) + alpha * best["head.classifier.weight"]
    torch.testing.assert_close(state["head.classifier.weight"], expected_head)
    conv = next(k for k in state if k.startswith("backbone.") and k.endswith("weight") and state[k].ndim == 4)
    initial = torch.load(weights, weights_only=True)[conv.removeprefix("backbone.model.")]
    torch.testing.assert_close(state[conv], torch.lerp(initial, best[conv], alpha))


def test_the_head_starts_from_the_given_weights(tiny, tmp_path: Path) -> None:
    paths, y, split, weights = tiny
    start = (np.full((3, 96), 0.25, dtype=np.float32), np.array([1.0, 2.0, 3.0], dtype=np.float32))
    cfg = config(weights, epochs=1, lr=1e-12, patience=0)
    model = fit_finetune(paths, y, split, CLASSES, cfg, out_dir=tmp_path / "run", head_init=start)
    layer = model.model.head.classifier
    np.testing.assert_allclose(layer.weight.detach().numpy(), start[0], atol=1e-6)
    np.testing.assert_allclose(layer.bias.detach().numpy(), start[1], atol=1e-6)
    with pytest.raises(KennerError, match="does not fit the fine-tuned head"):
        fit_finetune(paths, y, split, CLASSES, cfg, out_dir=tmp_path / "bad", head_init=(start[0][:, :4], start[1]))


def test_probe_start_is_a_linear_probe_on_the_raw_embeddings() -> None:
    from kenner.methods.base import Samples, TaskData
    from kenner.methods.finetune import head_start

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 6)) * 3
    X = centres[y] + rng.normal(size=(60, 6)) + 50.0  # far from centred: the bias must carry the mean
    samples = Samples(
        [str(i) for i in range(60)], [{"image": Path(f"{i}.png")} for i in range(60)], embedder=None, views="image"
    )
    data = TaskData(
        samples.with_embeddings({"image": X.astype(np.float32)}), y, np.array(["train", "val"] * 30), CLASSES, []
    )
    weight, bias = head_start(data, RunConfig().replace(init="probe", device="cpu", epochs=200))
    assert weight.shape == (3, 6) and ((X @ weight.T + bias).argmax(axis=1) == y).mean() > 0.95
    assert head_start(data, RunConfig()) is None
    with pytest.raises(KennerError, match="linear head"):
        head_start(data, RunConfig().replace(init="probe", head_type="mlp"))


def test_lp_ft_with_wise_ft_from_the_command_line(tiny, tmp_path: Path) -> None:
    from kenner.cli import main

    paths, _, _, weights = tiny
    run = tmp_path / "run"
    args = ["train", "--method", "finetune", "--data", str(paths[0]["image"].parent.parent), "--out-dir", str(run)]
    flags = [
        "--encoder",
        "timm:test_resnet",
        "--weights",
        str(weights),
        "--init",
        "probe",
        "--wise-ft",
        "--epochs",
        "2",
    ]
    common = ["--img-size", "32", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-track", "-q"]
    assert main([*args, *flags, *common, "--cache-dir", str(tmp_path / "cache")]) == 0
    report = (run / "report.md").read_text()
    assert "WiSE-FT alpha" in report and "head start" in report
    info = json.loads((run / "model" / "finetuned.json").read_text())
    assert info["init"] == "probe" and 0 <= info["wise_ft"]["alpha"] <= 1


def test_supcon_fine_tuning_ends_with_a_linear_probe_on_the_new_embeddings(tiny, tmp_path: Path) -> None:
    paths, y, split, weights = tiny
    cfg = config(weights, loss="supcon", supcon_dim=16, supcon_temperature=0.1, batch_size=8)
    model = fit_finetune(paths, y, split, CLASSES, cfg, out_dir=tmp_path / "run")
    probe = model.info["supcon_probe"]
    assert model.model.head.projection is None and model.info["loss"] == "supcon"
    assert all(np.isfinite(r["train_loss"]) for r in model.history)
    initial = torch.load(weights, weights_only=True)
    state = model.model.state_dict()
    assert any(not torch.equal(state[f"backbone.model.{k}"], v) for k, v in initial.items() if v.is_floating_point())
    val = [p for p, s in zip(paths, split, strict=True) if s == "val"]
    predicted = model.predict_proba(val).argmax(axis=1)
    assert probe["val_accuracy"] == pytest.approx(float((predicted == y[split == "val"]).mean()))
    model.save(tmp_path / "model")
    np.testing.assert_allclose(
        FinetunedModel.load(tmp_path / "model", device="cpu").predict_proba(val), model.predict_proba(val)
    )
    assert model.summary()["probe val accuracy"] == probe["val_accuracy"]
    with pytest.raises(KennerError, match="linear probe"):
        fit_finetune(paths, y, split, CLASSES, config(weights, loss="supcon", head_type="mlp"), out_dir=tmp_path / "x")
