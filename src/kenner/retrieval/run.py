"""Run folders of ``kenner train --mode metric`` and ``--mode side-classifier``.

Metric mode: (optional) projection trained by metric learning -> Faiss gallery of the train rows
(optionally train+val) -> kNN vote -> reject option tuned on val. Gallery rows are scored leave-one-out
(each is searched without itself), so train figures are not trivially perfect. Writes the shared
artifacts (metrics.json, predictions.parquet, per_class.csv, confusion_matrix.png, report.md) plus
knn_metrics.json, embeddings_val.npy, labels_val.npy, reject.json, coverage_accuracy.png,
hdbscan_metrics.json / hdbscan_labels.npy (``--eval-method hdbscan``) and model/ (gallery, projection).

Side classifier: see :mod:`kenner.heads.side`; writes the shared artifacts plus label_mapping.json and
history.json (per-epoch metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config import RunConfig
from kenner.encoders.base import Encoder
from kenner.errors import KennerError
from kenner.evaluate.outputs import write_evaluation, write_predictions
from kenner.evaluate.plots import plot_curve
from kenner.evaluate.report import write_report
from kenner.heads import create_head
from kenner.heads.persist import save_head
from kenner.heads.projection import ProjectionHead
from kenner.heads.side import side_class_names, side_dataset, view_features
from kenner.io import atomic_write_json
from kenner.pipeline import PreparedEmbeddings, build_encoder, pick_device, prepare_embeddings
from kenner.retrieval.clustering import hdbscan_eval
from kenner.retrieval.config import RetrievalConfig
from kenner.retrieval.index import Gallery, Neighbours, l2_normalize, save_npy
from kenner.retrieval.metrics import knn_classification, retrieval_metrics
from kenner.retrieval.model import RetrievalModel, RetrievalPrediction
from kenner.retrieval.reject import (
    RejectRule,
    coverage_accuracy_curve,
    evaluate_rule,
    tune_reject_rule,
)
from kenner.retrieval.vote import VOTE_METHODS, vote
from kenner.train.metric import MetricTrainConfig
from kenner.train.run import report_context, save_model_info

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SIDE_ONLY = ("side_task", "disable_mask_pooling")
MAX_EVAL_K = 1000  # neighbours searched for mAP@R; larger classes make mAP@R a lower bound


def train_metric_or_side(
    cfg: RunConfig, retrieval: RetrievalConfig | None = None
) -> dict[str, dict[str, float]]:
    """Entry point of ``kenner train`` for modes ``metric`` and ``side-classifier``; metrics per split.

    ``retrieval`` defaults to the run config's ``retrieval`` section when it has one, else to defaults.
    """
    rcfg = retrieval or getattr(cfg, "retrieval", None) or RetrievalConfig()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "run_config.json", cfg.to_dict())
    atomic_write_json(out_dir / "retrieval_config.json", dataclasses.asdict(rcfg))
    if cfg.mode == "metric":
        prepared = prepare_embeddings(cfg.data, cfg.split, cfg.encoder, out_dir=out_dir)
        return run_metric_mode(prepared, cfg, rcfg)
    if cfg.mode == "side-classifier":
        encoder = build_encoder(cfg.encoder)
        prepared = prepare_embeddings(cfg.data, cfg.split, cfg.encoder, out_dir=out_dir, encoder=encoder)
        return run_side_classifier(prepared, cfg, rcfg, encoder=encoder)
    raise KennerError(f"mode {cfg.mode!r} is not a retrieval mode (metric, side-classifier)")


def metric_train_config(cfg: RunConfig, rcfg: RetrievalConfig) -> MetricTrainConfig:
    """Training knobs: shared ones from the head config, P×K and losses from the retrieval config."""
    head = cfg.head
    return MetricTrainConfig(
        epochs=head.epochs, lr=head.lr, weight_decay=head.weight_decay, p=rcfg.p, k=rcfg.k,
        arcface_scale=head.arcface_scale, arcface_margin=head.arcface_margin,
        warmup_epochs=rcfg.warmup_epochs, triplet_weight=rcfg.triplet_weight,
        triplet_margin=rcfg.triplet_margin,
        patience=head.early_stopping_patience, seed=head.seed, device=pick_device(head.device),
    )


def run_metric_mode(
    prepared: PreparedEmbeddings, cfg: RunConfig, rcfg: RetrievalConfig
) -> dict[str, dict[str, float]]:
    """Metric learning + retrieval on prepared embeddings; writes the run folder ``cfg.out_dir``."""
    out_dir = Path(cfg.out_dir)
    split, y, n_classes = prepared.split, prepared.y, len(prepared.class_names)
    train, val = split == "train", split == "val"
    if not train.any():
        raise KennerError("the split has no training samples; check --split-ratios and the dataset size")
    started = time.perf_counter()
    projection = None
    if rcfg.proj_type != "none":
        projection = ProjectionHead(rcfg.proj_type, rcfg.embedding_dim, rcfg.proj_hidden_dim,
                                    metric_train_config(cfg, rcfg))
        projection.fit(prepared.X[train], y[train], X_val=prepared.X[val] if val.any() else None,
                       y_val=y[val] if val.any() else None, n_classes=n_classes)
    fit_seconds = time.perf_counter() - started

    Z = projection.transform(prepared.X) if projection is not None else l2_normalize(prepared.X)
    in_gallery = train | (val if rcfg.gallery == "train+val" else False)
    first_view = prepared.dataset.views[0]
    rows = np.flatnonzero(in_gallery)
    gallery = Gallery.build(
        Z[in_gallery], y[in_gallery], factory=rcfg.index_factory, search_params=rcfg.search_params,
        class_names=prepared.class_names, ids=[prepared.sample_ids[i] for i in rows],
        paths=[str(prepared.dataset.samples[i].paths[first_view]) for i in rows],
    )
    model = RetrievalModel(gallery=gallery, n_classes=n_classes, projection=projection, vote=rcfg.vote,
                           k=rcfg.knn_k, temperature=rcfg.knn_temperature)
    self_row = np.full(len(y), -1)
    self_row[in_gallery] = np.arange(int(in_gallery.sum()))
    largest_class = int(np.bincount(model.gallery.labels).max())
    eval_k = min(len(model.gallery) - 1, max(rcfg.knn_k, 10, largest_class), MAX_EVAL_K)
    neighbours = model.gallery.search(Z, max(eval_k, 1), exclude=self_row)

    prediction = model.classify_neighbours(neighbours)
    reject_summary, rule = tune_reject(prediction, y, split, rcfg, out_dir)
    model.reject = rule
    evaluation = write_evaluation(out_dir, y=y, split=split, proba=prediction.scores.astype(np.float64),
                                  class_names=prepared.class_names, sample_ids=prepared.sample_ids,
                                  background_class=cfg.data.background_class, predicted=prediction.voted)
    if rule is not None:  # predictions.parquet says "unclassifiable" (null) where the rule rejects
        accepted = rule.accept(prediction.distance, prediction.margin)
        write_predictions(out_dir / "predictions.parquet", sample_ids=prepared.sample_ids, split=split,
                          y_true=y, proba=prediction.scores, class_names=prepared.class_names,
                          predicted=np.where(accepted, prediction.voted, -1))

    knn = {}
    if rcfg.eval_method != "none":
        knn = knn_report(neighbours, y, split, model, in_gallery)
        atomic_write_json(out_dir / "knn_metrics.json", knn)
    save_npy(out_dir / "embeddings_val.npy", Z[val])
    save_npy(out_dir / "labels_val.npy", y[val])
    sections = [("Retrieval", retrieval_markdown(knn, rcfg, len(model.gallery), eval_k)),
                ("Reject option", reject_markdown(reject_summary))]
    if rcfg.eval_method == "hdbscan":
        sections.append(("HDBSCAN on val embeddings", write_hdbscan(Z[val], y[val], rcfg, out_dir)))

    model.save(out_dir / "model")
    save_model_info(out_dir / "model", cfg, prepared, retrieval=model.settings())
    config = {"profile": cfg.profile, "metric fit s": round(fit_seconds, 2),
              **{k: v for k, v in dataclasses.asdict(rcfg).items() if k not in SIDE_ONLY}}
    if projection is not None:
        config["best epoch (val Recall@1)"] = projection.best_epoch_
    write_report(out_dir, report_context(f"kenner metric run {out_dir.name}", prepared, evaluation,
                                         config=config, sections=sections))
    return {name: {**evaluation.metrics[name], **knn.get(name, {})} for name in evaluation.metrics}


def knn_report(neighbours: Neighbours, y: np.ndarray, split: np.ndarray, model: RetrievalModel,
               in_gallery: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per split: Recall@1/5/10, precision@1, mAP@R and kNN accuracy / macro-F1 of every vote method."""
    report: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        mask = split == name
        if not mask.any():
            continue
        part = Neighbours(neighbours.indices[mask], neighbours.similarities[mask], neighbours.labels[mask])
        entry: dict[str, Any] = retrieval_metrics(part.labels, y[mask], model.gallery.labels)
        entry["leave_one_out"] = bool(in_gallery[mask].any())
        for method in VOTE_METHODS:
            voted = vote(part, model.n_classes, method=method, k=model.k, temperature=model.temperature)
            scores = knn_classification(y[mask], voted.predictions)
            if method == model.vote:
                entry.update(scores)
            entry.update({f"{method}_{key}": value for key, value in scores.items()})
        report[name] = entry
    return report


