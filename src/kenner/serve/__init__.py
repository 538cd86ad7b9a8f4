"""kenner serve: an HTTP API (FastAPI) and a web UI (Gradio) for trained runs."""
