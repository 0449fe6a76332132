"""Reverse image search: embed a folder of images with a pretrained CNN, index them with FAISS, query.

The stages hand over through files, in one direction:
images (`images`) -> embeddings (`extract`, `embedders`) -> index (`index`) -> answers (`query`, `display`, `app`).
`helpers.py` at the project root re-exports what the notebooks use.
"""

import os

# FAISS's OpenMP threads spin while they wait for work, by default. Beside TensorFlow's threads in the same process,
# or other work on a 2-core machine, that made small FAISS calls up to 200x slower (training 4-bit PQ on 1,024
# vectors: 10.6 s, against 0.06 s waiting passively). It takes effect only if set before FAISS is first imported;
# set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
