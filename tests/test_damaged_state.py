"""Damaged saved state: one line that names the damaged file and says the repair, and the repair working.

Each case damages a copy of a saved collection of eight images (in shards of three rows, so that a damaged
shard is a few of them), checks the one `error:` line that the command which reads that file for real gives,
then runs the command the line advises, word for word, and checks that the artifacts are whole again: the
embeddings and the index load, exactly the lost images went through the model, every other image kept its id
and its vector, and searches answer as they did from the fresh full build the copy was made of. (Where a shard's
items file is damaged, which image each of its vectors is, is lost with it: those images come back as new ones,
under new ids; where a shard's vectors are, their images keep their ids.)

The command line runs in this process (`cli.main`) with the session's random-weights ResNet50, counted; one
test runs it as a subprocess, to see what a person sees.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imagesearch.index as index_module
from imagesearch import cli, collection
from imagesearch.collection import MANIFEST_FILE, load_embeddings, load_previous_embeddings
from imagesearch.extract import extract_embeddings
from imagesearch.index import METADATA_FILE, build_index, load_index
from imagesearch.journal import JOURNAL_DIR
from imagesearch.retrieval import PLAIN
from imagesearch.storage import ArtifactError, DamagedStateWarning, embeddings_dir, index_dir

from conftest import CountingEmbedder, write_image

NAMES = [f"{'cats' if number < 4 else 'dogs'}/img_{number}.{'png' if number % 3 else 'jpg'}" for number in range(8)]
SHARD_ROWS = 3  # eight images make shards of 3, 3 and 2 rows


class Saved(NamedTuple):
    images: Path
    artifacts: Path
    ids: dict[str, int]  # path -> id
    vectors: dict[str, np.ndarray]  # path -> vector
    hits: list[list[tuple[str, float]]]  # each image's search over the whole index: (path, distance)


class Run(NamedTuple):
    status: int
    out: str
    err: str
    embedded: int  # images that went through the model


def searches(index) -> list[list[tuple[str, float]]]:
    """Every indexed image's k=all search, by its own stored vector, as (path, distance) lists."""
    return [[(hit.path, hit.distance) for hit in hits] for hits in index.search(index.vectors(), len(index))]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, random_resnet) -> Saved:
    """Eight images, extracted and indexed by the command line into an artifacts folder: the fresh full build."""
    images = tmp_path_factory.mktemp("damaged_state_images")
    for name in NAMES:
        write_image(images / name, size=(48, 32))
    artifacts = tmp_path_factory.mktemp("damaged_state") / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "make_embedder", lambda *args, **kwargs: random_resnet)
        patch.setattr(collection, "SHARD_ROWS", SHARD_ROWS)
        patch.setattr(index_module, "DEFAULT_RETRIEVAL", PLAIN)  # see `run`
        common = ["--weights", "random", "--images", str(images), "--artifacts", str(artifacts), "--batch-size", "4"]
        assert cli.main(["extract", *common]) == 0
        assert cli.main(["index", "--artifacts", str(artifacts)]) == 0
    embeddings = load_embeddings(embeddings_dir(artifacts))
    assert embeddings.paths == sorted(NAMES)
    assert [shard["rows"] for shard in manifest_of(artifacts)["shards"]] == [3, 3, 2]
    index = load_index(index_dir(artifacts))
    ids = dict(zip(embeddings.paths, embeddings.ids.tolist()))
    return Saved(images, artifacts, ids, dict(zip(embeddings.paths, embeddings.vectors)), searches(index))


@pytest.fixture
def artifacts(saved, tmp_path) -> Path:
    """A copy of the saved artifacts, to damage."""
    return Path(shutil.copytree(saved.artifacts, tmp_path / "artifacts"))


@pytest.fixture
def run(monkeypatch, capsys, random_resnet) -> Callable[..., Run]:
    """Run the command line in this process: `run("index", "--artifacts", ...)` -> Run.

    Its model is the session ResNet50 behind a `CountingEmbedder` (the same model `--weights random` makes,
    built once), and saves write shards of SHARD_ROWS rows.
    """
    model = CountingEmbedder(random_resnet)

    def make_embedder(backbone, weights, seed=0, runtime=None, purpose="batch", images=None):
        assert (backbone, weights, seed) == ("resnet50", "random", 0), "the advice names another model"
        return model

    monkeypatch.setattr(cli, "make_embedder", make_embedder)
    monkeypatch.setattr(collection, "SHARD_ROWS", SHARD_ROWS)
    # Plain L2, as an index lost to damage is rebuilt with the default: these checks compare orders of every image
    # against the fresh build's, and the random model's vectors of noise images are so alike (cosines near 1) that
    # vectors embedded again, equal to float precision, reorder near-ties once compared by angle.
    monkeypatch.setattr(index_module, "DEFAULT_RETRIEVAL", PLAIN)

    def run_cli(*args: str) -> Run:
        capsys.readouterr()
        model.batch_sizes.clear()
        status = cli.main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return Run(status, out, err, model.images_embedded)

    return run_cli


