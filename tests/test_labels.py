"""Labels of a collection's images: from folders, file-name prefixes or a CSV file; refused where none can be meant."""

from __future__ import annotations

import numpy as np
import pytest

from imagesearch.errors import UserFacingError
from imagesearch.images import list_images
from imagesearch.labels import (
    Labels,
    LabelsError,
    auto_labels,
    encode,
    folder_labels,
    labels_of,
    prefix_labels,
    read_label_file,
)

#: The demo's layout: <group>__<variant>.jpg at the top level, <collection>/<label>/<name>.jpg below it.
MIXED = [
    "astronaut__blur.jpg",
    "astronaut__original.jpg",
    "caltech101/camera/image_0001.jpg",
    "caltech101/camera/image_0002.jpg",
    "caltech101/cup/image_0001.jpg",
    "coffee__rotate.jpg",
    "coffee__scale.jpg",
    "notes.jpg",
]


def write_csv(tmp_path, text: str, name: str = "labels.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# --- where labels come from ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, label",
    [
        ("cats/tabby_01.jpg", "cats"),
        ("caltech101/camera/image_0001.jpg", "caltech101/camera"),
        ("astronaut__blur.jpg", None),  # top level: no folder
        ("cats/lion__1.jpg", "cats"),  # a prefix does not matter here
    ],
)
def test_folder_label_is_the_parent_folder_relative_to_the_root(path, label):
    assert folder_labels([path]) == [label]


@pytest.mark.parametrize(
    "path, label",
    [
        ("astronaut__blur.jpg", "astronaut"),
        ("variants/astronaut__blur.jpg", "variants/astronaut"),  # the folder is kept
        ("red_panda__blur__2.png", "red_panda"),  # up to the first separator
        ("cats/tabby_01.jpg", None),  # no separator
        ("__hidden.jpg", None),  # nothing before the separator
        ("a_b.jpg", None),  # one underscore is no separator
    ],
)
def test_prefix_label_is_the_file_name_up_to_the_first_double_underscore_in_its_folder(path, label):
    assert prefix_labels([path]) == [label]


def test_auto_takes_the_prefix_where_a_name_has_one_and_the_folder_otherwise():
    assert auto_labels(MIXED) == [
        "astronaut", "astronaut", "caltech101/camera", "caltech101/camera", "caltech101/cup",
        "coffee", "coffee", None,
    ]


def test_the_same_prefix_in_two_folders_is_two_labels():
    labels = labels_of(["a/cat__1.jpg", "a/cat__2.jpg", "b/cat__1.jpg", "b/cat__2.jpg"], "prefix")
    assert labels.classes.tolist() == ["a/cat", "b/cat"]
    assert labels.codes.tolist() == [0, 0, 1, 1]


def test_auto_on_the_demo_folder_labels_every_image_by_its_group(repo_root):
    paths = list_images(repo_root / "images")
    labels = labels_of(paths)
    assert labels.unlabelled == 0
    top_level = [row for row, path in enumerate(paths) if "/" not in path]
    assert top_level, "the demo folder has <group>__<variant>.jpg images at its top level"
    assert labels.names[top_level].tolist() == [paths[row].split("__")[0] for row in top_level]
    assert labels.members.min() >= 2  # every group has several variants


# --- what Labels holds -----------------------------------------------------------------------


def test_codes_number_the_sorted_labels_and_mark_unlabelled_images_minus_one():
    labels = labels_of(MIXED)
    assert labels.classes.tolist() == ["astronaut", "caltech101/camera", "caltech101/cup", "coffee"]
    assert labels.codes.tolist() == [0, 0, 1, 1, 2, 3, 3, -1]
    assert labels.codes.dtype == np.int64
    assert labels.names.dtype == object
    assert labels.names[-1] is None
    labelled = labels.codes >= 0
    assert labels.classes[labels.codes[labelled]].tolist() == labels.names[labelled].tolist()


def test_counts_of_a_mixed_collection():
    labels = labels_of(MIXED)
    assert (len(labels), labels.labelled, labels.unlabelled, labels.label_count) == (8, 7, 1, 4)
    assert labels.counts == {"astronaut": 2, "caltech101/camera": 2, "caltech101/cup": 1, "coffee": 2}
    assert labels.members.tolist() == [2, 2, 1, 2]
    assert labels.singletons == 1
    assert labels.source == "auto"


def test_summary_says_how_many_labels_over_how_many_images_and_from_where():
    labels = labels_of(["cats/a.jpg", "cats/b.jpg", "dogs/a.jpg", "dogs/b.jpg", "top.jpg"], "folder")
    assert labels.summary() == "2 labels over 4 images (from folders); 1 unlabelled"


def test_summary_of_auto_says_how_many_labels_came_from_each_kind_and_counts_singletons():
    assert labels_of(MIXED).summary() == (
        "4 labels over 7 images (from file-name prefixes for 4 images, folders for 3); 1 unlabelled; "
        "1 label with a single image (not evaluated as queries)"
    )