def tune_reject(prediction: RetrievalPrediction, y: np.ndarray, split: np.ndarray, rcfg: RetrievalConfig,
                out_dir: Path) -> tuple[dict[str, Any], RejectRule | None]:
    """Tune the reject rule on val (when a target is set), measure it on every split, plot the curve."""
    correct = prediction.voted == y
    signal = -prediction.distance if rcfg.reject_by == "distance" else prediction.margin
    tune_on = "val" if (split == "val").any() else None
    curve_split = tune_on or ("test" if (split == "test").any() else "train")
    curve = coverage_accuracy_curve(signal[split == curve_split], correct[split == curve_split])
    summary: dict[str, Any] = {"by": rcfg.reject_by, "curve_split": curve_split}
    rule, marker = None, None
    if rcfg.target_precision is not None or rcfg.target_coverage is not None:
        if tune_on is None:
            raise KennerError("--target-precision/--target-coverage are tuned on val, and val is empty")
        mask = split == "val"
        rule, point = tune_reject_rule(prediction.distance[mask], prediction.margin[mask], correct[mask],
                                       by=rcfg.reject_by, target_precision=rcfg.target_precision,
                                       target_coverage=rcfg.target_coverage)
        summary.update(rule=rule.to_dict(), target_precision=rcfg.target_precision,
                       target_coverage=rcfg.target_coverage, val_operating_point=point.to_dict())
        summary["splits"] = {name: evaluate_rule(rule, prediction.distance[split == name],
                                                 prediction.margin[split == name], correct[split == name])
                             for name in SPLITS if (split == name).any()}
        marker = (point.coverage, point.precision)
    plot_curve(curve["coverage"], curve["accuracy"], out_dir / "coverage_accuracy.png", xlabel="coverage",
               ylabel="accuracy of accepted",
               title=f"Coverage–accuracy ({curve_split}, by {rcfg.reject_by})",
               marker_point=marker)
    atomic_write_json(out_dir / "reject.json", summary)
    return summary, rule


