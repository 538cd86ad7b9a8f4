"""The web UI at ``/ui`` (Gradio blocks mounted on the API's FastAPI app).

Tabs: *Predict* (an image per view -> top-k bars, the reject banner, nearest gallery images), *Runs* (the runs
under a folder; a run's report, confusion matrix, per-class table and most confused pairs -> the misclassified
images), *Compare* (chosen runs side by side) and *Train* (dataset, encoder, method and head knobs, each with the
help text of its ``--flag``; a background ``kenner train`` with progress and cancel; the new run appears under
Runs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from kenner.config.fields import flag_name
from kenner.config.sections import HeadConfig, OptimConfig
from kenner.errors import ImageError, KennerError
from kenner.methods import METHODS
from kenner.serve.browse import confused_pairs, find_runs, misclassified, runs_table
from kenner.serve.engine import Engine, Query
from kenner.serve.jobs import Jobs

TRAIN_METHODS = ("linear", "mlp", "arcface", "knn", "metric")
ENCODERS = ("default", "hf:facebook/dinov2-small", "timm:convnext_tiny", "open_clip:ViT-B-32")


def knob_help(section: type, name: str) -> str:
    """The ``--flag`` help of a config field (the same text ``kenner train --help`` shows)."""
    field = next(f for f in dataclasses.fields(section) if f.name == name)
    return f"{flag_name(name)}: {field.metadata['help']}"


def _choices(section: type, name: str) -> list[str]:
    return list(next(f for f in dataclasses.fields(section) if f.name == name).metadata["choices"])


def build_ui(engine: Callable[[], Engine | None], views: list[str], runs_dir: Path, jobs: Jobs) -> gr.Blocks:
    """The UI's blocks. ``engine()``: the served run's engine (None while it loads); ``views``: the views it
    reads; ``runs_dir``: the folder whose runs the Runs, Compare and Train tabs work with."""
    runs_dir = Path(runs_dir)

    def run_names() -> list[str]:
        return list(runs_table(runs_dir)["run"])

    with gr.Blocks(title="kenner") as blocks:
        gr.Markdown("# kenner")
        with gr.Tab("Predict"):
            images = [gr.Image(type="filepath", label=f"{view} image", elem_id=f"predict-{view}") for view in views]
            with gr.Row():
                top_k = gr.Slider(1, 10, value=5, step=1, label="top-k labels")
                neighbours = gr.Slider(0, 12, value=6, step=1, label="gallery neighbours (knn, metric runs)")
            predict_button = gr.Button("Predict", variant="primary", elem_id="predict-button")
            verdict = gr.Markdown(elem_id="predict-verdict")
            label = gr.Label(label="top-k", elem_id="predict-label")
            gallery = gr.Gallery(label="nearest gallery images", columns=6, height=220)

            def predict(*values: Any) -> tuple[str, dict[str, float], list[tuple[str, str]]]:
                *files, k, n = values
                loaded = engine()
                if loaded is None:
                    raise gr.Error("the model is still loading")
                if any(not f for f in files):
                    raise gr.Error(f"upload one image per view: {', '.join(views)}")
                paths = {view: Path(f) for view, f in zip(views, files, strict=True)}
                try:
                    pixels = {view: loaded.pixels(path) for view, path in paths.items()}
                    (result,) = loaded.answer([Query(paths[views[0]].name, paths, int(k), int(n))], [pixels])
                except (ImageError, KennerError) as error:
                    raise gr.Error(str(error)) from None
                if result["accepted"]:
                    text = f"**Prediction: {result['predicted']}**"
                else:
                    text = f"⚠️ **unclassifiable** — {result['reject_reason']} (reshoot or check by hand)"
                scores = {p["label"]: p["probability"] for p in result["predictions"]}
                thumbs = [
                    (
                        str(loaded.gallery_image(int(n["thumbnail_url"].split("/")[3]))),
                        f"{n['label']} · {n['distance']:.3f}",
                    )
                    for n in result["neighbours"]
                ]
                return text, scores, thumbs

            predict_button.click(predict, [*images, top_k, neighbours], [verdict, label, gallery])

        with gr.Tab("Runs"):
            gr.Markdown(f"Runs under `{runs_dir}`")
            refresh = gr.Button("Refresh", size="sm")
            table = gr.Dataframe(value=lambda: runs_table(runs_dir), interactive=False, elem_id="runs-table")
            chosen = gr.Dropdown(
                choices=run_names(), value=None, label="run", elem_id="runs-choice", allow_custom_value=True
            )
            with gr.Row():
                matrix = gr.Image(label="confusion matrix", elem_id="runs-confusion", height=360)
                per_class = gr.Dataframe(label="per class", interactive=False)
            pairs = gr.Dropdown(label="most confused pairs (true → predicted, count)", choices=[], elem_id="runs-pairs")
            wrong = gr.Gallery(label="misclassified images", columns=6, height=220, elem_id="runs-wrong")
            report = gr.Markdown(elem_id="runs-report")

            def refresh_runs() -> tuple[pd.DataFrame, Any]:
                return runs_table(runs_dir), gr.update(choices=run_names())

            def open_run(name: str) -> tuple[Any, ...]:
                run = runs_dir / name if name else None
                if run is None or not (run / "model").is_dir():
                    return None, None, gr.update(choices=[], value=None), [], ""
                matrix_path = run / "confusion_matrix.png"
                per_class_path = run / "per_class.csv"
                choices = [f"{t} → {p} ({n})" for t, p, n in confused_pairs(run)]
                report_text = (run / "report.md").read_text(encoding="utf-8") if (run / "report.md").is_file() else ""
                return (
                    str(matrix_path) if matrix_path.is_file() else None,
                    pd.read_csv(per_class_path) if per_class_path.is_file() else None,
                    gr.update(choices=choices, value=choices[0] if choices else None),
                    _wrong_images(run, choices[0]) if choices else [],
                    report_text,
                )

            def show_pair(name: str, pair: str | None) -> list[tuple[str, str]]:
                return _wrong_images(runs_dir / name, pair) if name and pair else []

            refresh.click(refresh_runs, None, [table, chosen])
            chosen.change(open_run, chosen, [matrix, per_class, pairs, wrong, report])
            pairs.change(show_pair, [chosen, pairs], wrong)

        with gr.Tab("Compare"):
            compared = gr.Dropdown(choices=run_names(), multiselect=True, label="runs", elem_id="compare-choice")
            compare_button = gr.Button("Compare", elem_id="compare-button")
            comparison = gr.Dataframe(interactive=False, elem_id="compare-table")
            compare_button.click(
                lambda names: runs_table(runs_dir, [runs_dir / n for n in names or []]), compared, comparison
            )
            compare_button.click(lambda: gr.update(choices=run_names()), None, compared)

        with gr.Tab("Train"):
            with gr.Row():
                data = gr.Textbox(label="dataset", info="--data: a class-per-folder tree or a TSV/CSV manifest")
                name = gr.Textbox(label="run name", info="the new run's folder under the runs folder")
            with gr.Row():
                encoder = gr.Dropdown(
                    list(ENCODERS), value="default", label="encoder", allow_custom_value=True, info="--encoder"
                )
                method = gr.Dropdown(
                    list(TRAIN_METHODS),
                    value="linear",
                    label="method",
                    info="--method: " + "; ".join(f"{m}: {METHODS.get(m).summary}" for m in TRAIN_METHODS),
                )
            with gr.Row():
                epochs = gr.Slider(
                    1,
                    300,
                    value=OptimConfig.epochs,
                    step=1,
                    label="epochs",
                    info=knob_help(OptimConfig, "epochs"),
                    elem_id="train-epochs",
                )
                lr = gr.Number(
                    value=OptimConfig.lr, label="learning rate", info=knob_help(OptimConfig, "lr"), elem_id="train-lr"
                )
                dropout = gr.Slider(
                    0, 0.9, value=HeadConfig.dropout, step=0.05, label="dropout", info=knob_help(HeadConfig, "dropout")
                )
            with gr.Row():
                standardize = gr.Dropdown(
                    _choices(HeadConfig, "standardize"),
                    value=HeadConfig.standardize,
                    label="standardize",
                    info=knob_help(HeadConfig, "standardize"),
                )
                logit_adjust = gr.Dropdown(
                    _choices(HeadConfig, "logit_adjust"),
                    value=HeadConfig.logit_adjust,
                    label="logit adjustment",
                    info=knob_help(HeadConfig, "logit_adjust"),
                )
                calibrate = gr.Checkbox(
                    value=HeadConfig.calibrate, label="calibrate", info=knob_help(HeadConfig, "calibrate")
                )
                balanced = gr.Checkbox(
                    value=HeadConfig.balanced_softmax,
                    label="balanced softmax",
                    info=knob_help(HeadConfig, "balanced_softmax"),
                )
            with gr.Row():
                train_button = gr.Button("Train", variant="primary", elem_id="train-button")
                cancel_button = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            status = gr.Markdown(elem_id="train-status")
            output = gr.Code(label="output", language=None, lines=8)
            job_id = gr.State(None)

            def train(*values: Any) -> tuple[int, str, str]:
                data_path, run_name, enc, meth, n_epochs, rate, std, adjust, calib, bal, drop = values
                if not data_path or not run_name:
                    raise gr.Error("give a dataset and a run name")
                out_dir = runs_dir / run_name
                argv = ["train", "--data", data_path, "--out-dir", str(out_dir), "--encoder", enc, "--method", meth]
                argv += ["--no-track", "--num-workers", "0"]
                if meth in ("linear", "mlp", "arcface", "metric"):
                    argv += ["--epochs", str(int(n_epochs)), "--lr", str(rate)]
                if meth in ("linear", "mlp", "arcface"):
                    argv += ["--standardize", std, "--logit-adjust", adjust, "--dropout", str(drop)]
                    argv += ["--calibrate" if calib else "--no-calibrate"]
                    argv += ["--balanced-softmax"] if bal else []
                job = jobs.start(argv, out_dir)
                return job.id, job.status(), "kenner " + " ".join(argv)

            def poll(current: int | None) -> tuple[str, str]:
                job = jobs.get(current) if current else None
                if job is None:
                    return "", ""
                progress = job.progress()
                bar = (
                    ""
                    if progress is None
                    else f" — {'█' * round(20 * progress)}{'░' * (20 - round(20 * progress))} {progress:.0%}"
                )
                return job.status() + bar, job.tail()

            def cancel(current: int | None) -> str:
                job = jobs.get(current) if current else None
                if job is None:
                    return "no job"
                jobs.cancel(job.id)
                time.sleep(0.2)
                return job.status()

            knobs = [data, name, encoder, method, epochs, lr, standardize, logit_adjust, calibrate, balanced, dropout]
            train_button.click(train, knobs, [job_id, status, output])
            cancel_button.click(cancel, job_id, status)
            gr.Timer(1.0).tick(poll, job_id, [status, output])
    return blocks


def _wrong_images(run: Path, pair: str) -> list[tuple[str, str]]:
    true, _, rest = pair.partition(" → ")
    predicted = rest.rsplit(" (", 1)[0]
    return misclassified(run, true, predicted)


def default_runs_dir(run_dir: Path) -> Path:
    """The folder of runs next to the served one: its parent (or the run itself if it has no siblings)."""
    parent = Path(run_dir).resolve().parent
    return parent if find_runs(parent, max_depth=2) else Path(run_dir).resolve()
