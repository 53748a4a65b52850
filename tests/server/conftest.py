"""Server fixtures: ``server`` is the shared real one (API key required); ``scripted_server`` runs
the scripted engine (see ember_test_server.py)."""

from __future__ import annotations

import pytest
from ember_test_server import MAX_BODY_BYTES, scripted_llm, serve, tiny_llm


@pytest.fixture(scope="session")
def server(tiny_checkpoint):
    yield from serve(tiny_llm(tiny_checkpoint), max_num_seqs=32, max_queue=256, max_body_bytes=MAX_BODY_BYTES)


@pytest.fixture(scope="module")
def scripted_server(tiny_checkpoint):
    yield from serve(scripted_llm(tiny_checkpoint), api_key=None)
