"""Run folders of ``kenner train --mode metric`` and ``--mode side-classifier``.

Metric mode: (optional) projection trained by metric learning -> Faiss gallery of the train rows
(optionally train+val) -> kNN vote -> reject option tuned on val. Gallery rows are scored leave-one-out
(each is searched without itself), so train figures are not trivially perfect. Writes the shared
artifacts (metrics.json, predictions.parquet, per_class.csv, confusion_matrix.png, report.md) plus
knn_metrics.json, embeddings_val.npy, labels_val.npy, reject.json, coverage_accuracy.png,
hdbscan_metrics.json / hdbscan_labels.npy (``--eval-method hdbscan``) and model/ (gallery, projection).

Side classifier: see :mod:`kenner.heads.side`; writes the shared artifacts plus label_mapping.json,
history.json (per-epoch metrics) and the reject option on its probabilities (reject.json,
coverage_accuracy.png); :mod:`kenner.retrieval.side_predict` applies it to new photos.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.legacy import RunConfig
from kenner.device import resolve_device
from kenner.encoders.base import Encoder
from kenner.errors import KennerError
from kenner.evaluate.outputs import write_evaluation
from kenner.evaluate.reject_report import reject_markdown, tune_reject
from kenner.evaluate.report import format_number, markdown_table, write_report
from kenner.heads import create_head
from kenner.heads.persist import save_head
from kenner.heads.projection import ProjectionHead
from kenner.heads.side import side_class_names, side_dataset, view_features
from kenner.io import atomic_write_json
from kenner.pipeline import PreparedEmbeddings, build_encoder, prepare_embeddings
from kenner.retrieval.clustering import hdbscan_eval
from kenner.retrieval.config import RetrievalConfig
from kenner.retrieval.index import Gallery, Neighbours, l2_normalize, save_npy
from kenner.retrieval.metrics import knn_classification, retrieval_metrics
from kenner.retrieval.model import RetrievalModel
from kenner.evaluate.reject import proba_confidence
from kenner.retrieval.vote import VOTE_METHODS, vote
from kenner.track import NullTracker, Tracker
from kenner.train.metric import MetricTrainConfig
from kenner.train.run import log_run, report_context, save_model_info

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SIDE_ONLY = ("side_task", "disable_mask_pooling")
MAX_EVAL_K = 1000  # neighbours searched for mAP@R; larger classes make mAP@R a lower bound


def train_metric_or_side(cfg: RunConfig, tracker: Tracker | None = None) -> dict[str, dict[str, float]]:
    """Entry point of ``kenner train`` for modes ``metric`` and ``side-classifier``; metrics per split."""
    if cfg.mode not in ("metric", "side-classifier"):
        raise KennerError(f"mode {cfg.mode!r} is not a retrieval mode (metric, side-classifier)")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "run_config.json", cfg.to_dict())
    tracker = tracker or NullTracker()
    with tracker.start_run(out_dir.name, cfg.to_dict(), tags={"kenner.mode": cfg.mode}):
        if cfg.mode == "metric":
            prepared = prepare_embeddings(cfg.data, cfg.split, cfg.encoder, out_dir=out_dir)
            metrics, history = run_metric_mode(prepared, cfg, cfg.retrieval)
        else:
            encoder = build_encoder(cfg.encoder)
            prepared = prepare_embeddings(cfg.data, cfg.split, cfg.encoder, out_dir=out_dir, encoder=encoder)
            metrics, history = run_side_classifier(prepared, cfg, cfg.retrieval, encoder=encoder)
        log_run(tracker, out_dir, metrics, history)
    return metrics


def metric_train_config(cfg: RunConfig, rcfg: RetrievalConfig) -> MetricTrainConfig:
    """Training knobs: shared ones from the head config, P×K and losses from the retrieval config."""
    head = cfg.head
    return MetricTrainConfig(
        epochs=head.epochs, lr=head.lr, weight_decay=head.weight_decay, p=rcfg.p, k=rcfg.k,
        arcface_scale=rcfg.metric_scale, arcface_margin=rcfg.metric_margin,
        warmup_epochs=rcfg.warmup_epochs, triplet_weight=rcfg.triplet_weight,
        triplet_margin=rcfg.triplet_margin,
        patience=head.early_stopping_patience, seed=head.seed, device=str(resolve_device(head.device)),
    )


def run_metric_mode(
    prepared: PreparedEmbeddings, cfg: RunConfig, rcfg: RetrievalConfig
) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Metric learning + retrieval on prepared embeddings; writes the run folder ``cfg.out_dir``.

    Returns metrics per split and the projection's per-epoch history (empty without a projection).
    """
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
    reject_summary, rule = tune_reject(prediction.distance, prediction.margin, prediction.voted == y, split,
                                       by=rcfg.reject_by, target_precision=rcfg.target_precision,
                                       target_coverage=rcfg.target_coverage, out_dir=out_dir)
    model.reject = rule
    accepted = rule.accept(prediction.distance, prediction.margin) if rule is not None else None
    evaluation = write_evaluation(out_dir, y=y, split=split, proba=prediction.scores.astype(np.float64),
                                  class_names=prepared.class_names, sample_ids=prepared.sample_ids,
                                  background_class=cfg.data.background_class, predicted=prediction.voted,
                                  accepted=accepted)

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
    metrics = {name: {**evaluation.metrics[name], **knn.get(name, {})} for name in evaluation.metrics}
    return metrics, projection.history_ if projection is not None else []


