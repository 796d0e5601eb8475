"""Example models written into an empty repository at first start.

`breast_cancer`: two ONNX versions trained on scikit-learn's bundled breast cancer data
(v1 logistic regression, v2 a small MLP), each with reference statistics of its training
inputs for drift detection. `echo`: a trivial array model, the baseline for benchmarks.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from contract.extras import MissingExtra, require
from contract.manifest import Batching, Lineage, Manifest, TensorSpecModel
from contract.repository import Repository, VersionEntry

CLASSIFIER = "breast_cancer"
ECHO = "echo"
ECHO_WIDTH = 16
DATASET = "sklearn.datasets.load_breast_cancer"
PURPOSE = "writing the example models"


def dense_onnx(mean: np.ndarray, scale: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """Standardise, run dense layers (ReLU between), then turn the last logit into 2-class softmax + argmax."""
    f32 = np.float32
    inits = [numpy_helper.from_array(mean.astype(f32), "mean"), numpy_helper.from_array(scale.astype(f32), "scale")]
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "scale"], ["h0"]),
    ]
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        if last:  # a binary classifier's single logit z becomes logits [0, z]
            w = np.concatenate([np.zeros_like(w), w], axis=1)
            b = np.concatenate([np.zeros_like(b), b])
        inits += [numpy_helper.from_array(w.astype(f32), f"W{i}"), numpy_helper.from_array(b.astype(f32), f"b{i}")]
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["logits" if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        "dense_classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", mean.shape[0]])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def classifier_signature(n_features: int) -> dict[str, list[TensorSpecModel]]:
    return {
        "inputs": [TensorSpecModel(name="features", datatype="FP32", shape=[-1, n_features])],
        "outputs": [
            TensorSpecModel(name="probabilities", datatype="FP32", shape=[-1, 2]),
            TensorSpecModel(name="label", datatype="INT64", shape=[-1]),
        ],
    }


def write_reference(
    folder: Path, x: np.ndarray, p: np.ndarray, names: list[str], labels: np.ndarray | None = None
) -> None:
    """reference.npz: the training inputs, the model's predictions on them and, when known, their labels."""
    arrays: dict[str, Any] = {
        "inputs": x.astype(np.float32),
        "predictions": p.astype(np.float32),
        "feature_names": np.array(names),
    }
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    np.savez(folder / "reference.npz", **arrays)


KINDS = ("logistic", "mlp")
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {"logistic": {"C": 0.05}, "mlp": {"hidden": 16, "alpha": 1e-3}}


def fit_classifier(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    sample_weight: np.ndarray | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Standardise with x's statistics, fit a binary logistic regression or a one-layer MLP, export it as ONNX.

    Returns the model and the hyper-parameters it used (DEFAULT_PARAMS[kind] updated by params)."""
    require("sklearn", "train", "training a classifier")
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if kind not in KINDS:
        raise ValueError(f"unknown classifier kind {kind!r}; expected one of {', '.join(KINDS)}")
    used = {**DEFAULT_PARAMS[kind], **{k: v for k, v in (params or {}).items() if k in DEFAULT_PARAMS[kind]}}
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
    z = (x - mean) / scale
    if kind == "logistic":
        lr = LogisticRegression(C=float(used["C"]), max_iter=1000).fit(z, y, sample_weight=sample_weight)
        layers = [(lr.coef_.T, lr.intercept_)]
    else:
        mlp = MLPClassifier(
            hidden_layer_sizes=(int(used["hidden"]),), alpha=float(used["alpha"]), max_iter=2000, random_state=seed
        )
        mlp.fit(z, y, sample_weight=sample_weight)
        layers = list(zip(mlp.coefs_, mlp.intercepts_, strict=True))
    return dense_onnx(mean, scale, layers), used


def predict_proba(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """Class probabilities [n, 2] from an ONNX classifier of dense_onnx's signature, run by ONNX Runtime."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["probabilities"], {"features": x.astype(np.float32)})[0])


def write_classifier(
    repo: Repository, version: str, kind: str, seed: int = 0, parent: str | None = None
) -> VersionEntry:
    require("sklearn", "train", PURPOSE)
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=seed, stratify=data.target
    )
    model, params = fit_classifier(kind, x_train, y_train, seed)
    proba = predict_proba(model, x_test)[:, 1]
    metrics = {"accuracy": float(accuracy_score(y_test, proba > 0.5)), "roc_auc": float(roc_auc_score(y_test, proba))}
    manifest = Manifest(
        name=CLASSIFIER,
        version=version,
        runtime="onnx",
        artifact="model.onnx",
        **classifier_signature(x_train.shape[1]),
        batching=Batching(max_batch_size=256),
        metrics=metrics,
        lineage=Lineage(
            parent_version=parent,
            dataset=DATASET,
            params={"kind": kind, "seed": seed, **params},
            trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ),
        reference="reference.npz",
    )

    def artifacts(folder: Path) -> None:
        onnx.save(model, str(folder / "model.onnx"))
        train_proba = predict_proba(model, x_train)[:, 1]
        write_reference(folder, x_train, train_proba, [str(n) for n in data.feature_names], y_train)

    return repo.write_version(manifest, artifacts)


def write_echo(repo: Repository) -> VersionEntry:
    spec = [TensorSpecModel(name="INPUT0", datatype="FP32", shape=[-1, ECHO_WIDTH])]
    manifest = Manifest(
        name=ECHO,
        version="1",
        runtime="array",
        options={"program": "identity"},
        inputs=spec,
        outputs=[TensorSpecModel(name="OUTPUT0", datatype="FP32", shape=[-1, ECHO_WIDTH])],
        batching=Batching(max_batch_size=512, max_queue_rows=16384),
    )
    return repo.write_version(manifest, lambda folder: None)


def ensure_examples(root: Path) -> list[VersionEntry]:
    """Write the example models unless the repository already holds models; returns what it wrote."""
    repo = Repository(root)
    if repo.scan():
        return []
    return [write_classifier(repo, "1", "logistic"), write_classifier(repo, "2", "mlp", parent="1"), write_echo(repo)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m serving.examples",
        description="Write the example models into a model repository that holds none.",
    )
    parser.add_argument("repository", type=Path, help="the model repository's root folder")
    args = parser.parse_args(argv)
    try:
        written = ensure_examples(args.repository)
    except MissingExtra as exc:
        # `gateway serve` runs this program on an empty repository and shows what it printed here.
        print(exc, file=sys.stderr)
        return 2
    for entry in written:
        print(f"wrote {entry.manifest.name} version {entry.manifest.version} into {entry.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
