"""The command line, run as a person would: `python -m imagesearch build` then `query`, in subprocesses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

IMAGES = ["cats/one.jpg", "cats/two.png", "dogs/three.jpg", "four.jpg"]
RESULT_LINE = re.compile(r"^\s*(\d+)\s+(\d+\.\d+)\s+(\S+)$")


@pytest.fixture(scope="module")
def run(repo_root):
    def run_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "imagesearch", *args],
            cwd=repo_root, capture_output=True, text=True, timeout=300,
        )

    return run_cli


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_image, run):
    """A collection of four small images, built into artifacts with random weights."""
    images = tmp_path_factory.mktemp("cli_images")
    for name in IMAGES:
        make_image(images / name, size=(40, 40))
    artifacts = tmp_path_factory.mktemp("cli_artifacts")
    result = run("build", "--weights", "random", "--images", str(images), "--artifacts", str(artifacts), "-k", "2")
    return images, artifacts, result


def test_build_embeds_the_images_and_writes_embeddings_index_and_example(built):
    _, artifacts, result = built
    assert result.returncode == 0, result.stderr
    assert "4 images embedded" in result.stdout
    for name in ["embeddings/manifest.json", "embeddings/skipped.csv", "index/index.json", "example_queries.jpg"]:
        assert (artifacts / name).is_file(), name
    assert len(list(artifacts.glob("embeddings/vectors.*.npy"))) == 1
    assert len(list(artifacts.glob("index/index.*.faiss"))) == 1


def test_build_again_on_an_unchanged_folder_embeds_nothing_and_updates_the_index_in_place(built, run):
    images, artifacts, _ = built
    result = run("build", "--weights", "random", "--images", str(images), "--artifacts", str(artifacts), "-k", "2")
    assert result.returncode == 0, result.stderr
    assert "this run: 0 added, 0 changed, 0 removed, 0 renamed, 4 unchanged, 0 skipped" in result.stdout
    assert "updated in place: 0 vectors added, 0 removed" in result.stdout
    assert len(list(artifacts.glob("embeddings/vectors.*.npy"))) == 1  # the shard is kept, none added


def test_query_prints_k_results_with_the_identical_image_first(built, run):
    images, artifacts, _ = built
    query = str(images / "dogs/three.jpg")
    result = run("query", query, "--weights", "random", "--artifacts", str(artifacts), "-k", "2")
    assert result.returncode == 0, result.stderr
    lines = [match.groups() for match in map(RESULT_LINE.match, result.stdout.splitlines()) if match]
    assert len(lines) == 2
    assert [rank for rank, _, _ in lines] == ["1", "2"]
    assert lines[0][2] == "dogs/three.jpg"
    assert lines[1][2] in IMAGES and lines[1][2] != "dogs/three.jpg"


def test_query_against_empty_artifacts_exits_2_saying_what_is_missing(tmp_path, make_image, run):
    image = make_image(tmp_path / "photo.jpg")
    result = run("query", str(image), "--weights", "random", "--artifacts", str(tmp_path / "artifacts"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "missing" in errors[0]


def test_evaluate_prints_precision_at_k_over_every_indexed_image(built, run):
    _, artifacts, _ = built
    result = run("evaluate", "--artifacts", str(artifacts), "-k", "2")
    assert result.returncode == 0, result.stderr
    assert re.match(r"precision@2 = [01]\.\d{3}, mAP@2 = [01]\.\d{3} over 2 queries: the saved index as built "
                    r"\(Flat, recommended; resnet50 ", result.stdout)
    assert "labels: 2 labels over 3 images (from folders); 1 unlabelled" in result.stdout  # 4 images, one at the top
    compared = run("evaluate", "--artifacts", str(artifacts), "-k", "2", "--compare", "plain;cosine,qe=1")
    assert compared.returncode == 0, compared.stderr
    rows = [line.split() for line in compared.stdout.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows] == ["configuration", "plain", "cosine,qe=1"]
    refused = run("evaluate", "--artifacts", str(artifacts), "-k", "2", "--labels", "prefix")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "prefix" in refused.stderr
    too_deep = run("evaluate", "--artifacts", str(artifacts), "-k", "4")  # 4 images: 3 others each at most
    assert too_deep.returncode == 2 and "give -k from 1 to 3" in too_deep.stderr and too_deep.stdout == ""
    unknown = run("evaluate", "--artifacts", str(artifacts), "-k", "2", "--compare", "plain;bogus")
    assert unknown.returncode == 2 and "'bogus'" in unknown.stderr and unknown.stdout == ""  # before any work


def as_format_3(artifacts) -> None:
    """Rewrite saved artifacts as the code before format 4 wrote them: every record in the JSON files."""
    manifest_path, index_path = artifacts / "embeddings" / "manifest.json", artifacts / "index" / "index.json"
    manifest, index = json.loads(manifest_path.read_text()), json.loads(index_path.read_text())
    items = []
    for number, shard in enumerate(manifest["shards"]):
        table = pq.read_table(artifacts / "embeddings" / shard["items"]).to_pydict()
        items += [[i, path, size, mtime, digest.hex(), number, row] for i, path, size, mtime, digest, row in
                  zip(*(table[name] for name in ["id", "path", "size", "mtime_ns", "sha256", "row"]))]
        (artifacts / "embeddings" / shard["items"]).unlink()
    (artifacts / "embeddings" / manifest["skipped"]["file"]).unlink()
    manifest.update(format_version=3, shards=[{"file": s["vectors"], "rows": s["rows"]} for s in manifest["shards"]],
                    items=items, skipped=[])
    for key in ["collection", "version", "commit"]:
        del manifest[key]
    index.update(format_version=3, items=[[i, path, digest] for i, path, _, _, digest, _, _ in items])
    del index["collection"]
    manifest_path.write_text(json.dumps(manifest))
    index_path.write_text(json.dumps(index))


def test_artifacts_of_format_3_are_searched_as_they_are_and_converted_by_the_next_build(built, run, tmp_path):
    images, artifacts, _ = built
    old = tmp_path / "artifacts"
    shutil.copytree(artifacts, old)
    as_format_3(old)

    query = run("query", "--weights", "random", "--artifacts", str(old), str(images / IMAGES[0]), "-k", "2")
    assert query.returncode == 0, query.stderr
    assert RESULT_LINE.match(query.stdout.splitlines()[-2])[3] == IMAGES[0]

    result = run("build", "--weights", "random", "--images", str(images), "--artifacts", str(old), "-k", "2")
    assert result.returncode == 0, result.stderr
    assert "0 added, 0 changed, 0 removed, 0 renamed, 4 unchanged" in result.stdout  # nothing went through the model
    assert f"converted {old / 'embeddings'} from an older format" in result.stdout
    assert json.loads((old / "embeddings" / "manifest.json").read_text())["format_version"] == 4
    assert "collection" in json.loads((old / "index" / "index.json").read_text())
    assert len(list(old.glob("embeddings/items.*.parquet"))) == 1


@pytest.mark.parametrize("arguments", [
    ["build", "--ray", "0"], ["extract", "--batch-size", "-3"], ["query", "q.jpg", "-k", "x"]])
def test_counts_below_one_are_refused_with_the_argument_named(arguments, capsys):
    from imagesearch import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.parser().parse_args(arguments)
    assert exit_info.value.code == 2
    assert f"error: argument {arguments[-2]}: expected a whole number of at least 1, got '{arguments[-1]}'" in (
        capsys.readouterr().err)
