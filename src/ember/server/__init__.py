"""The OpenAI-compatible HTTP server (``ember serve``): FastAPI routes in front of one engine thread."""
