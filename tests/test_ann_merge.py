"""Merging IVF indexes built in parts (`ann.merge_into`), as a Ray job does: the parts of a collection, added
separately to copies of one trained empty index and merged in order, make the index that one add of it all makes,
list for list and code for code, and stay so through later adds."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from imagesearch import ann
from imagesearch.vectors import CHUNK_ROWS, VectorStore

DIM = 64


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """As the suite's other FAISS tests: results that do not depend on the machine's threads."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((32, DIM)).astype(np.float32)
    return centres[rng.integers(0, 32, 5000)] + 0.3 * rng.standard_normal((5000, DIM)).astype(np.float32)


def trained(factory: str, vectors: np.ndarray) -> bytes:
    """The index `factory` makes, trained on `vectors` and empty, serialized: what a job ships to its workers."""
    index = ann.new_index(factory, DIM)
    ann.train(index, VectorStore.from_array(vectors), np.arange(0, len(vectors), 2), "l2")
    return faiss.serialize_index(index)


def added(template, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    index = faiss.deserialize_index(template)
    ann.add(index, VectorStore.from_array(vectors), ids, "l2")
    return index


def merged_in_parts(template, vectors: np.ndarray, ids: np.ndarray, rows: int) -> faiss.Index:
    """Parts of `rows` added each to its own copy, sent back serialized, and merged in order."""
    index = faiss.deserialize_index(template)
    for start in range(0, len(vectors), rows):
        part = added(template, vectors[start : start + rows], ids[start : start + rows])
        ann.merge_into(index, faiss.deserialize_index(faiss.serialize_index(part)))
    return index


def contents(index: faiss.Index) -> list[tuple[list[int], list[bytes]]]:
    """Each inverted list's ids and codes, in order (fast-scan codes unpacked from their interleaved blocks)."""
    ivf = faiss.downcast_index(ann.ivf_of(index))
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    block = isinstance(lists, faiss.BlockInvertedLists)
    packer = ivf.get_CodePacker() if block else None
    out = []
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size).tolist() if size else []
        if not size:
            codes = []
        elif block:
            blocks = faiss.rev_swig_ptr(lists.get_codes(number), -(-size // lists.n_per_block) * lists.block_size)
            blocks = blocks.reshape(-1, lists.block_size)
            codes = [bytes(packer.unpack_1(blocks[slot // lists.n_per_block][None], slot % lists.n_per_block))
                     for slot in range(size)]
        else:
            flat = faiss.rev_swig_ptr(lists.get_codes(number), size * ivf.code_size)
            codes = [bytes(flat[slot * ivf.code_size : (slot + 1) * ivf.code_size]) for slot in range(size)]
        out.append((ids, codes))
    return out


def assert_same_index(found: faiss.Index, expected: faiss.Index, queries: np.ndarray) -> None:
    assert found.ntotal == expected.ntotal
    assert contents(found) == contents(expected)
    found_distances, found_ids = found.search(queries, 10)
    expected_distances, expected_ids = expected.search(queries, 10)
    np.testing.assert_array_equal(found_ids, expected_ids)
    np.testing.assert_array_equal(found_distances, expected_distances)


# IVF1,PQ8x4fs keeps every vector in one list of 4-byte codes, in blocks of 32 codes (128 bytes): after the first
# part of 1,024 vectors the list holds a multiple of a block's size in bytes, where FAISS' own append corrupts the heap.
@pytest.mark.parametrize("factory", ["IVF16,Flat", "PCAR32,IVF16,SQ8", "PCAR32,IVF16,PQ16x4fs", "IVF1,PQ8x4fs"])
def test_parts_merged_in_order_hold_the_lists_one_add_holds(vectors, factory):
    template, ids = trained(factory, vectors), np.arange(len(vectors)) * 3 + 7
    assert_same_index(merged_in_parts(template, vectors, ids, CHUNK_ROWS), added(template, vectors, ids), vectors[::7])


@pytest.mark.parametrize("factory", ["PCAR32,IVF16,PQ16x4fs", "IVF4,PQ8x4fs"])
def test_vectors_added_after_a_merge_are_encoded_as_after_one_add(vectors, factory):
    """FAISS' fast-scan add ORs codes into a list's free slots: a merge must leave them cleared."""
    first, later = vectors[:4000], vectors[4000:]
    template = trained(factory, first)
    ids = np.arange(len(vectors))
    merged = merged_in_parts(template, first, ids[:4000], CHUNK_ROWS)
    one = added(template, first, ids[:4000])
    for index in (merged, one):
        ann.add(index, VectorStore.from_array(later), ids[4000:], "l2")
    assert_same_index(merged, one, vectors[::7])


def test_a_part_trained_with_another_quantizer_is_refused(vectors):
    index = faiss.deserialize_index(trained("IVF16,Flat", vectors))
    other = added(trained("IVF16,Flat", vectors[::-1].copy()), vectors[:100], np.arange(100))
    with pytest.raises(ValueError, match="not trained with this index's coarse quantizer"):
        ann.merge_into(index, other)
    assert index.ntotal == 0


@pytest.mark.parametrize("factory", ["HNSW16", "Flat"])
def test_indexes_without_inverted_lists_are_not_merged(factory):
    assert not ann.mergeable(ann.new_index(factory, DIM))
    assert ann.mergeable(ann.new_index("IVF16,Flat", DIM))
