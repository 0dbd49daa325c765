"""GridSearchCV(n_jobs=...) on KubernetesExecutor workers through the joblib backend.

Runs on this machine by default (local worker processes, a temporary storage directory):

    python examples/sklearn_grid_search.py

On a cluster, name the backend, an image and a storage URL both sides reach:

    python examples/sklearn_grid_search.py --backend kubernetes \\
        --image registry.example.com/team/env:tag --storage s3://bucket/k8sx

or give them as the environment variables K8S_EXECUTOR_BACKEND, K8S_EXECUTOR_IMAGE (or
K8S_EXECUTOR_REGISTRY) and K8S_EXECUTOR_STORAGE, as for the other examples.
"""

from __future__ import annotations

import argparse
import os
import time

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import k8s_executor.joblib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        default=os.environ.get("K8S_EXECUTOR_BACKEND", "local"),
        choices=["local", "kubernetes"],
        help="default: K8S_EXECUTOR_BACKEND, else local",
    )
    parser.add_argument("--n-jobs", type=int, default=2, help="workers at once")
    parser.add_argument("--image", default=None, help="worker image (kubernetes)")
    parser.add_argument("--storage", default=None, help="fsspec URL (kubernetes)")
    args = parser.parse_args()

    k8s_executor.joblib.register()
    features, labels = load_digits(return_X_y=True)  # shipped with scikit-learn: no download
    search = GridSearchCV(
        SVC(),
        {"C": [0.1, 1, 10], "gamma": [1e-4, 1e-3]},
        cv=3,
        n_jobs=args.n_jobs,
    )
    options = {"executor_backend": args.backend}
    if args.image:
        options["image"] = args.image
    if args.storage:
        options["storage"] = args.storage

    start = time.perf_counter()
    with joblib.parallel_config(backend="kubernetes", **options):
        search.fit(features, labels)
    elapsed = time.perf_counter() - start

    fits = len(search.cv_results_["params"]) * search.n_splits_
    print(f"{fits} fits on the {args.backend} backend in {elapsed:.1f} s")
    print(f"best parameters: {search.best_params_}, accuracy {search.best_score_:.3f}")


if __name__ == "__main__":
    main()