def manifest_of(artifacts: Path) -> dict:
    return json.loads((embeddings_dir(artifacts) / MANIFEST_FILE).read_text())


def the_error(result: Run) -> str:
    """The message of the one `error:` line a failed command printed, and nothing else (no traceback)."""
    assert result.status == 2, result
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0].removeprefix("error: ")


def advised(message: str) -> list[str]:
    """The command an error message advises, as arguments to `python -m imagesearch`."""
    match = re.search(r"python -m imagesearch (.+?) \(or run notebook 0\d\)", message)
    assert match, f"no command advised: {message}"
    return shlex.split(match[1])


def warnings_of(result: Run) -> list[str]:
    """The `warning:` lines a command printed (besides them, its standard error holds progress bars only)."""
    assert "Traceback" not in result.err and "error:" not in result.err, result.err
    return [line for line in result.err.splitlines() if line.startswith("warning: ")]


def data_files(folder: Path) -> list[str]:
    patterns = ["vectors.*.npy", "items.*.parquet", "skipped.*.parquet", "index.*.faiss"]
    return sorted(path.name for pattern in patterns for path in folder.glob(pattern))


def assert_whole(artifacts: Path, saved: Saved, lost: set[str], renumbered: set[str] = frozenset()) -> None:
    """The artifacts load, hold every image under its id, the vectors of all but `lost` bit for bit and those of
    `lost` to float precision (embedded again, in other batches), no file they do not name, and search as the
    fresh full build did.

    `renumbered` (of `lost`) are images whose records were lost with a damaged items file: nothing said they
    had been embedded, so they came back as new images, under new ids (never one an image had before)."""
    embeddings = load_embeddings(embeddings_dir(artifacts))
    assert embeddings.paths == sorted(NAMES)
    ids = dict(zip(embeddings.paths, embeddings.ids.tolist()))
    assert {path: ids[path] for path in NAMES if path not in renumbered} == {
        path: image_id for path, image_id in saved.ids.items() if path not in renumbered
    }
    new_ids = {ids[path] for path in renumbered}
    assert len(new_ids) == len(renumbered) and min(new_ids, default=len(NAMES)) >= len(NAMES), ids
    scale = max(np.abs(vector).max() for vector in saved.vectors.values())
    for path, vector in zip(embeddings.paths, embeddings.vectors):
        if path in lost:
            assert np.allclose(vector, saved.vectors[path], rtol=0, atol=1e-5 * scale), path
        else:
            assert vector.tobytes() == saved.vectors[path].tobytes(), path
    manifest = manifest_of(artifacts)
    named = [name for shard in manifest["shards"] for name in (shard["vectors"], shard["items"])]
    assert data_files(embeddings_dir(artifacts)) == sorted([*named, manifest["skipped"]["file"]])

    index = load_index(index_dir(artifacts))
    assert (index.paths, index.ids.tolist()) == (embeddings.paths, embeddings.ids.tolist())
    assert len(data_files(index_dir(artifacts))) == 1
    rebuilt = build_index(embeddings, retrieval="plain")
    for answers in (searches(index), searches(rebuilt)):  # the saved index, and a full rebuild
        assert [[path for path, _ in hits] for hits in answers] == [[path for path, _ in hits] for hits in saved.hits]
        found = np.array([[distance for _, distance in hits] for hits in answers])
        expected = np.array([[distance for _, distance in hits] for hits in saved.hits])
        assert np.allclose(found, expected, rtol=1e-4, atol=1e-4 * expected.max())


# --- damage to the embeddings: `index` says so, the `extract` it advises repairs ---------------------------------


def shard_file(artifacts: Path, number: int) -> Path:
    """Shard `number`'s vectors file."""
    return embeddings_dir(artifacts) / manifest_of(artifacts)["shards"][number]["vectors"]


def items_file(artifacts: Path, number: int) -> Path:
    """Shard `number`'s items file: the records of the images whose vectors it holds."""
    return embeddings_dir(artifacts) / manifest_of(artifacts)["shards"][number]["items"]