def write_hdbscan(Z: np.ndarray, y: np.ndarray, rcfg: RetrievalConfig, out_dir: Path) -> str:
    """HDBSCAN on the val embeddings: hdbscan_metrics.json, hdbscan_labels.npy; markdown for the report."""
    if len(Z) < max(2, rcfg.hdbscan_min_cluster_size):
        log.warning("HDBSCAN skipped: %d val embeddings, fewer than --hdbscan-min-cluster-size", len(Z))
        return "Skipped: too few validation embeddings."
    metrics, clusters = hdbscan_eval(Z, y, min_cluster_size=rcfg.hdbscan_min_cluster_size)
    atomic_write_json(out_dir / "hdbscan_metrics.json", metrics)
    save_npy(out_dir / "hdbscan_labels.npy", clusters)
    return _table(["metric", "value"], [[key, _fmt(value)] for key, value in metrics.items()])


def retrieval_markdown(
    knn: dict[str, dict[str, Any]], rcfg: RetrievalConfig, gallery_size: int, k: int
) -> str:
    lines = [f"Gallery: {gallery_size} {rcfg.gallery} rows in a Faiss `{rcfg.index_factory}` index "
             f"(cosine similarity; distance = 1 − cosine). Vote: {rcfg.vote} over k={rcfg.knn_k}; "
             f"mAP@R searched to {k} neighbours. Gallery rows are scored leave-one-out.", ""]
    if not knn:
        return "\n".join(lines)
    keys = ["recall_at_1", "recall_at_5", "recall_at_10", "map_at_r", "knn_accuracy", "knn_macro_f1",
            *(f"{m}_knn_macro_f1" for m in VOTE_METHODS)]
    rows = [[name, *(_fmt(values.get(key)) for key in keys)] for name, values in knn.items()]
    return "\n".join([*lines, _table(["split", *keys], rows)])


