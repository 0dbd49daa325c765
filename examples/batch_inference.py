"""Batch inference: classify a set of images in parallel chunks with a model fitted here.

The pattern of offline scoring jobs: fit (or load) a model on your machine, cut the images
to score into chunks, and let every worker classify whole chunks with one vectorised
``predict``. The model is bound to the function with ``functools.partial``: the executor
stores a map's function once, and each worker loads it once, so the model is shipped once
per map and unpickled once per worker, while each call carries only its own chunk. The
images are scikit-learn's 8x8 handwritten digits, which ship inside the scikit-learn wheel:
nothing is downloaded.

On this machine (workers are local subprocesses):

    python examples/batch_inference.py

On a cluster, the same command with the cluster's settings in the environment instead
(see docs/examples.md):

    K8S_EXECUTOR_BACKEND=kubernetes K8S_EXECUTOR_STORAGE=s3://bucket/k8sx \\
        K8S_EXECUTOR_REGISTRY=registry.example.com/team python examples/batch_inference.py
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from k8s_executor import KubernetesExecutor

# The local backend unless the environment names another (K8S_EXECUTOR_BACKEND=kubernetes
# with the cluster's settings, as the docstring shows): runs as is on any machine.
BACKEND = os.environ.get("K8S_EXECUTOR_BACKEND", "local")

CHUNK_SIZE = 100  # images per call: one vectorised predict each


def classify_chunk(model: Any, images: np.ndarray) -> np.ndarray:
    """Predict the digit of every image of a chunk (shape ``(n, 8, 8)``) in one call."""
    labels: np.ndarray = model.predict(images.reshape(len(images), -1))
    return labels


def main() -> None:
    digits = load_digits()
    train_images, test_images, train_labels, test_labels = train_test_split(
        digits.images, digits.target, test_size=0.5, random_state=0, stratify=digits.target
    )

    # Fitted here, in a second: in real life, loaded from a model registry or a file.
    model = SVC(gamma=0.001).fit(train_images.reshape(len(train_images), -1), train_labels)

    chunks = [
        test_images[start : start + CHUNK_SIZE] for start in range(0, len(test_images), CHUNK_SIZE)
    ]
    # The model goes with the function (stored once for the map), the images with the
    # calls, CHUNK_SIZE at a time. Mapping over single images instead would make one call,
    # and one small predict, per image.
    predict = functools.partial(classify_chunk, model)

    started = time.perf_counter()
    with KubernetesExecutor(backend=BACKEND) as ex:
        print(f"run {ex.run_id}: up to {ex.max_workers} workers")
        predictions = np.concatenate(list(ex.map(predict, chunks)))
    elapsed = time.perf_counter() - started

    accuracy = float(np.mean(predictions == test_labels))
    print(f"classified {len(predictions)} images in {len(chunks)} chunks in {elapsed:.1f} s")
    print(f"accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
