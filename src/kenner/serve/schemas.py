"""The API's JSON shapes (pydantic models): what ``/docs`` shows and what responses are checked against."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class LabelScore(BaseModel):
    label: str
    probability: float = Field(description="class score (a probability for heads, a vote share for galleries)")


class Neighbour(BaseModel):
    rank: int
    id: str
    label: str
    distance: float = Field(description="1 - cosine similarity in the gallery space")
    similarity: float
    thumbnail_url: str


class Result(BaseModel):
    id: str = Field(description="the file name (first view's), or the id given in JSON")
    predicted: str = Field(description="the run's answer, or 'unclassifiable' where its reject rule refuses")
    accepted: bool
    reject_reason: str | None = None
    predictions: list[LabelScore] = Field(description="top-k labels with scores")
    neighbours: list[Neighbour] = Field(default_factory=list, description="nearest gallery items (knn, metric)")
    run: str
    encoder: str


class PredictResponse(BaseModel):
    run: str
    method: str
    encoder: str
    backend: str
    results: list[Result]


class PredictJson(BaseModel):
    """A JSON prediction request: images as base64 strings (single-view runs) or objects view -> base64
    (optionally with an ``id``)."""

    images: list[str | dict[str, str]]
    top_k: int = Field(5, ge=1, le=1000)
    neighbours: int = Field(0, ge=0, le=1000)


class ErrorDetail(BaseModel):
    status: int
    message: str
    field: str | None = None
    file: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Info(BaseModel):
    run: str
    method: str
    encoder: str
    fingerprint: str | None
    backend: str
    classes: list[str]
    views: str
    input_views: list[str]
    gallery: int | None = Field(description="gallery size for knn/metric runs")
    reject_rule: str | None
    metrics: dict[str, dict[str, float]]
    batching: dict[str, Any]


PREDICT_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "single-view runs: one or several files in field 'image' (or 'images'); "
                    "multi-view runs: one field per view (e.g. 'obverse', 'reverse'), files paired in order",
                    "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "application/json": {"schema": PredictJson.model_json_schema()},
        },
    }
}
