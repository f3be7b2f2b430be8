"""Configs: validated at construction, nested (one DropConfig, one Budget type), flattened to the
MLflow params runs have always had, and the CLI's defaults read from them."""

from __future__ import annotations

import dataclasses

import pytest

from hired_ops import Budget, DropConfig
from jobs.cli import build_parser
from pipeline.batch.config import AUTO_GPUS_PER_ACTOR, JobConfig, PoolConfig
from pipeline.configs import from_mapping
from pipeline.data.images import DecodeLimits
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions
from pipeline.serve.config import ServeConfig

# the MLflow params a caption run had before configs nested; `hired compare` reads them by name
PARAMS_BEFORE_NESTING = {
    "input", "output", "model", "method", "budget", "alpha", "l_init", "l_final", "newlines", "prompt",
    "vision.size", "vision.batch_size", "vision.num_gpus", "vision.num_cpus", "llm.size", "llm.batch_size",
    "llm.num_gpus", "llm.num_cpus", "decode_batch_size", "max_new_tokens", "temperature", "device", "dtype",
    "transfer_dtype", "resume", "limit", "max_padding", "storage_options", "seed",
}


def test_unset_pools_share_a_gpu_only_where_the_cluster_has_one():
    assert PoolConfig().gpus(cluster_gpus=0) == 0.0
    assert PoolConfig().gpus(cluster_gpus=8) == AUTO_GPUS_PER_ACTOR == 0.5
    assert PoolConfig(num_gpus=0.25).gpus(cluster_gpus=8) == 0.25
    assert PoolConfig(num_gpus=0).gpus(cluster_gpus=8) == 0.0  # an explicit CPU pool stays on the CPU


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: DropConfig(method="magic"), "unknown method 'magic'"),
        (lambda: DropConfig(budget="lots"), "not a number"),
        (lambda: DropConfig(budget=None), "needs a budget"),
        (lambda: DropConfig(alpha=1.5), "alpha"),
        (lambda: DropConfig(newlines="some"), "newlines"),
        (lambda: GenerateOptions(max_new_tokens=0), "max_new_tokens"),
        (lambda: ModelConfig(dtype="float8"), "dtype"),
        (lambda: ModelConfig(transfer_dtype="int8"), "transfer_dtype"),
        (lambda: JobConfig(input="", output="out"), "input is required"),
        (lambda: JobConfig(input="in", output="out", max_padding=1.0), "max_padding"),
        (lambda: from_mapping(JobConfig, {"input": "in", "output": "out", "drop": {"methd": "hired"}}), "unknown DropConfig"),
    ],
)
def test_bad_job_settings_are_refused_with_the_reason(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_pools_are_refused():
    with pytest.raises(ValueError, match="pool size"):
        PoolConfig(size=0)
    with pytest.raises(ValueError, match="num_gpus"):
        PoolConfig(num_gpus=-1)


def test_budget_is_one_type_kept_as_the_user_wrote_it():
    assert str(DropConfig(budget="20%").budget) == "0.2"
    assert DropConfig(budget="576").budget == Budget(tokens=576)
    # methods that choose their own count carry no budget, so equal settings are equal
    assert JobConfig(input="in", output="out", drop=DropConfig(method="full")).drop.budget is None
    assert ServeConfig(drop=DropConfig(method="prumerge")).drop == DropConfig(method="prumerge", budget=None)


def test_params_keep_the_names_runs_had_before_configs_nested():
    config = JobConfig(
        input="in", output="out", drop=DropConfig(budget="576", alpha=0.3), vision=PoolConfig(size=2),
        storage_options={"key": "secret"},
    )
    params = config.to_params()
    assert PARAMS_BEFORE_NESTING <= set(params)
    assert (params["method"], params["budget"], params["alpha"], params["vision.size"]) == ("hired", "576", 0.3, 2)
    assert params["model"] == ModelConfig().name and params["max_image_pixels"] == DecodeLimits().max_pixels
    assert params["storage_options"] == {"key": "***"}


@pytest.mark.parametrize("command", ["caption", "evaluate", "benchmark", "serve"])
def test_cli_defaults_are_the_configs_defaults(command):
    args = vars(build_parser().parse_args([command]))
    drop, model, generate, limits = DropConfig(), ModelConfig(), GenerateOptions(), DecodeLimits()
    for field in dataclasses.fields(DropConfig):
        if field.name in args:
            expected = getattr(drop, field.name)
            assert args[field.name] == (str(expected) if isinstance(expected, Budget) else expected), field.name
    assert (args["model"], args["device"], args["dtype"]) == (model.name, model.device, model.dtype)
    if command != "benchmark":  # one decompression-bomb limit, jobs and serve alike
        assert args["max_image_pixels"] == limits.max_pixels
    if command in ("caption", "evaluate"):
        assert (args["max_new_tokens"], args["temperature"]) == (generate.max_new_tokens, generate.temperature)
        assert (args["vision_pool_size"], args["llm_num_cpus"]) == (PoolConfig().size, PoolConfig().num_cpus)
    if command == "serve":
        serve = ServeConfig()
        assert (args["max_batch_size"], args["max_tokens_limit"]) == (serve.max_batch_size, serve.max_tokens_limit)


def _subparser(command: str):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices[command]


@pytest.mark.parametrize("command", ["caption", "serve", "evaluate", "benchmark"])
def test_help_shows_every_default_as_the_config_has_it(command):
    sub = _subparser(command)
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        help_text = " ".join((action.help or "").replace("%%", "%").split())
        assert "(default:" in help_text, f"{command} {action.option_strings[0]} shows no default"
    # the shown defaults are the configs' own
    shown = [("--model", ModelConfig().name), ("--alpha", DropConfig().alpha), ("--l-init", DropConfig().l_init)]
    if command in ("caption", "serve"):  # evaluate and benchmark sweep budgets instead
        shown.append(("--budget", DropConfig().budget))
    for flag, value in shown:
        after = text.split(f" {flag} ", 2)[-1]  # the flag's entry in the option list
        assert after.split(" --", 1)[0].endswith(f"(default: {value})"), flag
    if command == "serve":
        assert f"(default: {ServeConfig().max_tokens_limit})" in text


def test_every_method_string_reaches_jobs_sweeps_and_the_endpoint():
    from pipeline.experiments.settings import Setting

    combo = "hired+divprune"
    assert JobConfig(input="in", output="out", drop=DropConfig(method=combo)).to_params()["method"] == combo
    assert Setting(combo, "0.2").label == f"{combo} 20%" and Setting("visionzip", "0.1").label == "VisionZip 10%"
    served = ServeConfig(allowed_methods=f"hired,{combo}")
    assert served.allowed_methods == ("hired", combo)
    with pytest.raises(ValueError, match="allocation"):
        ServeConfig(allowed_methods="hired,hired+magic")
