"""Locust users for ``production.py``: search backends calling one ``rerank serve`` with mixed
models, request sizes and API keys through Cohere's v2 path, as the official SDK does.

Settings come from the environment (Locust runs this file in its own process):
``RERANK_LOCUST_BODIES`` (a JSON file of {"query", "documents"} requests), ``RERANK_LOCUST_MODELS``
and ``RERANK_LOCUST_KEYS`` (comma-separated; a model may carry a weight, ``name:weight``).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import HttpUser, between, task

BODIES = json.loads(Path(os.environ["RERANK_LOCUST_BODIES"]).read_text(encoding="utf-8"))
MODELS, WEIGHTS = zip(*((name, int(weight or 1)) for name, _, weight in
                        (item.partition(":") for item in os.environ["RERANK_LOCUST_MODELS"].split(","))))
KEYS = os.environ["RERANK_LOCUST_KEYS"].split(",")
SIZES = (5, 20, 50)


class SearchBackend(HttpUser):
    """A search backend re-ranking its candidates: a random model, size and key per request."""

    wait_time = between(0.0, 0.05)

    @task
    def rerank(self) -> None:
        body = random.choice(BODIES)
        model = random.choices(MODELS, weights=WEIGHTS)[0]
        size = random.choice(SIZES)
        request = {"model": model, "query": body["query"], "documents": body["documents"][:size]}
        with self.client.post("/v2/rerank", json=request, headers={"Authorization": f"Bearer {random.choice(KEYS)}"},
                              name=f"/v2/rerank {model}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["results"]) != len(request["documents"]):
                response.failure("an answer that does not rank every document")
            else:
                response.success()
