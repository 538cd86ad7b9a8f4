"""RetrievalConfig: the knobs of ``kenner train --mode metric`` and ``--mode side-classifier``.

Shared training knobs (epochs, lr, weight decay, seed, device, early-stopping patience, ArcFace scale
and margin) come from the run's ``HeadConfig``; these are the ones only retrieval and the side
classifier have. Each field's ``help`` metadata becomes a CLI flag via ``config.add_dataclass_arguments``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kenner.errors import KennerError
from kenner.fields import flag_name, knob
from kenner.heads.side import SIDE_TASKS
from kenner.retrieval.vote import VOTE_METHODS

PROJ_TYPES = ("none", "linear", "mlp")
GALLERY_SPLITS = ("train", "train+val")
EVAL_METHODS = ("none", "knn", "hdbscan")
REJECT_SIGNALS = ("distance", "margin", "both")


@dataclass(frozen=True)
class RetrievalConfig:
    """Metric learning, Faiss gallery, kNN vote, reject option, clustering eval, side classifier."""

    proj_type: str = knob("mlp", "projection head trained by metric learning: none (raw kNN) | linear | mlp")
    embedding_dim: int = knob(128, "output size of the projection (L2-normalised)")
    proj_hidden_dim: int = knob(512, "hidden size of the mlp projection")
    p: int = knob(16, "classes per metric-learning batch (P of P×K)")
    k: int = knob(4, "samples per class per metric-learning batch (K of P×K)")
    metric_scale: float = knob(64.0, "ArcFace scale s of metric mode (lower it, e.g. 30, for few classes)")
    metric_margin: float = knob(0.5, "ArcFace margin m of metric mode (lower it, e.g. 0.3, for few classes)")
    warmup_epochs: int = knob(2, "epochs with ArcFace margin 0 before the target margin")
    triplet_weight: float = knob(1.0, "weight of the mined triplet loss added to ArcFace (0 = off)")
    triplet_margin: float = knob(0.1, "margin of the triplet loss and its semi-hard miner")
    gallery: str = knob("train", "gallery rows: train | train+val")
    index_factory: str = knob("Flat", "Faiss index_factory string (Flat = exact; IVF256,Flat; HNSW32; ...)")
    search_params: str = knob("", "Faiss search parameters, e.g. nprobe=16 or efSearch=128")
    vote: str = knob("temperature", f"kNN vote: {' | '.join(VOTE_METHODS)}")
    knn_k: int = knob(20, "neighbours that vote")
    knn_temperature: float = knob(0.07, "temperature of the temperature-weighted vote (DINO)")
    eval_method: str = knob(
        "knn", "extra evaluation: none | knn (knn_metrics.json) | hdbscan (knn + HDBSCAN)"
    )
    hdbscan_min_cluster_size: int = knob(5, "HDBSCAN min_cluster_size")
    target_precision: float | None = knob(None, "tune a reject threshold on val for this precision (0.95)")
    target_coverage: float | None = knob(None, "tune a reject threshold on val for this coverage (e.g. 0.8)")
    reject_by: str = knob(
        "distance", "reject signal: distance (top-1 cosine distance; 1 - max probability for classifiers) | "
        "margin (top-1 minus top-2 vote or probability) | both (both limits tuned together)"
    )
    side_task: str = knob("pair", "side classifier: pair (which order?) | single (which side is a photo?)")
    disable_mask_pooling: bool = knob(False, "side classifier: pooled embeddings, not mask-pooled tokens")

    def __post_init__(self) -> None:
        for name, choices in (("proj_type", PROJ_TYPES), ("gallery", GALLERY_SPLITS), ("vote", VOTE_METHODS),
                              ("eval_method", EVAL_METHODS), ("reject_by", REJECT_SIGNALS),
                              ("side_task", SIDE_TASKS)):
            value = getattr(self, name)
            if value not in choices:
                raise KennerError(f"{flag_name(name)} must be one of {', '.join(choices)}, not {value!r}")
        for name in ("embedding_dim", "proj_hidden_dim", "p", "k", "knn_k", "hdbscan_min_cluster_size"):
            if getattr(self, name) < 1:
                raise KennerError(f"{flag_name(name)} must be at least 1, not {getattr(self, name)}")
        if self.k < 2:
            raise KennerError("--k must be at least 2: triplets need two samples of a class in a batch")
        for name in ("warmup_epochs", "triplet_weight", "triplet_margin"):
            if getattr(self, name) < 0:
                raise KennerError(f"{flag_name(name)} must be >= 0, not {getattr(self, name)}")
        if self.knn_temperature <= 0:
            raise KennerError(f"--knn-temperature must be > 0, not {self.knn_temperature}")
        if self.target_precision is not None and self.target_coverage is not None:
            raise KennerError("give --target-precision or --target-coverage, not both")
        for name in ("target_precision", "target_coverage"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise KennerError(f"{flag_name(name)} must be in (0, 1], not {value}")
