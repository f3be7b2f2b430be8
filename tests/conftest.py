"""Shared fixtures: tiny models built once per session, a local Ray cluster, sample images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.s3_server import s3_server  # noqa: F401,E402  (one loopback S3 server per session)

REPO = Path(__file__).resolve().parents[1]
# what tests run jobs and servers on unless they are about the default model (the trained
# testbed): the random tiny LLaVA-NeXT, whose geometry (576 tokens a tile) the tests count with
TINY_MODEL = "hired/tiny-llava-next"


@pytest.fixture(scope="session")
def tiny_next():
    """``(model, processor)``: tiny LLaVA-NeXT at the real 336/14 geometry."""
    from pipeline.model.builtin import build_model

    return build_model("llava-next", "tiny")


@pytest.fixture(scope="session")
def tiny_llava():
    """``(model, processor)``: tiny LLaVA-1.5 (one partition)."""
    from pipeline.model.builtin import build_model

    return build_model("llava", "tiny")


@pytest.fixture(scope="session")
def tiny_next_dir(tmp_path_factory) -> Path:
    """The tiny LLaVA-NeXT saved to disk, loadable with ``from_pretrained``."""
    from pipeline.model.builtin import save_model

    return save_model(tmp_path_factory.mktemp("models") / "tiny-llava-next", "llava-next", "tiny")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the whole session (start-up costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            # one temp dir per test session: sessions running side by side must not share sockets
            _temp_dir=tempfile.mkdtemp(prefix="hired-ray-", dir="/tmp"),
            ignore_reinit_error=True,
        )
    yield ray
    ray.shutdown()
