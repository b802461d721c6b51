"""ingest: a folder of contract tables copied in, and what is not a world refused."""

from pathlib import Path

import pytest
from kfp.dsl import Dataset
from support.kfp_artifacts import out

from crops.components.ingest import ingest


def test_ingest_copies_a_folder_of_contract_tables(tiny_dir: Path, tmp_path: Path) -> None:
    world = out(Dataset, tmp_path, "world")
    ingest.python_func(world=world, uri=str(tiny_dir))
    for name in ("videos.parquet", "search_log.parquet", "world.json", "tests/qr.qrels"):
        assert (Path(world.path) / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert world.metadata["source"] == str(tiny_dir)


def test_ingest_refuses_what_is_not_a_world(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no videos.parquet"):
        ingest.python_func(world=out(Dataset, tmp_path, "w"), uri=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ingest.python_func(world=out(Dataset, tmp_path, "w2"), uri=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs a uri"):
        ingest.python_func(world=out(Dataset, tmp_path, "w3"), uri=" ")
