"""``knn``: a kNN vote over a Faiss gallery of the raw (L2-normalised) embeddings of the training rows."""

from __future__ import annotations

from kenner.config.tree import RunConfig
from kenner.methods.base import FitContext, Method, TaskData
from kenner.methods.gallery import GalleryPredictor


class KnnMethod(Method):
    """No training: the gallery is the training rows' embeddings."""

    predictor = GalleryPredictor

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> GalleryPredictor:
        return GalleryPredictor.build(data, cfg, projection=None)
