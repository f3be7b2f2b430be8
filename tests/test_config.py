"""Job configuration: validated at construction, GPUs reserved when the cluster has them."""

from __future__ import annotations

import pytest

from pipeline.config import AUTO_GPUS_PER_ACTOR, JobConfig, PoolConfig


def test_unset_pools_share_a_gpu_only_where_the_cluster_has_one():
    assert PoolConfig().gpus(cluster_gpus=0) == 0.0
    assert PoolConfig().gpus(cluster_gpus=8) == AUTO_GPUS_PER_ACTOR == 0.5
    assert PoolConfig(num_gpus=0.25).gpus(cluster_gpus=8) == 0.25
    assert PoolConfig(num_gpus=0).gpus(cluster_gpus=8) == 0.0  # an explicit CPU pool stays on the CPU


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"budget": "lots"}, "not a number"),
        ({"budget": None}, "needs --budget"),
        ({"alpha": 1.5}, "alpha"),
        ({"newlines": "some"}, "newlines"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"input": ""}, "input is required"),
    ],
)
def test_bad_job_settings_are_refused_with_the_reason(overrides, message):
    values = {"input": "samples/images", "output": "out", **overrides}
    with pytest.raises(ValueError, match=message):
        JobConfig(**values)


def test_bad_pools_are_refused():
    with pytest.raises(ValueError, match="pool size"):
        PoolConfig(size=0)
    with pytest.raises(ValueError, match="num_gpus"):
        PoolConfig(num_gpus=-1)


def test_budget_is_kept_as_the_user_wrote_it():
    assert JobConfig(input="in", output="out", budget="20%").budget == "0.2"
    assert JobConfig(input="in", output="out", budget="576").budget == "576"
    assert JobConfig(input="in", output="out", method="full", budget=None).drop_config().budget is None
