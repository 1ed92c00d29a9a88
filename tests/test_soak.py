"""The chaos soak (``pytest -m soak``, not in the default run; ``bench/soak.py``):
5,000 documents through Redis, Postgres, SLM and frontier workers and a frontier of
random 429s and timeouts, while workers are killed and shut down, Redis restarts with
and without its data, Postgres is cut away and the frontier is down for minutes. Nothing
may be lost, end failed, be stored twice or billed without a record beyond what a killed
process could not write.

``SOAK_SEED=N`` picks the seed (default 1); the fault schedule is printed (``-s``)."""

from __future__ import annotations

import json
import os

import pytest

from bench.soak import print_result, soak

pytestmark = pytest.mark.soak


def test_a_seeded_chaos_soak_settles_without_an_operator() -> None:
    seed = int(os.environ.get("SOAK_SEED", "1"))
    result = soak(seed)
    print_result(result)
    failed = [name for name, held in result["checks"].items() if not held]
    assert not failed, f"{failed}\n{json.dumps(result, default=str, indent=1)}"