def images_in_shard(artifacts: Path, number: int) -> set[str]:
    return set(pq.read_table(items_file(artifacts, number)).column("path").to_pylist())


def truncate_shard(artifacts: Path) -> tuple[Path, set[str]]:
    path = shard_file(artifacts, 1)
    os.truncate(path, path.stat().st_size - 10)
    return path, images_in_shard(artifacts, 1)


def delete_shard(artifacts: Path) -> tuple[Path, set[str]]:
    lost = images_in_shard(artifacts, 0)
    path = shard_file(artifacts, 0)
    path.unlink()
    return path, lost


def overwrite_shard(artifacts: Path) -> tuple[Path, set[str]]:
    path = shard_file(artifacts, 2)
    path.write_bytes(b"these were vectors once")
    return path, images_in_shard(artifacts, 2)


def shard_of_other_shape(artifacts: Path) -> tuple[Path, set[str]]:
    path = shard_file(artifacts, 1)
    np.save(path, np.load(path)[:2])  # a whole .npy file, of 2 rows where the manifest says 3
    return path, images_in_shard(artifacts, 1)


# A damaged items file loses which image each of its shard's vectors is: its images come back as new ones.


def items_row_out_of_range(artifacts: Path) -> tuple[Path, set[str]]:
    path = items_file(artifacts, 1)
    table = pq.read_table(path)
    rows = table.column("row").to_pylist()
    rows[1] = 99  # row 99 of a 3-row shard
    pq.write_table(table.set_column(table.schema.get_field_index("row"), "row", pa.array(rows, pa.int32())), path)
    return path, set(table.column("path").to_pylist())


def delete_items(artifacts: Path) -> tuple[Path, set[str]]:
    lost = images_in_shard(artifacts, 2)
    (path := items_file(artifacts, 2)).unlink()
    return path, lost


def overwrite_items(artifacts: Path) -> tuple[Path, set[str]]:
    lost = images_in_shard(artifacts, 0)
    (path := items_file(artifacts, 0)).write_bytes(b"these were records once")
    return path, lost


def manifest_not_json(artifacts: Path) -> tuple[Path, set[str]]:
    path = embeddings_dir(artifacts) / MANIFEST_FILE
    path.write_text(path.read_text()[:300])  # cut short, as by a bad copy
    return path, set(NAMES)


def manifest_of_wrong_shape(artifacts: Path) -> tuple[Path, set[str]]:
    manifest = manifest_of(artifacts)
    del manifest["shards"][2]["items"]  # valid JSON: a shard without the file that says whose its vectors are
    path = embeddings_dir(artifacts) / MANIFEST_FILE
    path.write_text(json.dumps(manifest))
    return path, set(NAMES)


