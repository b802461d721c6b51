"""The training recipe (crops/model/recipe.py): one home for a method's samples, videos and
settings, so `crops experiment`, the train component and its RayJob train alike."""

import inspect
import json
from pathlib import Path

import pytest

from crops.components.train import train as train_component
from crops.evaluate.experiment import ExperimentConfig
from crops.model.convergence import StopRule
from crops.model.names import MINILM_ALIAS, parse_encoder, resolve_model
from crops.model.recipe import (
    DEFAULTS,
    Recipe,
    TrainingData,
    method_by_name,
    train_config,
    training_data,
)
from crops.model.train_config import TrainConfig

PATHS = {"samples", "videos", "out", "storage_path", "name", "use_gpu"}


def test_the_local_and_the_staged_config_draw_the_same_batches(mined_fast, tmp_path) -> None:
    """The task's config and the one a RayJob gets differ only in where the files are."""
    mined, world = mined_fast
    crops = method_by_name("crops")
    data = training_data(crops, mined, world / "videos.parquet", tmp_path / "data")
    assert data.videos[-1].name == "synth_videos.parquet" and data.rows > 0
    recipe = Recipe(stop=StopRule(max_steps=40), workers=2)
    local = train_config(crops, recipe, data, tmp_path / "m", storage_path=str(tmp_path / "c"))
    staged = TrainingData(Path("/mnt/a/samples.parquet"), (Path("/mnt/a/v.parquet"),), data.rows)
    remote = train_config(crops, recipe, staged, Path("/mnt/a/model"), use_gpu=True)
    remote = TrainConfig.model_validate_json(remote.model_dump_json())  # as the job reads it
    assert local.model_dump(exclude=PATHS) == remote.model_dump(exclude=PATHS)
    assert local.steps_per_epoch == DEFAULTS.steps_per_epoch  # fixed, not derived from data


def test_methods_shape_the_config(mined_fast, tmp_path) -> None:
    mined, world = mined_fast
    for name, loss, hard, n_hard in (
        ("nce", "infonce", "none", 0),
        ("dpr", "infonce", "bm25", DEFAULTS.n_hard),
        ("crops", "h-infonce", "none", 0),
    ):
        m = method_by_name(name)
        data = training_data(m, mined, world / "videos.parquet", tmp_path / name)
        cfg = train_config(m, DEFAULTS, data, tmp_path / f"{name}-model")
        assert (cfg.loss, cfg.hard_negatives, cfg.n_hard) == (loss, hard, n_hard), name
        assert len(cfg.videos) == (2 if "llm" in m.sources else 1), name
    with pytest.raises(ValueError, match="not a trained method"):
        train_config(method_by_name("BM25"), DEFAULTS, data, tmp_path / "x")


def test_the_experiment_and_the_component_take_the_recipes_defaults() -> None:
    assert isinstance(ExperimentConfig(world="w", out="o"), Recipe)
    for field in ("queries_per_batch", "group_size", "steps_per_epoch", "workers", "n_hard"):
        assert getattr(ExperimentConfig(world="w", out="o"), field) == getattr(DEFAULTS, field)
    # the component restates none: -1 (unset) means the recipe's; the pipeline passes the
    # recipe's own values for what it exposes
    params = inspect.signature(train_component.python_func).parameters
    for field in ("queries_per_batch", "group_size", "n_hard", "workers", "seed"):
        assert params[field].default == -1, field
    assert params["encoder"].default is None
    from crops.pipelines.crops_pipeline import build_pipeline

    spec = build_pipeline("local").pipeline_spec.root.input_definitions.parameters
    assert spec["encoder"].default_value.string_value == DEFAULTS.encoder
    assert spec["workers"].default_value.number_value == DEFAULTS.workers
    # and the recipe's batch shape is TrainConfig's, whose defaults `crops train` shows
    for field in ("queries_per_batch", "group_size", "workers", "encoder"):
        assert getattr(DEFAULTS, field) == TrainConfig.model_fields[field].default


def test_recipes_refuse_bad_settings() -> None:
    with pytest.raises(ValueError, match="group_size"):
        Recipe(group_size=1)
    with pytest.raises(ValueError, match="extra"):
        Recipe(steps=3)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_by_name("nope")


@pytest.mark.parametrize(
    ("spec", "kind", "source"),
    [("hash", "hash", ""), ("hf:minilm", "hf", "minilm"), ("hf:/models/x", "hf", "/models/x")],
)
def test_encoder_names_parse_in_one_place(spec: str, kind: str, source: str) -> None:
    name = parse_encoder(spec)
    assert (name.kind, name.source, str(name)) == (kind, source, spec)


@pytest.mark.parametrize("spec", ["", "hf:", "hf: ", "word2vec", "HASH", "minilm"])
def test_bad_encoder_names_are_refused_everywhere(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        parse_encoder(spec)
    with pytest.raises(ValueError, match="unknown encoder"):
        TrainConfig(samples="s", videos=["v"], out="o", encoder=spec)


def test_the_minilm_alias_is_the_bundled_model() -> None:
    path = Path(resolve_model(MINILM_ALIAS))
    assert (path / "config.json").is_file()
    assert resolve_model("/my/model") == "/my/model"
    assert parse_encoder("hf:minilm").resolved() == str(path)


def test_cli_train_takes_a_config_file_and_nothing_beside_it(run, tmp_path: Path) -> None:
    good = TrainConfig(samples="s.parquet", videos=["v.parquet"], out=str(tmp_path / "m"))
    path = tmp_path / "train.json"
    path.write_text(good.model_dump_json())
    code, _, stderr = run("train", "--config", path, "--seed", "3")
    assert code == 2 and "leave out --seed" in stderr
    bad = json.loads(good.model_dump_json()) | {"group_size": 1}
    path.write_text(json.dumps(bad))
    code, _, stderr = run("train", "--config", path)
    assert code == 2 and "group_size" in stderr and str(path) in stderr
    code, _, stderr = run("train", "--config", tmp_path / "missing.json")
    assert code == 2 and "missing.json" in stderr
    code, _, stderr = run("train")
    want = "give --samples (or --qrels DIR for judgements, or --config FILE)"
    assert code == 2 and want in stderr
    path.write_text(good.model_dump_json())  # valid, but its samples do not exist
    code, _, stderr = run("train", "--config", path)
    assert code == 2 and "s.parquet" in stderr
