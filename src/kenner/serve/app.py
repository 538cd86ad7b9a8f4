"""The FastAPI app of ``kenner serve``: predict, health, ready, info, gallery thumbnails, OpenAPI at ``/docs``.

The run loads in a background thread at start-up (``/health`` answers at once, ``/ready`` once the model and
its gallery are loaded). Every error is a JSON ``{"error": {status, message, field, file}}``, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from kenner.data.images import load_image
from kenner.errors import ImageError, KennerError
from kenner.serve.batching import MicroBatcher
from kenner.serve.engine import Engine
from kenner.serve.engine import Query as Item
from kenner.serve.schemas import PREDICT_REQUEST_BODY, ErrorResponse, Info, PredictJson, PredictResponse
from kenner.serve.uploads import Limits, Upload, UploadError, decode_base64, image_error, save_upload

log = logging.getLogger(__name__)

SINGLE_VIEW_FIELDS = ("image", "images", "file", "files")
THUMBNAIL_SIDE = 160
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}


@dataclass
class ServeSettings:
    """How ``kenner serve`` runs (the CLI's flags)."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    max_items: int = 64
    ui: UiSettings | None = None


@dataclass
class UiSettings:
    """The web UI at ``/ui``: the views the served run reads and the folder of runs it browses and trains into."""

    views: list[str]
    runs_dir: Path


@dataclass
class State:
    """The loaded engine (None while loading) and the load error, if loading failed."""

    engine: Engine | None = None
    error: str | None = None
    loaded: threading.Event = field(default_factory=threading.Event)


def create_app(load: Callable[[], Engine], settings: ServeSettings | None = None) -> FastAPI:
    """The app serving the engine ``load()`` returns (called in a background thread at start-up)."""
    settings = settings or ServeSettings()
    state = State()

    def answer(batch: list[tuple[Item, dict[str, Any]]]) -> list[dict[str, Any]]:
        return state.engine.answer([item for item, _ in batch], [pixels for _, pixels in batch])

    batcher: MicroBatcher[tuple[Item, dict[str, Any]], dict[str, Any]] = MicroBatcher(
        answer, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms
    )

    def load_engine() -> None:
        try:
            state.engine = load()
        except Exception as error:  # shown by /ready; the server keeps answering /health
            log.error("cannot load the run: %s", error)
            state.error = str(error) if isinstance(error, KennerError) else f"{type(error).__name__}: {error}"
        finally:
            state.loaded.set()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        threading.Thread(target=load_engine, name="kenner-load", daemon=True).start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="kenner",
        description="Predictions of a trained kenner run: top-k labels, the reject option and gallery neighbours.",
        lifespan=lifespan,
    )
    app.state.kenner = state
    app.state.batcher = batcher

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse(error.to_json(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(UploadError(error.status_code, str(error.detail)).to_json(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return JSONResponse(UploadError(422, message, field=where or None).to_json(), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("error answering %s", request.url.path)
        message = str(error) if isinstance(error, KennerError) else f"internal error ({type(error).__name__})"
        return JSONResponse(UploadError(500, message).to_json(), status_code=500)

    def engine() -> Engine:
        if state.engine is None:
            raise UploadError(503, state.error or "the model is still loading; see GET /ready")
        return state.engine

    @app.get("/health", summary="the server is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="the model (and its gallery) is loaded", responses=ERRORS)
    async def ready() -> dict[str, Any]:
        loaded = engine()
        return {"ready": True, "run": str(loaded.model.run_dir), "backend": loaded.backend}

    @app.get("/v1/info", response_model=Info, summary="classes, encoder, views, headline metrics", responses=ERRORS)
    async def info() -> dict[str, Any]:
        return {**engine().info(), "batching": batcher.stats.to_json()}

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        summary="top-k labels, reject decision and gallery neighbours of uploaded images",
        openapi_extra=PREDICT_REQUEST_BODY,
        responses=ERRORS,
    )
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, le=1000, description="labels per image (multipart; JSON: in the body)"),
        neighbours: int = Query(0, ge=0, le=1000, description="gallery neighbours per image (knn, metric runs)"),
    ) -> dict[str, Any]:
        loaded = engine()
        _check_length(request, settings)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            uploads = await _multipart(request, settings, len(loaded.input_views))
        elif content_type.startswith("application/json"):
            uploads, top_k, neighbours = await _json(request)
        else:
            raise UploadError(415, f"send multipart/form-data or application/json, not {content_type or 'nothing'}")
        items = _group(uploads, loaded.input_views, settings.max_items)
        with tempfile.TemporaryDirectory(prefix="kenner-serve-") as folder:
            prepared = await asyncio.to_thread(
                _prepare, loaded, items, settings.limits, Path(folder), top_k, neighbours
            )
            results = await batcher.submit(prepared)
        info = loaded.model.info
        return {
            "run": str(loaded.model.run_dir),
            "method": info["method"],
            "encoder": info["encoder"],
            "backend": loaded.backend,
            "results": results,
        }

    if settings.ui is not None:
        import gradio as gr

        from kenner.serve.jobs import Jobs
        from kenner.serve.ui import build_ui

        jobs = Jobs()
        app.state.jobs = jobs
        blocks = build_ui(lambda: state.engine, settings.ui.views, settings.ui.runs_dir, jobs)
        gr.mount_gradio_app(app, blocks, path="/ui", allowed_paths=[str(settings.ui.runs_dir)])

    @app.get("/v1/gallery/{index}/thumbnail", summary="a gallery item's image, small", responses=ERRORS)
    def thumbnail(index: int) -> Response:
        path = engine().gallery_image(index)
        if path is None:
            raise UploadError(404, f"no gallery image {index}")
        try:
            image = load_image(path, max_side=THUMBNAIL_SIDE)
        except ImageError as error:
            raise UploadError(404, str(error)) from None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg")

    return app


def _check_length(request: Request, settings: ServeSettings) -> None:
    """A body larger than every allowed file together is refused before it is read (413)."""
    length = request.headers.get("content-length")
    limit = settings.limits.max_bytes * settings.max_items * 4 // 3 + (1 << 20)  # base64 is 4/3 larger
    if length is not None and length.isdigit() and int(length) > limit:
        raise UploadError(413, f"request too large ({int(length) / 1e6:.1f} MB, limit {limit / 1e6:.1f} MB)")


async def _multipart(request: Request, settings: ServeSettings, n_views: int) -> list[Upload]:
    form = await request.form(max_files=settings.max_items * n_views, max_fields=settings.max_items * n_views + 4)
    uploads = []
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile):
            raise UploadError(
                422, f"field {key!r} is not a file (top_k and neighbours go in the query string)", field=key
            )
        uploads.append(Upload(key, value.filename or key, await value.read()))
    await form.close()
    return uploads


async def _json(request: Request) -> tuple[list[Upload], int, int]:
    try:
        body = PredictJson.model_validate(await request.json())
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UploadError(422, f"{where}: {first['msg']}", field=where) from None
    except ValueError as error:
        raise UploadError(422, f"the body is not JSON ({error})") from None
    uploads = []
    for i, image in enumerate(body.images):
        if isinstance(image, str):
            uploads.append(decode_base64("images", image, f"images[{i}]"))
            continue
        image = dict(image)
        item_id = image.pop("id", None) or f"images[{i}]"
        for view, value in image.items():
            uploads.append(decode_base64(view, value, item_id))
    return uploads, body.top_k, body.neighbours


def _group(uploads: list[Upload], views: list[str], max_items: int) -> list[dict[str, Upload]]:
    """Items (one upload per view): a single-view run takes any of ``SINGLE_VIEW_FIELDS`` or the view's name,
    a multi-view run one field per view, paired in order."""
    if not uploads:
        raise UploadError(422, f"no image sent; fields: {', '.join(_fields(views))}")
    allowed = set(_fields(views))
    for upload in uploads:
        if upload.field not in allowed:
            raise UploadError(
                422,
                f"unknown field {upload.field!r}; this run takes {', '.join(_fields(views))}",
                field=upload.field,
                file=upload.filename,
            )
    if len(views) == 1:
        items = [{views[0]: upload} for upload in uploads]
    else:
        per_view = {view: [u for u in uploads if u.field == view] for view in views}
        counts = {view: len(files) for view, files in per_view.items()}
        if len(set(counts.values())) != 1:
            missing = min(counts, key=counts.get)
            raise UploadError(
                422,
                f"each item needs one image per view ({', '.join(views)}); got "
                + ", ".join(f"{n} {view}" for view, n in counts.items()),
                field=missing,
            )
        items = [dict(zip(views, files, strict=True)) for files in zip(*per_view.values(), strict=True)]
    if len(items) > max_items:
        raise UploadError(413, f"{len(items)} items in one request, limit {max_items}")
    return items


def _fields(views: list[str]) -> list[str]:
    return [*SINGLE_VIEW_FIELDS, *views] if len(views) == 1 else list(views)


def _prepare(
    engine: Engine, items: list[dict[str, Upload]], limits: Limits, folder: Path, top_k: int, neighbours: int
) -> list[tuple[Item, dict[str, Any]]]:
    """Each item's files checked, saved and turned into the encoder's input (an UploadError names a bad one)."""
    prepared = []
    for i, item in enumerate(items):
        paths, pixels = {}, {}
        for view, upload in item.items():
            suffix = Path(upload.filename).suffix.lower()[:8] if upload.filename else ""
            paths[view] = save_upload(upload, limits, folder, f"{i}_{view}{suffix}")
            try:
                pixels[view] = engine.pixels(paths[view])
            except ImageError as error:
                raise image_error(error, upload) from None
            except Image.DecompressionBombError as error:
                raise UploadError(413, f"too many pixels ({error})", field=upload.field, file=upload.filename) from None
        first = next(iter(item.values()))
        prepared.append((Item(first.filename, paths, top_k, neighbours), pixels))
    return prepared