def test_a_single_label_is_accepted_but_the_summary_says_what_it_means():
    labels = labels_of(["cats/a.jpg", "cats/b.jpg"], "folder")
    assert labels.label_count == 1
    assert "one label only" in labels.summary()


def test_encode_without_any_label_gives_no_classes_and_all_minus_one():
    classes, codes = encode([None, None])
    assert classes.tolist() == [] and codes.tolist() == [-1, -1]


def test_encode_numbers_labels_in_sorted_order_whatever_order_they_come_in():
    classes, codes = encode(["b", None, "a", "c", "a", "b"])
    assert classes.tolist() == ["a", "b", "c"]
    assert codes.tolist() == [1, -1, 0, 2, 0, 1]


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["folder", "auto"])
def test_a_flat_folder_of_plain_names_has_no_labels_and_says_how_to_give_some(source):
    with pytest.raises(LabelsError, match=r"no image is in a sub-folder.*one sub-folder \(cats/…, dogs/…\)"):
        labels_of(["cat.jpg", "dog.jpg", "owl.jpg"], source)


def test_prefix_source_without_any_prefix_says_how_to_name_the_files():
    with pytest.raises(LabelsError, match="no file name has a <label>__ prefix.*<label>__<anything>.jpg"):
        labels_of(["cats/a.jpg", "cats/b.jpg"], "prefix")


@pytest.mark.parametrize(
    "paths, source",
    [
        (["cat__1.jpg", "dog__1.jpg", "owl__1.jpg"], "auto"),  # a flat folder of distinct names
        (["cat/1.jpg", "dog/1.jpg", "owl/1.jpg"], "folder"),  # one image per folder
        (["cat__1.jpg", "dog__1.jpg", "plain.jpg"], "prefix"),
    ],
)
def test_every_image_with_a_label_of_its_own_is_refused(paths, source):
    with pytest.raises(LabelsError, match="every image has a label of its own .*or pass a CSV of path,label"):
        labels_of(paths, source)


def test_no_images_at_all_is_refused():
    with pytest.raises(LabelsError, match="no images to label"):
        labels_of([])


def test_an_unknown_source_names_the_choices(tmp_path):
    with pytest.raises(LabelsError, match="unknown label source 'folders': pass 'auto', 'folder', 'prefix' or"):
        labels_of(["cats/a.jpg"], "folders")


def test_a_missing_csv_file_says_it_does_not_exist(tmp_path):
    with pytest.raises(LabelsError, match="does not exist"):
        labels_of(["cats/a.jpg"], str(tmp_path / "labels.csv"))


def test_a_folder_as_source_is_refused(tmp_path):
    with pytest.raises(LabelsError, match="is a folder"):
        labels_of(["cats/a.jpg"], str(tmp_path))


def test_labels_error_is_a_one_line_user_facing_value_error():
    with pytest.raises(LabelsError) as caught:
        labels_of(["cat.jpg", "dog.jpg"])
    assert isinstance(caught.value, UserFacingError) and isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


# --- a CSV of path,label ---------------------------------------------------------------------

PATHS = ["cats/a.jpg", "cats/b.jpg", "dogs/c.jpg", "dogs/d.jpg", "e.jpg"]


