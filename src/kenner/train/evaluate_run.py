"""``kenner evaluate``: score a trained run on its own split or on another labelled dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from kenner.config.legacy import DataConfig, load_run_config
from kenner.data.splits import load_split, split_of_samples
from kenner.encoders.views import combine_views
from kenner.errors import KennerError
from kenner.evaluate.outputs import write_evaluation
from kenner.evaluate.report import write_report
from kenner.heads.persist import load_head
from kenner.pipeline import build_encoder, embed_views, load_data
from kenner.train.run import load_model_info


def evaluate_run(run_dir: Path, *, data: str | None = None, out_dir: str | None = None,
                 background_class: str | None = None, cache_dir: str | None = None) -> dict[str, dict[str, float]]:
    """Embed the dataset as the run did, predict with its head, write metrics and a report."""
    info = load_model_info(run_dir)
    if info["mode"] != "classifier":
        raise KennerError(f"{run_dir}: evaluate supports classifier runs; {info['mode']!r} runs report at train time")
    cfg = load_run_config(run_dir / "run_config.json")
    own_data = data is None or Path(data).resolve() == Path(cfg.data.data).resolve()
    data_cfg: DataConfig = replace(cfg.data, data=data or cfg.data.data,
                                   background_class=background_class or cfg.data.background_class)
    target = Path(out_dir) if out_dir else run_dir / "eval"
    dataset, exclusions = load_data(data_cfg, target)
    unknown = sorted(set(dataset.classes) - set(info["class_names"]))
    if unknown:
        raise KennerError(f"{data_cfg.data}: classes the run never saw: {', '.join(unknown[:10])}")
    if dataset.views != info["view_names"]:
        raise KennerError(f"{data_cfg.data}: views {dataset.views} differ from the run's {info['view_names']}")
    enc_cfg = replace(cfg.encoder, cache_dir=cache_dir or cfg.encoder.cache_dir)
    encoder = build_encoder(enc_cfg)
    per_view = embed_views([s.paths for s in dataset.samples], dataset.views, encoder, enc_cfg,
                           data_cfg.background_color)
    X = combine_views(per_view, info["views"]).astype(np.float32, copy=False)
    class_to_idx = {name: i for i, name in enumerate(info["class_names"])}
    y = np.asarray([class_to_idx[label] for label in dataset.labels])
    split = (np.asarray(split_of_samples(load_split(run_dir / "splits"), dataset.groups)) if own_data
             else np.full(len(y), "test"))
    proba = load_head(run_dir / "model").predict_proba(X)
    evaluation = write_evaluation(target, y=y, split=split, proba=proba, class_names=info["class_names"],
                                  sample_ids=list(dataset.ids), background_class=data_cfg.background_class)
    write_report(target, {
        "title": f"kenner evaluation of {run_dir.name} on {Path(data_cfg.data).name}",
        "dataset": {"source": str(dataset.source), "samples": len(y), "classes": len(set(y.tolist())),
                    "views": dataset.views, "excluded": len(exclusions)},
        "encoder": {"spec": info["encoder"], "fingerprint": info["fingerprint"], "views": info["views"]},
        "metrics": evaluation.metrics,
        "per_class": evaluation.per_class,
    })
    return evaluation.metrics