ITEMS_DAMAGE = {items_row_out_of_range, delete_items, overwrite_items}


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        pytest.param(truncate_shard, " is damaged (truncated", id="shard-truncated"),
        pytest.param(delete_shard, ", named by the manifest, is missing", id="shard-deleted"),
        pytest.param(overwrite_shard, " is damaged (not a readable .npy file", id="shard-not-npy"),
        pytest.param(shard_of_other_shape, " is damaged (it holds (2, 2048) float32", id="shard-other-shape"),
        pytest.param(items_row_out_of_range, " is damaged (its rows are not distinct rows of the 3 in vectors.",
                     id="items-row-outside"),
        pytest.param(delete_items, ", named by the manifest, is missing", id="items-deleted"),
        pytest.param(overwrite_items, " is damaged (not a readable Parquet file: ", id="items-not-parquet"),
        pytest.param(manifest_not_json, " is damaged (not JSON: ", id="manifest-not-json"),
        pytest.param(manifest_of_wrong_shape, " is damaged (not a manifest as this code writes them: no 'items' "
                     "entry)", id="manifest-wrong-shape"),
    ],
)
def test_damaged_embeddings_are_named_in_one_line_and_the_advised_extract_re_embeds_only_what_is_lost(
    saved, artifacts, run, damage, problem
):
    damaged, lost = damage(artifacts)
    manifest_lost = lost == set(NAMES)
    records_lost = damage in ITEMS_DAMAGE  # which image each vector of the shard is, is lost too

    message = the_error(run("index", "--artifacts", artifacts))  # notebook 02 reads them the same way
    assert message.startswith(f"{damaged}{problem}"), message
    command = advised(message)
    assert command == ["extract", "--images", str(saved.images), "--artifacts", str(artifacts), "--weights", "random"]
    if not manifest_lost:
        what = "record" if records_lost else "vector"
        held = f"the {what} of 1 image is lost" if len(lost) == 1 else f"the {what}s of {len(lost)} images are lost"
        assert held in message
        assert "only the images whose vectors are lost go through the model" in message

    repair = run(*command)
    assert repair.status == 0, repair.err
    assert any(str(damaged) in line for line in warnings_of(repair)), repair.err
    assert repair.embedded == len(lost)
    if manifest_lost or records_lost:  # nothing says which vector is whose: those images are embedded as new
        assert (
            f"this run: {len(lost)} added, 0 changed, 0 removed, 0 renamed, {8 - len(lost)} unchanged, 0 skipped\n"
            in repair.out
        )
    else:
        assert (
            f"this run: 0 added, 0 changed, 0 removed, 0 renamed, {8 - len(lost)} unchanged, 0 skipped, "
            f"{len(lost)} repaired\n" in repair.out
        )
    assert not damaged.exists() or damaged.name == MANIFEST_FILE  # a damaged shard is not kept

    update = run("index", "--artifacts", artifacts)
    assert update.status == 0, update.err
    if manifest_lost:  # the collection the index was of is lost with its manifest: the index is built anew
        assert "built from scratch: 8 vectors added, 8 removed" in update.out
    else:  # exactly the vectors embedded again are newer than the index: only they are swapped
        assert f"updated in place: {len(lost)} vectors added, {len(lost)} removed" in update.out
    assert_whole(artifacts, saved, lost, renumbered=lost if records_lost else set())

    again = run(*command)  # whole again: nothing more to repair
    assert (again.status, again.err, again.embedded) == (0, "", 0)


def test_the_repair_keeps_the_ids_of_lost_images_and_treats_one_since_changed_or_gone_as_such(
    saved, artifacts, tmp_path, counting_embedder
):
    images = Path(shutil.copytree(saved.images, tmp_path / "images"))
    _, lost = truncate_shard(artifacts)
    changed, gone, repaired = sorted(lost)
    write_image(images / changed, size=(48, 32), color=(200, 10, 10))
    (images / gone).unlink()
    folder = embeddings_dir(artifacts)

    with pytest.warns(DamagedStateWarning, match=r"is damaged \(truncated.*; its 3 images are embedded again"):
        previous = load_previous_embeddings(folder)
    assert sorted(previous.lost.paths) == sorted(lost)
    result = extract_embeddings(images, counting_embedder, progress=False, previous=previous, checkpoint_dir=folder)

    assert counting_embedder.images_embedded == 2
    changes = result.changes
    assert (changes.changed, changes.removed, changes.repaired, changes.added) == ([changed], [gone], [repaired], [])
    assert changes.summary() == "0 added, 1 changed, 1 removed, 0 renamed, 5 unchanged, 0 skipped, 1 repaired"
    assert {item.path: item.id for item in result.items} == {
        path: image_id for path, image_id in saved.ids.items() if path != gone
    }


def test_a_save_of_embeddings_that_lost_vectors_is_refused_rather_than_dropping_those_images(artifacts):
    delete_shard(artifacts)
    with pytest.warns(DamagedStateWarning):
        previous = load_previous_embeddings(embeddings_dir(artifacts))
    with pytest.raises(ArtifactError, match="pass them as previous= to extract_embeddings"):
        collection.save_embeddings(previous, embeddings_dir(artifacts))


def test_two_damaged_shards_are_both_counted_and_both_repaired(saved, artifacts, run):
    _, first = truncate_shard(artifacts)
    deleted, second = delete_shard(artifacts)
    message = the_error(run("index", "--artifacts", artifacts))
    assert message.startswith(f"{deleted}, named by the manifest, is missing, and 1 other file is damaged too; ")
    assert "; the vectors of 6 images are lost; re-embed the lost images: " in message
    repair = run(*advised(message))
    assert repair.status == 0 and len(warnings_of(repair)) == 2, repair.err
    assert repair.embedded == 6 and "2 unchanged, 0 skipped, 6 repaired\n" in repair.out
    assert run("index", "--artifacts", artifacts).status == 0
    assert_whole(artifacts, saved, first | second)


