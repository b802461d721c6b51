"""ingest: an existing world or log folder (a path or an s3:// URI) copied in as a Dataset.

Brings an existing folder of contract tables (`videos.parquet`, `search_log.parquet`,
`rec_log.parquet`; a simulated world also has `tests/`, `truth/`, `world.json`) into the
pipeline instead of simulating one (`build_pipeline(source="ingest")`, pipeline parameter
`world_uri`).

A folder without `videos.parquet` is refused. The copy is not validated here: the `validate`
step does that next.
"""

from kfp import dsl
from kfp.dsl import Dataset, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(world: Output[Dataset], uri: str):
    """Copy a folder of contract tables into the pipeline's artifact store.

    The folder holds at least videos.parquet (and search_log.parquet, rec_log.parquet to mine;
    a simulated world also has tests/, truth/ and world.json). `uri` is a path (a mounted
    volume, e.g. the artifacts PVC) or any URI pyarrow's filesystems read (s3://bucket/prefix,
    credentials from the AWS_* environment, e.g. an S3 Secret).

    Args:
        world: the copied folder.
        uri: where the folder is.
    """
    from pathlib import Path

    from pyarrow import fs

    if not uri.strip():
        raise ValueError("ingest needs a uri: a folder path or s3://bucket/prefix")
    source, path = fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    info = source.get_file_info(path)
    if info.type != fs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: not a folder")
    if source.get_file_info(f"{path.rstrip('/')}/videos.parquet").type != fs.FileType.File:
        raise FileNotFoundError(f"{uri}: no videos.parquet there (not a folder of contract tables)")
    Path(world.path).mkdir(parents=True, exist_ok=True)
    fs.copy_files(
        path, world.path, source_filesystem=source, destination_filesystem=fs.LocalFileSystem()
    )
    files = [p for p in Path(world.path).rglob("*") if p.is_file()]
    world.metadata.update({"source": uri, "files": len(files)})
