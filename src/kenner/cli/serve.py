"""``kenner serve RUN``: the run behind an HTTP API (FastAPI + uvicorn), bound to 127.0.0.1 unless --host says so."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a run over HTTP: POST /v1/predict, /health, /ready, /v1/info, /docs",
        description="Serve a finished run: POST /v1/predict (multipart files, one field per view, or JSON "
        "base64), GET /health, /ready, /v1/info and the OpenAPI docs at /docs. Concurrent requests share "
        "encoder batches.",
    )
    parser.add_argument("run", help="run folder (or one fold_i of a k-fold run)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch: the run's encoder and predictor; onnx: the run's ONNX export (kenner export RUN --format "
        "onnx; exported on first use) on ONNX Runtime (default: torch)",
    )
    parser.add_argument("--max-batch", type=int, default=16, help="queries per model call at most (default: 16)")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the first query of a batch waits for others to join it (default: 5)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image file accepted (default: 20)")
    parser.add_argument(
        "--max-pixels", type=int, default=50_000_000, help="largest image accepted, in pixels (default: 50000000)"
    )
    parser.add_argument(
        "--runs-dir", help="folder of runs the web UI at /ui browses and trains into (default: the run's parent folder)"
    )
    parser.add_argument("--no-ui", action="store_true", help="the API only, no web UI at /ui")
    parser.add_argument("--cache-dir", help="embedding cache, where the encoder's files are (default: $KENNER_CACHE)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    import uvicorn

    from kenner.errors import KennerError
    from kenner.runs.folder import read_model_info
    from kenner.serve.app import ServeSettings, UiSettings, create_app
    from kenner.serve.engine import load_engine
    from kenner.serve.uploads import Limits

    if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_upload_mb <= 0 or args.max_pixels < 1:
        raise KennerError("--max-batch, --max-upload-mb and --max-pixels must be positive, --max-wait-ms at least 0")
    info = read_model_info(Path(args.run))  # a folder that is no run is refused now, not after the server started
    ui = None
    if not args.no_ui:
        from kenner.serve.ui import default_runs_dir

        ui = UiSettings(info["input_views"], Path(args.runs_dir) if args.runs_dir else default_runs_dir(Path(args.run)))
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        limits=Limits(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels),
        ui=ui,
    )
    app = create_app(
        lambda: load_engine(args.run, backend=args.backend, cache_dir=args.cache_dir, device=args.device), settings
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0
