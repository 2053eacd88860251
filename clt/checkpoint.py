"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint lives in the store's per-address work folder (tmp/<id>.work/), written
atomically, so a run killed at any moment resumes from the last complete one. Given the store's
`sign`, its JSON carries the sha256 of its tensor file and a signature of both with the store's
key: a checkpoint edited outside clt is discarded with a warning and training starts over, so an
edit never becomes a signed encoder.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from clt.bounded import MIB, read_regular, sha256_regular
from clt.errors import StoreError

TENSORS = "checkpoint.safetensors"
STATE = "checkpoint.json"
STATE_LIMIT = 256 * MIB  # far above any optimizer's state skeleton: a bound, not a budget


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


def _signed_part(doc: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers: its whole JSON but the signature, in one canonical form."""
    rest = {k: v for k, v in doc.items() if k != "hmac"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()


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
    def __init__(self, folder: Path, meta: dict[str, Any] | None = None, writable: bool = True,
                 sign: Callable[[bytes], str] | None = None, warn: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.meta = meta or {}
        self.writable = writable  # ranks other than 0 read checkpoints but never write them
        self.sign = sign  # the store's signature; None (tests, library use) keeps checkpoints unsigned
        self.warn = warn or (lambda message: None)

    def save(self, state: dict[str, Any]) -> None:
        if not self.writable:
            return  # and never touch the folder: rank 0 may be writing its partial files right now
        # partial files named for this process, so no other process's cleanup can remove them
        partials = (self.folder / f".{TENSORS}.{os.getpid()}.tmp", self.folder / f".{STATE}.{os.getpid()}.tmp")
        try:
            self._save(state, *partials)
        finally:  # a write that failed (a full disk) leaves no half file in the work folder
            for partial in partials:
                partial.unlink(missing_ok=True)

    def _save(self, state: dict[str, Any], tmp: Path, tmp_json: Path) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten(state, tensors)
        self.folder.mkdir(parents=True, exist_ok=True)
        # tensors first, then the JSON that names them: a JSON file only ever points at a
        # complete tensor file, and both carry the same generation number
        generation = self._generation() + 1
        save_file(tensors, str(tmp), metadata={"generation": str(generation)})
        doc = {"generation": generation, "state": skeleton, "meta": self.meta}
        if self.sign:
            doc["tensors_sha256"] = sha256_regular(tmp, "the checkpoint")
            doc["hmac"] = self.sign(_signed_part(doc))
        os.replace(tmp, self.folder / f"{generation % 2}.{TENSORS}")
        tmp_json.write_text(json.dumps(doc))
        os.replace(tmp_json, self.folder / STATE)

    def _generation(self) -> int:
        try:
            return int(json.loads(read_regular(self.folder / STATE, STATE_LIMIT, "the checkpoint"))["generation"])
        except (OSError, ValueError, KeyError, TypeError, StoreError):
            return 0

    def load(self) -> dict[str, Any] | None:
        """The last complete checkpoint, or None when there is none or it cannot be trusted.

        A checkpoint is only a shortcut: one that is damaged, from another generation or
        not a safetensors file at all (never unpickled) means starting over, not a crash.
        """
        from safetensors import SafetensorError, safe_open

        try:
            doc = json.loads(read_regular(self.folder / STATE, STATE_LIMIT, "the checkpoint"))
        except (OSError, ValueError):
            return None
        except StoreError as err:
            return self._discard(err.message)
        if not isinstance(doc, dict) or doc.get("meta") != self.meta:
            return None
        problem = self._untrusted(doc)
        if problem:
            return self._discard(problem)
        try:
            generation = int(doc["generation"])
            with safe_open(str(self.folder / f"{generation % 2}.{TENSORS}"), framework="pt") as fh:
                if (fh.metadata() or {}).get("generation") != str(generation):
                    return None  # the JSON names a tensor file of another generation
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
            return unflatten(doc["state"], tensors)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return None

    def _untrusted(self, doc: dict[str, Any]) -> str | None:
        """Why a checkpoint cannot be trusted to be clt's own (None when it is, or nothing is signed)."""
        if not self.sign:
            return None
        if not isinstance(doc.get("hmac"), str) or not hmac.compare_digest(doc["hmac"], self.sign(_signed_part(doc))):
            return f"the checkpoint in {self.folder} is not signed by this store (edited, or from another clt)"
        try:
            tensors = self.folder / f"{int(doc['generation']) % 2}.{TENSORS}"
            if sha256_regular(tensors, "the checkpoint") != doc.get("tensors_sha256"):
                return f"the checkpoint {tensors} does not match the sha256 its signed JSON records"
        except (OSError, ValueError, TypeError) as err:
            return f"the checkpoint in {self.folder} is incomplete ({err})"
        except StoreError as err:
            return err.message
        return None

    def _discard(self, problem: str) -> None:
        self.warn(f"{problem}: it is not used, and training starts over")
        return None

    def clear(self) -> None:
        if not self.writable:
            return
        for path in self.folder.glob("*"):
            path.unlink(missing_ok=True)
