"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint lives in the store's per-address work folder (tmp/<id>.work/), written
atomically, so a run killed at any moment resumes from the last complete one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

TENSORS = "checkpoint.safetensors"
STATE = "checkpoint.json"


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Nested dicts/lists with tensors -> JSON skeleton; tensors collected under path keys."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), flatten(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    return obj


def _key(k: Any) -> Any:
    return {"int": k} if isinstance(k, int) else k


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {(k["int"] if isinstance(k, dict) else k): unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


class FileCheckpointer:
    def __init__(self, folder: Path, meta: dict[str, Any] | None = None, writable: bool = True):
        self.folder = Path(folder)
        self.meta = meta or {}
        self.writable = writable  # ranks other than 0 read checkpoints but never write them

    def save(self, state: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        if not self.writable:
            return
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten(state, tensors)
        self.folder.mkdir(parents=True, exist_ok=True)
        # tensors first, then the JSON that names them: a JSON file only ever points at a
        # complete tensor file, and both carry the same generation number
        generation = self._generation() + 1
        tmp = self.folder / f".{TENSORS}.tmp"
        save_file(tensors, str(tmp), metadata={"generation": str(generation)})
        os.replace(tmp, self.folder / f"{generation % 2}.{TENSORS}")
        doc = {"generation": generation, "state": skeleton, "meta": self.meta}
        tmp_json = self.folder / f".{STATE}.tmp"
        tmp_json.write_text(json.dumps(doc))
        os.replace(tmp_json, self.folder / STATE)

    def _generation(self) -> int:
        try:
            return int(json.loads((self.folder / STATE).read_text())["generation"])
        except (OSError, ValueError, KeyError):
            return 0

    def load(self) -> dict[str, Any] | None:
        """The last complete checkpoint, or None when there is none or it cannot be trusted.

        A checkpoint is only a shortcut: one that is damaged, from another generation or
        not a safetensors file at all (never unpickled) means starting over, not a crash.
        """
        from safetensors import SafetensorError, safe_open

        try:
            doc = json.loads((self.folder / STATE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("meta") != self.meta:
            return None
        try:
            generation = int(doc["generation"])
            with safe_open(str(self.folder / f"{generation % 2}.{TENSORS}"), framework="pt") as fh:
                if (fh.metadata() or {}).get("generation") != str(generation):
                    return None  # the JSON names a tensor file of another generation
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
            return unflatten(doc["state"], tensors)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return None

    def clear(self) -> None:
        if not self.writable:
            return
        for path in self.folder.glob("*"):
            path.unlink(missing_ok=True)