def knn_report(neighbours: Neighbours, y: np.ndarray, split: np.ndarray, model: RetrievalModel,
               in_gallery: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per split: Recall@1/5/10, precision@1, mAP@R and kNN accuracy / macro-F1 of every vote method."""
    report: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        mask = split == name
        if not mask.any():
            continue
        part = Neighbours(neighbours.indices[mask], neighbours.similarities[mask], neighbours.labels[mask])
        entry: dict[str, Any] = retrieval_metrics(part.labels, y[mask], model.gallery.labels,
                                                  query_in_gallery=in_gallery[mask])
        entry["leave_one_out"] = bool(in_gallery[mask].any())
        for method in VOTE_METHODS:
            voted = vote(part, model.n_classes, method=method, k=model.k, temperature=model.temperature)
            scores = knn_classification(y[mask], voted.predictions)
            if method == model.vote:
                entry.update(scores)
            entry.update({f"{method}_{key}": value for key, value in scores.items()})
        report[name] = entry
    return report


def write_hdbscan(Z: np.ndarray, y: np.ndarray, rcfg: RetrievalConfig, out_dir: Path) -> str:
    """HDBSCAN on the val embeddings: hdbscan_metrics.json, hdbscan_labels.npy; markdown for the report."""
    if len(Z) < max(2, rcfg.hdbscan_min_cluster_size):
        log.warning("HDBSCAN skipped: %d val embeddings, fewer than --hdbscan-min-cluster-size", len(Z))
        return "Skipped: too few validation embeddings."
    metrics, clusters = hdbscan_eval(Z, y, min_cluster_size=rcfg.hdbscan_min_cluster_size)
    atomic_write_json(out_dir / "hdbscan_metrics.json", metrics)
    save_npy(out_dir / "hdbscan_labels.npy", clusters)
    return markdown_table(["metric", "value"], [[key, format_number(value)] for key, value in metrics.items()])


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
    rows = [[name, *(format_number(values.get(key)) for key in keys)] for name, values in knn.items()]
    return "\n".join([*lines, markdown_table(["split", *keys], rows)])


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
    proba = head.predict_proba(X)
    distance, margin = proba_confidence(proba)
    reject_summary, rule = tune_reject(distance, margin, proba.argmax(axis=1) == y, split, by=rcfg.reject_by,
                                       target_precision=rcfg.target_precision,
                                       target_coverage=rcfg.target_coverage, out_dir=out_dir)
    evaluation = write_evaluation(out_dir, y=y, split=split, proba=proba, class_names=names, sample_ids=ids,
                                  accepted=rule.accept(distance, margin) if rule is not None else None)
    mapping = {"task": rcfg.side_task, "views": views, "features": features,
               "classes": dict(enumerate(names)), "class_to_idx": {name: i for i, name in enumerate(names)}}
    atomic_write_json(out_dir / "label_mapping.json", mapping)
    atomic_write_json(out_dir / "class_to_idx.json", mapping["class_to_idx"])
    atomic_write_json(out_dir / "history.json", head.history_)
    save_head(head, out_dir / "model")
    save_model_info(out_dir / "model", cfg, prepared, class_names=names,
                    side={"task": rcfg.side_task, "features": features, "mask_pooling": use_tokens},
                    reject=rule.to_dict() if rule is not None else None)
    write_report(out_dir, report_context(
        f"kenner side classifier {out_dir.name}", prepared, evaluation,
        config={"task": rcfg.side_task, "features": features, "head": cfg.head.head_type,
                "best epoch": getattr(head, "best_epoch_", None)},
        sections=[("Side classifier", f"Classes: {', '.join(names)}. Each sample gives two rows "
                   f"({'both view orders' if rcfg.side_task == 'pair' else 'one per photo'}); "
                   "both stay in the sample's split. Per-epoch metrics: `history.json`."),
                  ("Reject option", reject_markdown(reject_summary))],
    ))
    return evaluation.metrics, head.history_