def reject_markdown(summary: dict[str, Any]) -> str:
    text = [f"Coverage–accuracy curve on {summary['curve_split']} (signal: {summary['by']}; "
            "the marked point is the tuned operating point):", "![coverage–accuracy](coverage_accuracy.png)"]
    if "rule" not in summary:
        text.append("No target (`--target-precision` / `--target-coverage`): every prediction is accepted.")
        return "\n\n".join(text)
    point = summary["val_operating_point"]
    missed = "" if point["target_met"] else " (**target not reached on val**)"
    text.append(f"Rule {summary['rule']} tuned on val: coverage {point['coverage']:.3f}, precision "
                f"{point['precision']:.3f}{missed}. Measured on each split with the same rule:")
    header = ["split", "coverage", "precision (accepted)", "accuracy (all)", "accepted", "n"]
    keys = ("coverage", "precision", "accuracy_all")
    rows = [[name, *(_fmt(v[key]) for key in keys), v["n_accepted"], v["n"]]
            for name, v in summary["splits"].items()]
    text.append(_table(header, rows))
    return "\n\n".join(text)


def has_patch_tokens(encoder: Encoder) -> bool:
    return type(encoder).forward_tokens is not Encoder.forward_tokens


def run_side_classifier(prepared: PreparedEmbeddings, cfg: RunConfig, rcfg: RetrievalConfig, *,
                        encoder: Encoder) -> dict[str, dict[str, float]]:
    """Train the coin side classifier (order of two views, or side of one photo); writes the run folder."""
    out_dir = Path(cfg.out_dir)
    views = list(prepared.dataset.views)
    names = side_class_names(views, rcfg.side_task)
    use_tokens = not rcfg.disable_mask_pooling and has_patch_tokens(encoder)
    if use_tokens:
        per_view = {view: view_features(encoder, [s.paths[view] for s in prepared.dataset.samples],
                                        background=tuple(cfg.data.background_color)) for view in views}
        features = "patch tokens, mask-weighted pooling"
    else:
        if not rcfg.disable_mask_pooling:
            log.info("encoder %s has no patch tokens: using its pooled embeddings", prepared.encoder_spec)
        per_view, features = prepared.per_view, "pooled embeddings (cached)"
    X, y, source = side_dataset(per_view[views[0]], per_view[views[1]], rcfg.side_task)
    split = prepared.split[source]
    ids = [f"{prepared.sample_ids[i]}:{names[label]}" for i, label in zip(source, y, strict=True)]
    train, val = split == "train", split == "val"
    if not train.any():
        raise KennerError("the split has no training samples; check --split-ratios and the dataset size")
    head = create_head(cfg.head.head_type, config=cfg.head)
    head.fit(X[train], y[train], X_val=X[val] if val.any() else None, y_val=y[val] if val.any() else None,
             n_classes=2)
    evaluation = write_evaluation(out_dir, y=y, split=split, proba=head.predict_proba(X), class_names=names,
                                  sample_ids=ids)
    mapping = {"task": rcfg.side_task, "views": views, "features": features,
               "classes": dict(enumerate(names)), "class_to_idx": {name: i for i, name in enumerate(names)}}
    atomic_write_json(out_dir / "label_mapping.json", mapping)
    atomic_write_json(out_dir / "class_to_idx.json", mapping["class_to_idx"])
    atomic_write_json(out_dir / "history.json", head.history_)
    save_head(head, out_dir / "model")
    save_model_info(out_dir / "model", cfg, prepared, class_names=names,
                    side={"task": rcfg.side_task, "features": features, "mask_pooling": use_tokens})
    write_report(out_dir, report_context(
        f"kenner side classifier {out_dir.name}", prepared, evaluation,
        config={"task": rcfg.side_task, "features": features, "head": cfg.head.head_type,
                "best epoch": getattr(head, "best_epoch_", None)},
        sections=[("Side classifier", f"Classes: {', '.join(names)}. Each sample gives two rows "
                   f"({'both view orders' if rcfg.side_task == 'pair' else 'one per photo'}); "
                   "both stay in the sample's split. Per-epoch metrics: `history.json`.")],
    ))
    return evaluation.metrics


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
