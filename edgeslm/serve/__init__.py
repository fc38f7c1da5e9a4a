"""``edgeslm serve``: an OpenAI-compatible HTTP server (Starlette + uvicorn) over any engine."""