def test_a_journaled_batch_damaged_before_its_save_is_deleted_and_extracting_again_embeds_its_images(
    saved, tmp_path, counting_embedder
):
    folder = tmp_path / "embeddings"
    extract_embeddings(saved.images, counting_embedder, batch_size=4, progress=False, checkpoint_dir=folder)
    batch = sorted((folder / JOURNAL_DIR).glob("batch.*.npz"))[0]  # an unsaved run's journal: 2 batches of 4
    data = bytearray(batch.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the vectors: the batch's list of files still reads
    batch.write_bytes(bytes(data))

    resumed = extract_embeddings(saved.images, counting_embedder, progress=False, checkpoint_dir=folder)
    assert resumed.changes.resumed == 8
    with pytest.raises(ArtifactError, match=r"was damaged \(Bad CRC-32 .*\) and is deleted; extract again"):
        collection.save_embeddings(resumed, folder)
    assert not batch.exists()

    counting_embedder.batch_sizes.clear()
    again = extract_embeddings(saved.images, counting_embedder, progress=False, checkpoint_dir=folder)
    assert (again.changes.resumed, counting_embedder.images_embedded) == (4, 4)
    collection.save_embeddings(again, folder)
    assert load_embeddings(folder).paths == sorted(NAMES)


def test_embeddings_of_a_newer_format_are_refused_not_written_over(artifacts, saved, run):
    path = embeddings_dir(artifacts) / MANIFEST_FILE
    path.write_text(json.dumps({**manifest_of(artifacts), "format_version": 99}))
    before = path.read_bytes()
    message = the_error(run("extract", "--weights", "random", "--images", saved.images, "--artifacts", artifacts))
    assert message.startswith(f"{path} is of format version 99, newer than this code reads")
    assert path.read_bytes() == before


# --- damage to the index: `query` says so, the `index` it advises rebuilds it from the embeddings ------------------


def index_file(artifacts: Path) -> Path:
    return index_dir(artifacts) / json.loads((index_dir(artifacts) / METADATA_FILE).read_text())["index_file"]


def edit_metadata(artifacts: Path, edit) -> Path:
    path = index_dir(artifacts) / METADATA_FILE
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))
    return path


def delete_index_file(artifacts: Path) -> Path:
    (path := index_file(artifacts)).unlink()
    return path


def overwrite_index_file(artifacts: Path) -> Path:
    (path := index_file(artifacts)).write_bytes(b"not a faiss index")
    return path


