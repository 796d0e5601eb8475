"""Example models written into an empty repository at first start.

`breast_cancer`: two ONNX versions trained on scikit-learn's bundled breast cancer data
(v1 logistic regression, v2 a small MLP), each with reference statistics of its training
inputs for drift detection. `echo`: a trivial array model, the baseline for benchmarks.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serving.manifest import Batching, Lineage, Manifest, TensorSpecModel
from serving.repository import Repository, VersionEntry

CLASSIFIER = "breast_cancer"
ECHO = "echo"
ECHO_WIDTH = 16
DATASET = "sklearn.datasets.load_breast_cancer"


def dense_onnx(mean: np.ndarray, scale: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """Standardise, run dense layers (ReLU between), then turn the last logit into 2-class softmax + argmax."""
    f32 = np.float32
    inits = [numpy_helper.from_array(mean.astype(f32), "mean"), numpy_helper.from_array(scale.astype(f32), "scale")]
    nodes = [helper.make_node("Sub", ["features", "mean"], ["centered"]),
             helper.make_node("Div", ["centered", "scale"], ["h0"])]
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
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def classifier_signature(n_features: int) -> dict[str, list[TensorSpecModel]]:
    return {
        "inputs": [TensorSpecModel(name="features", datatype="FP32", shape=[-1, n_features])],
        "outputs": [TensorSpecModel(name="probabilities", datatype="FP32", shape=[-1, 2]),
                    TensorSpecModel(name="label", datatype="INT64", shape=[-1])],
    }


def write_reference(folder: Path, x: np.ndarray, p: np.ndarray, names: list[str]) -> None:
    np.savez(folder / "reference.npz", inputs=x.astype(np.float32), predictions=p.astype(np.float32),
             feature_names=np.array(names))


def write_classifier(repo: Repository, version: str, kind: str, seed: int = 0,
                     parent: str | None = None) -> VersionEntry:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=seed, stratify=data.target)
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0) + 1e-12
    z_train = (x_train - mean) / scale
    if kind == "logistic":
        params = {"C": 0.05}
        lr = LogisticRegression(C=0.05, max_iter=1000).fit(z_train, y_train)
        layers = [(lr.coef_.T, lr.intercept_)]
        proba = lr.predict_proba((x_test - mean) / scale)[:, 1]
    else:
        params = {"hidden": 16, "alpha": 1e-3}
        mlp = MLPClassifier(hidden_layer_sizes=(16,), alpha=1e-3, max_iter=2000, random_state=seed)
        mlp.fit(z_train, y_train)
        layers = list(zip(mlp.coefs_, mlp.intercepts_, strict=True))
        proba = mlp.predict_proba((x_test - mean) / scale)[:, 1]
    model = dense_onnx(mean, scale, layers)
    metrics = {"accuracy": float(accuracy_score(y_test, proba > 0.5)), "roc_auc": float(roc_auc_score(y_test, proba))}
    manifest = Manifest(
        name=CLASSIFIER, version=version, runtime="onnx", artifact="model.onnx",
        **classifier_signature(x_train.shape[1]),
        batching=Batching(max_batch_size=256),
        metrics=metrics,
        lineage=Lineage(parent_version=parent, dataset=DATASET, params={"kind": kind, "seed": seed, **params},
                        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
        reference="reference.npz",
    )

    def artifacts(folder: Path) -> None:
        onnx.save(model, str(folder / "model.onnx"))
        train_proba = _run_onnx(folder / "model.onnx", x_train.astype(np.float32))
        write_reference(folder, x_train, train_proba, [str(n) for n in data.feature_names])

    return repo.write_version(manifest, artifacts)


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["probabilities"], {"features": x})[0][:, 1])


def write_echo(repo: Repository) -> VersionEntry:
    spec = [TensorSpecModel(name="INPUT0", datatype="FP32", shape=[-1, ECHO_WIDTH])]
    manifest = Manifest(
        name=ECHO, version="1", runtime="array", options={"program": "identity"},
        inputs=spec, outputs=[TensorSpecModel(name="OUTPUT0", datatype="FP32", shape=[-1, ECHO_WIDTH])],
        batching=Batching(max_batch_size=512, max_queue_rows=16384),
    )
    return repo.write_version(manifest, lambda folder: None)


def ensure_examples(root: Path) -> list[VersionEntry]:
    """Write the example models unless the repository already holds models; returns what it wrote."""
    repo = Repository(root)
    if repo.scan():
        return []
    return [write_classifier(repo, "1", "logistic"), write_classifier(repo, "2", "mlp", parent="1"), write_echo(repo)]
