"""Unsupervised check of an embedding: HDBSCAN clusters compared with the true classes.

Embeddings are L2-normalised first, so Euclidean distance ranks pairs like cosine distance.
Reported: ARI and NMI over all points (noise points form one extra group, so a clustering that
calls everything noise scores 0) and over clustered points only, the noise fraction, the number of
clusters and purity (share of clustered points that belong to their cluster's majority class).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from kenner.errors import KennerError
from kenner.retrieval.index import l2_normalize


def cluster_purity(cluster_labels: np.ndarray, class_labels: np.ndarray) -> float:
    """Share of non-noise points that carry their cluster's majority class (nan when all are noise)."""
    cluster_labels = np.asarray(cluster_labels)
    class_labels = np.asarray(class_labels)
    clustered = cluster_labels >= 0
    if not clustered.any():
        return float("nan")
    majority_total = 0
    for cluster in np.unique(cluster_labels[clustered]):
        _, counts = np.unique(class_labels[cluster_labels == cluster], return_counts=True)
        majority_total += counts.max()
    return majority_total / int(clustered.sum())


def hdbscan_eval(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    min_cluster_size: int = 5,
    min_samples: int | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Cluster ``embeddings`` with scikit-learn's HDBSCAN; return (metrics, cluster per row, -1 = noise)."""
    embeddings = l2_normalize(embeddings)
    labels = np.asarray(labels)
    if len(embeddings) != len(labels):
        raise KennerError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if len(embeddings) < max(2, min_cluster_size):
        raise KennerError(
            f"HDBSCAN needs at least min_cluster_size={min_cluster_size} embeddings; got {len(embeddings)}"
        )
    clusters = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, copy=True).fit_predict(embeddings)
    clustered = clusters >= 0
    metrics = {
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari_clustered": float(adjusted_rand_score(labels[clustered], clusters[clustered]))
        if clustered.any()
        else float("nan"),
        "nmi_clustered": float(normalized_mutual_info_score(labels[clustered], clusters[clustered]))
        if clustered.any()
        else float("nan"),
        "noise_fraction": float(1.0 - clustered.mean()),
        "n_clusters": len(np.unique(clusters[clustered])),
        "n_classes": len(np.unique(labels)),
        "purity": float(cluster_purity(clusters, labels)),
        "n": len(labels),
    }
    return metrics, clusters
