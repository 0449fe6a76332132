"""Reverse image search: embed a folder of images with a pretrained CNN, index them with FAISS, query.

The stages hand over through files, in one direction:
images (`images`) -> embeddings (`extract`, `embedders`) -> index (`index`) -> answers (`query`, `display`, `app`).
`helpers.py` at the project root re-exports what the notebooks use.
"""