def test_csv_labels_the_images_it_names_and_leaves_the_others_unlabelled(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,cat\ncats/b.jpg,cat\ndogs/c.jpg,dog\ne.jpg,dog\n")
    labels = labels_of(PATHS, str(file))
    assert labels.names.tolist() == ["cat", "cat", "dog", None, "dog"]
    assert labels.codes.tolist() == [0, 0, 1, -1, 1]
    assert labels.source == str(file)
    assert labels.summary() == "2 labels over 4 images (from labels.csv); 1 unlabelled"


def test_csv_source_may_be_a_path_object(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,cat\ncats/b.jpg,cat\n")
    assert labels_of(PATHS, file).labelled == 2


def test_csv_with_a_byte_order_mark_spaces_extra_columns_and_columns_in_any_order(tmp_path):
    text = "\ufeffLabel , note, Path\n cat , x,cats/a.jpg \ncat,y, ./cats/b.jpg\n"
    labels = labels_of(PATHS, write_csv(tmp_path, text))
    assert labels.names.tolist() == ["cat", "cat", None, None, None]


def test_csv_paths_are_read_as_the_collection_writes_them(tmp_path):
    text = "path,label\n./cats/a.jpg,cat\ncats//b.jpg,cat\ndogs/./c.jpg,dog\nx/../dogs/d.jpg,dog\n"
    assert labels_of(PATHS, write_csv(tmp_path, text)).names.tolist() == ["cat", "cat", "dog", "dog", None]


def test_csv_labels_may_be_any_utf8_text(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,chat \u00e9tonn\u00e9\ncats/b.jpg,chat \u00e9tonn\u00e9\n")
    assert labels_of(PATHS, file).classes.tolist() == ["chat \u00e9tonn\u00e9"]


def test_csv_rows_naming_images_not_in_the_collection_are_counted_and_reported(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,cat\ncats/b.jpg,cat\ngone.jpg,cat\nold/x.jpg,dog\n")
    labels = labels_of(PATHS, file)
    assert labels.unmatched_rows == 2
    assert labels.unmatched_example == "gone.jpg"
    assert labels.summary().endswith("; 2 CSV rows naming no image of the collection (e.g. 'gone.jpg')")


def test_csv_absolute_paths_under_the_root_are_read_relative_to_it(tmp_path):
    root = tmp_path / "images"
    text = f"path,label\n{root / 'cats' / 'a.jpg'},cat\n{root / 'cats' / 'b.jpg'},cat\n{tmp_path / 'e.jpg'},cat\n"
    labels = labels_of(PATHS, write_csv(tmp_path, text), root=root)
    assert labels.names.tolist() == ["cat", "cat", None, None, None]
    assert labels.unmatched_rows == 1  # e.jpg is outside the root: not the collection's e.jpg


def test_csv_absolute_paths_without_a_root_name_no_image(tmp_path):
    text = f"path,label\n{tmp_path / 'cats' / 'a.jpg'},cat\ncats/a.jpg,cat\ncats/b.jpg,cat\n"
    assert labels_of(PATHS, write_csv(tmp_path, text)).unmatched_rows == 1


def test_csv_with_an_empty_label_leaves_that_image_unlabelled(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,cat\ncats/b.jpg,cat\ndogs/c.jpg,\ndogs/d.jpg\n")
    assert labels_of(PATHS, file).names.tolist() == ["cat", "cat", None, None, None]


def test_csv_repeating_a_row_is_fine_and_counts_once(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,cat\ncats/b.jpg,cat\ncats/a.jpg,cat\ngone.jpg,x\ngone.jpg,x\n")
    labels = labels_of(PATHS, file)
    assert (labels.labelled, labels.unmatched_rows) == (2, 1)


def test_csv_giving_one_path_two_labels_names_the_path_and_both_lines(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,cat\ncats/b.jpg,cat\n\n./cats/a.jpg,dog\n")
    with pytest.raises(LabelsError, match=r"labels 'cats/a.jpg' twice, 'cat' on line 2 and 'dog' on line 5: keep one"):
        labels_of(PATHS, file)


def test_csv_line_with_a_label_but_no_path_is_refused(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,cat\n,cat\n")
    with pytest.raises(LabelsError, match="label 'cat' on line 3 to no path"):
        read_label_file(file)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "is empty: its first line must be path,label"),
        ("\n\n", "is empty"),
        ("path,label\n", "has a header but no rows"),
        ("cats/a.jpg,cat\ncats/b.jpg,cat\n", "has no path and label columns .*'cats/a.jpg,cat'.*make its first line"),
        ("file,class\ncats/a.jpg,cat\n", "has no path and label columns"),
        ('path,label\n"cats/a.jpg,cat\n', "cannot read the label file .*: line 2: .*; save it as a plain CSV"),
    ],
)
def test_a_csv_that_cannot_be_read_says_which_file_and_what_is_wrong(tmp_path, text, problem):
    file = write_csv(tmp_path, text)
    with pytest.raises(LabelsError, match=problem) as caught:
        labels_of(PATHS, file)
    assert str(file) in str(caught.value) and "\n" not in str(caught.value)


def test_a_csv_that_is_not_utf8_says_to_save_it_as_utf8(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,chat \u00e9tonn\u00e9\n", encoding="latin-1")
    with pytest.raises(LabelsError, match="not UTF-8 text .*save it as UTF-8 CSV"):
        labels_of(PATHS, file)


def test_a_csv_that_names_no_image_of_the_collection_shows_a_path_as_it_should_be(tmp_path):
    file = write_csv(tmp_path, "path,label\nimages/cats/a.jpg,cat\nimages/cats/b.jpg,cat\n")
    with pytest.raises(LabelsError, match=r"none of the 2 rows .*'images/cats/a.jpg'.*like 'cats/a.jpg'"):
        labels_of(PATHS, file)


def test_a_csv_whose_images_all_have_labels_of_their_own_is_refused(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,tabby\ncats/b.jpg,siamese\n")
    with pytest.raises(LabelsError, match="every image has a label of its own .*same label in"):
        labels_of(PATHS, file)


def test_a_csv_giving_only_empty_labels_is_refused(tmp_path):
    file = write_csv(tmp_path, "path,label\ncats/a.jpg,\n")
    with pytest.raises(LabelsError, match="labels none of the 5 images"):
        labels_of(PATHS, file)


# --- scale -----------------------------------------------------------------------------------


def test_a_hundred_thousand_paths_are_labelled_by_code_consistently():
    folders = [f"class{row % 100:03d}/img_{row}.jpg" for row in range(50_000)]  # 100 labels of 500
    prefixes = [f"g{row % 50:02d}__v{row}.jpg" for row in range(50_000)]  # 50 labels of 1000
    labels = labels_of([path for pair in zip(folders, prefixes) for path in pair])
    assert isinstance(labels, Labels) and labels.unlabelled == 0
    assert labels.members.tolist() == [500] * 100 + [1000] * 50  # "class…" sorts before "g…"
    assert labels.classes[labels.codes].tolist() == labels.names.tolist()