def truncate_index_file(artifacts: Path) -> Path:
    path = index_file(artifacts)
    os.truncate(path, path.stat().st_size // 2)
    return path


def metadata_not_json(artifacts: Path) -> Path:
    (path := index_dir(artifacts) / METADATA_FILE).write_bytes(b"")  # emptied
    return path


def metadata_count_more(artifacts: Path) -> Path:
    edit_metadata(artifacts, lambda metadata: metadata.update(count=metadata["count"] + 1))
    return index_file(artifacts)  # now holds one vector fewer than index.json says


def metadata_count_fewer(artifacts: Path) -> Path:
    edit_metadata(artifacts, lambda metadata: metadata.update(count=metadata["count"] - 1))
    return index_file(artifacts)  # now holds one vector more than index.json says


def index_of_other_ids(artifacts: Path) -> Path:
    """The index file holds the same vectors, as many as index.json says, but under ids no image has."""
    path = index_file(artifacts)
    index = faiss.read_index(str(path))
    held = faiss.vector_to_array(faiss.downcast_index(index).id_map)
    other = faiss.IndexIDMap2(faiss.IndexFlatL2(index.d))
    other.add_with_ids(index.reconstruct_batch(held), held + 100)
    faiss.write_index(other, str(path))
    return index_dir(artifacts) / METADATA_FILE


def metadata_of_wrong_shape(artifacts: Path) -> Path:
    return edit_metadata(artifacts, lambda metadata: metadata["collection"].pop("commit"))


def metadata_of_another_model(artifacts: Path) -> Path:
    """index.json names other weights than the embeddings of its version were made by: queries would be embedded
    by that other model, and searched among vectors of this one."""
    return edit_metadata(artifacts, lambda metadata: metadata["embedder"].update(weights="random(seed=1)"))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        pytest.param(delete_index_file, ", named by index.json, is missing", id="index-file-deleted"),
        pytest.param(overwrite_index_file, ' is damaged (not a readable FAISS index: Index type 0x20746f6e ("not ") '
                     "not recognized)", id="index-file-garbage"),
        pytest.param(truncate_index_file, " is damaged (not a readable FAISS index: truncated",
                     id="index-file-truncated"),
        pytest.param(metadata_not_json, " is damaged (not JSON: Expecting value: line 1 column 1 (char 0))",
                     id="index-json-not-json"),
        pytest.param(metadata_count_more, " is damaged (it holds 8 vectors, 2048-d, but index.json lists 9 images, "
                     "2048-d", id="index-json-count-more"),
        pytest.param(metadata_count_fewer, " is damaged (it holds 8 vectors, 2048-d, but index.json lists 7 images, "
                     "2048-d", id="index-json-count-fewer"),
        pytest.param(index_of_other_ids, " is damaged (its index holds 8 vectors, but not under the ids of the 8 "
                     "images of the version it names", id="index-holds-other-ids"),
        pytest.param(metadata_of_wrong_shape, " is damaged (not index metadata as this code writes it: no 'commit' "
                     "entry)", id="index-json-wrong-shape"),
        pytest.param(metadata_of_another_model, " is damaged (it names the model resnet50 (weights random(seed=1), "
                     "2048-d), but the embeddings of the version it names were made by resnet50 (weights "
                     "random(seed=0), 2048-d)", id="index-json-another-model"),
    ],
)
def test_a_damaged_index_is_named_in_one_line_and_the_advised_index_rebuilds_it_from_the_embeddings(
    saved, artifacts, run, damage, problem
):
    damaged = damage(artifacts)
    query = saved.images / NAMES[5]

    message = the_error(run("query", query, "--weights", "random", "--artifacts", artifacts))
    assert message.startswith(f"{damaged}{problem}"), message
    assert the_error(run("evaluate", "--artifacts", artifacts)) == message
    command = advised(message)
    assert command == ["index", "--artifacts", str(artifacts)]

    repair = run(*command)
    assert repair.status == 0, repair.err
    (warning,) = warnings_of(repair)
    assert warning.startswith(f"warning: {damaged}{problem}") and warning.endswith(
        "; the index is rebuilt from the embeddings"
    ), warning
    assert "built from scratch: 8 vectors added, 0 removed" in repair.out
    assert repair.embedded == 0

    found = run("query", query, "--weights", "random", "--artifacts", artifacts, "-k", "3")
    assert found.status == 0, found.err
    assert found.out.splitlines()[0].split()[-1] == NAMES[5]
    assert_whole(artifacts, saved, lost=set())


def test_an_empty_artifacts_folder_says_to_build_the_index_and_that_then_to_embed_the_images(tmp_path, run):
    artifacts = tmp_path / "artifacts"
    message = the_error(run("evaluate", "--artifacts", artifacts))
    assert message == (
        f"{index_dir(artifacts) / METADATA_FILE} is missing; build the index from the embeddings: "
        f"python -m imagesearch index --artifacts {artifacts} (or run notebook 02)"
    )
    message = the_error(run(*advised(message)))
    assert message == (
        f"{embeddings_dir(artifacts) / MANIFEST_FILE} is missing; embed the images: python -m imagesearch extract "
        f"--images <the image folder> --artifacts {artifacts} (or run notebook 01)"
    )


# --- both at once, through `build`; and as a person sees it -----------------------------------------------------


def test_build_repairs_a_truncated_shard_and_a_garbage_index_in_one_run(saved, artifacts, run):
    _, lost = truncate_shard(artifacts)
    garbage = overwrite_index_file(artifacts)
    result = run("build", "--weights", "random", "--images", saved.images, "--artifacts", artifacts, "-k", "2")
    assert result.status == 0, result.err
    assert len(warnings_of(result)) == 2 and str(garbage) in result.err
    assert result.embedded == len(lost) == 3
    assert "this run: 0 added, 0 changed, 0 removed, 0 renamed, 5 unchanged, 0 skipped, 3 repaired\n" in result.out
    assert "built from scratch: 8 vectors added, 0 removed" in result.out
    assert_whole(artifacts, saved, lost)


def test_a_query_on_a_damaged_index_prints_one_error_line_and_no_traceback_in_a_real_process(
    artifacts, saved, repo_root
):
    damaged = overwrite_index_file(artifacts)
    result = subprocess.run(
        [sys.executable, "-m", "imagesearch", "query", str(saved.images / NAMES[0]), "--weights", "random",
         "--artifacts", str(artifacts)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {damaged} is damaged (not a readable FAISS index: Index type 0x20746f6e (\"not \") not recognized); "
        f"rebuild the index from the embeddings: python -m imagesearch index --artifacts {artifacts} "
        "(or run notebook 02)"
    ]
