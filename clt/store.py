"""Content-addressed artifact store.

Layout under the root (./artifacts, $CLT_ARTIFACTS or --artifacts):

    objects/ab/cdef…/   one finished artifact: manifest.json, manifest.sha256 and its files
    tmp/                artifacts being built; renamed into objects/ when complete
    refs/               small files naming artifacts: latest, latest-<kind>, <recipe>/<kind>, dataset/<name>
    locks/              one lock file per address, so two runs of one stage build it once
    downloads/          raw files fetched from dataset mirrors

An artifact's id is the sha256 of the canonical JSON of what determines it (stage, resolved
recipe, input ids, seed, clt version); device and verbosity stay out of it. Finished
artifacts are never modified: a directory appears in objects/ by one atomic rename, and every
file's sha256 is checked when a stage reads it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from clt.errors import StoreError, did_you_mean
from clt.version import __version__

MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
MANIFEST_MAC = "manifest.hmac"
KEY_FILE = "store.key"
MAX_REF_CHARS = 1000
ID_CHARS = 64
SHORT = 12


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def address(spec: dict[str, Any]) -> str:
    """The id of the artifact that `spec` (stage, recipe, inputs, seed) determines."""
    return hashlib.sha256(canonical_json({**spec, "clt_version": __version__}).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def library_versions() -> dict[str, str]:
    versions = {"clt": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "sklearn"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


@dataclass
class Artifact:
    id: str
    path: Path
    manifest: dict[str, Any]
    _verified: set[str] = field(default_factory=set, repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def short(self) -> str:
        return self.id[:SHORT]

    @property
    def name(self) -> str:
        return self.manifest.get("name", "")

    @property
    def inputs(self) -> dict[str, str]:
        return self.manifest.get("inputs", {})

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    @property
    def recipe(self) -> dict[str, Any]:
        return self.manifest.get("recipe", {})

    def file(self, name: str) -> Path:
        """Path of one of the artifact's files, its sha256 checked against the manifest first."""
        files = self.manifest.get("files", {})
        if name not in files:
            raise StoreError(f"artifact {self.short} ({self.kind}) has no file '{name}'",
                             f"its files are: {', '.join(sorted(files)) or 'none'}")
        path = self.path / name
        if name not in self._verified:
            problem = _check_file(path, files[name])
            if problem:
                raise StoreError(f"artifact {self.short} ({self.kind}) is damaged: {name} {problem}",
                                 "delete it with `clt gc --damaged` and run the stage that made it again")
            self._verified.add(name)
        return path


def _check_file(path: Path, expected: dict[str, Any]) -> str | None:
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"has {size} bytes, expected {expected['bytes']}"
    if file_sha256(path) != expected["sha256"]:
        return "does not match its sha256"
    return None


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the artifact store '{self.root}' is a file, not a folder",
                             "point --artifacts or $CLT_ARTIFACTS at a folder (it is created if missing)")

    # ------------------------------------------------------------------ layout
    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def object_path(self, artifact_id: str) -> Path:
        return self.objects / artifact_id[:2] / artifact_id[2:]

    def _ensure(self) -> None:
        for sub in ("objects", "tmp", "refs", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self._key() is None:
            self._create_key()

    def _key(self) -> bytes | None:
        """The store's secret for manifest signatures; None for a store this clt has never written."""
        if getattr(self, "_cached_key", None) is None:
            try:
                key = bytes.fromhex((self.root / KEY_FILE).read_text().strip())
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as err:
                raise StoreError(f"the store's key {self.root / KEY_FILE} cannot be read ({err})",
                                 "check its permissions; a key that was edited cannot be repaired") from None
            if len(key) != 32:
                raise StoreError(f"the store's key {self.root / KEY_FILE} is not a clt key ({len(key)} bytes)",
                                 "a key that was edited cannot be repaired: rebuild the store's artifacts")
            self._cached_key = key
        return self._cached_key

    def _create_key(self) -> None:
        """A random per-store key (mode 0600). An older clt's store has its intact artifacts signed
        first, under a lock, and the key is published last: a run killed half-way leaves no key, so
        the next one signs again; nothing is ever refused for a migration that did not finish."""
        with open(self.root / "locks" / f"{KEY_FILE}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (self.root / KEY_FILE).exists():
                return
            if any((self.object_path(i) / MANIFEST_MAC).exists() for i in self.ids()):
                raise StoreError(f"{self.root / KEY_FILE} is missing, but the store's manifests are signed",
                                 "restore store.key from a backup; without it the store cannot be trusted")
            key = os.urandom(32)
            self._cached_key = key
            for artifact_id in self.ids():
                path = self.object_path(artifact_id)
                if _sha256_matches(path):
                    write_atomic(path / MANIFEST_MAC, self._sign((path / MANIFEST).read_bytes()) + "\n")
            partial = self.root / f".{KEY_FILE}.{uuid.uuid4().hex[:8]}"
            with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(key.hex() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, self.root / KEY_FILE)

    def _sign(self, raw: bytes) -> str:
        import hmac

        key = self._key()
        if key is None:
            raise StoreError(f"the store '{self.root}' has no readable {KEY_FILE}", "check the folder's permissions")
        return hmac.new(key, raw, hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ reading
    def exists(self, artifact_id: str) -> bool:
        return (self.object_path(artifact_id) / MANIFEST).is_file()

    def get(self, artifact_id: str) -> Artifact:
        return self.load(self.object_path(artifact_id), artifact_id)

    def load(self, path: Path, artifact_id: str | None = None) -> Artifact:
        manifest_path = path / MANIFEST
        try:
            raw = manifest_path.read_bytes()
        except OSError:
            raise StoreError(f"'{path}' is not an artifact: it has no {MANIFEST}",
                             "pass an artifact id, a ref (clt ls) or an artifact directory") from None
        if not _sha256_matches(path, raw):
            raise StoreError(f"artifact at '{path}' is damaged: {MANIFEST} was edited or its checksum is missing",
                             "delete it with `clt gc --damaged` and run the stage that made it again")
        self._check_signature(path, raw)
        manifest = _parse_manifest(raw, path)
        return Artifact(artifact_id or manifest["id"], path, manifest)

    def _check_signature(self, path: Path, raw: bytes) -> None:
        """A store with a key signs every manifest it writes: one edited or made outside clt is refused."""
        import hmac

        key = self._key()
        if key is None:
            if (path / MANIFEST_MAC).exists():  # signed, but the key is gone: deleting it must not unlock edits
                raise StoreError(f"artifact at '{path}' is signed, but {self.root / KEY_FILE} is missing",
                                 "restore store.key from a backup, or pass --artifacts with the store it belongs to")
            return  # a store no clt with signatures has written to (e.g. read-only): checksums only
        try:
            signature = (path / MANIFEST_MAC).read_bytes().strip()
        except OSError:
            signature = b""
        if not hmac.compare_digest(signature, hmac.new(key, raw, hashlib.sha256).hexdigest().encode()):
            inside = path.resolve().is_relative_to(self.root.resolve())
            raise StoreError(f"artifact at '{path}' is not signed by this store: {MANIFEST} was written or "
                             "edited outside clt" + ("" if inside else f", or it belongs to another store than "
                                                     f"'{self.root}'"),
                             "delete it with `clt gc --damaged` and run the stage that made it again" if inside
                             else "pass --artifacts with the store it belongs to")

    def all(self) -> list[Artifact]:
        """Every finished artifact, oldest first (damaged ones skipped: `clt verify` reports them)."""
        found = []
        if not self.objects.is_dir():
            return found
        for shard in sorted(self.objects.iterdir()):
            if not shard.is_dir():
                continue  # a stray file (e.g. .DS_Store) is not an artifact
            for entry in shard.iterdir():
                try:
                    found.append(self.load(entry, shard.name + entry.name))
                except (StoreError, ValueError):
                    continue
        return sorted(found, key=lambda a: a.manifest.get("created", 0))

    def ids(self) -> list[str]:
        if not self.objects.is_dir():
            return []
        return [shard.name + entry.name for shard in self.objects.iterdir() if shard.is_dir()
                for entry in shard.iterdir()]

    # ------------------------------------------------------------------ refs
    def ref_path(self, name: str) -> Path:
        return self.root / "refs" / name

    def set_ref(self, name: str, artifact_id: str) -> None:
        if not _valid_ref(name):
            raise StoreError(f"ref name {name!r} is not usable (it must stay inside {self.root / 'refs'})",
                             "use names of letters, digits, '.', '_', '-' and '/'")
        write_atomic(self.ref_path(name), artifact_id + "\n")

    def read_ref(self, name: str) -> str | None:
        if not _valid_ref(name):
            return None
        path = self.ref_path(name)
        try:
            return path.read_text().strip() if path.is_file() else None
        except OSError:
            return None

    def refs(self) -> dict[str, str]:
        base = self.root / "refs"
        if not base.is_dir():
            return {}
        return {str(p.relative_to(base)): p.read_text().strip()
                for p in sorted(base.rglob("*")) if p.is_file() and not p.name.startswith(".")}

    def resolve(self, ref: str | None, kinds: tuple[str, ...] = (), *, hint: str = "") -> Artifact:
        """An artifact from an id, unambiguous id prefix, ref name or directory path.

        With no ref, the latest artifact of the first of `kinds` that has one.
        """
        if ref is None or ref == "":
            for kind in kinds:
                found = self.read_ref(f"latest-{kind}")
                if found and self.exists(found):
                    return self.get(found)
            wanted = " or ".join(kinds) or "artifact"
            raise StoreError(f"no {wanted} in the store at '{self.root}'",
                             hint or "create one first (see `clt --help`), or pass --artifacts DIR")
        artifact = self._resolve_one(ref)
        if kinds and artifact.kind not in kinds:
            # a ref may name a recipe: '<recipe>' means its latest artifact of the wanted kind
            raise StoreError(f"'{ref}' is a {artifact.kind} ({artifact.short}), but a {' or '.join(kinds)} is needed",
                             hint or f"pass a {' or '.join(kinds)} id (see `clt ls`)")
        return artifact

    def resolve_named(self, ref: str | None, kinds: tuple[str, ...], hint: str = "") -> Artifact:
        """Like resolve, but a recipe name picks that recipe's latest artifact of the wanted kind."""
        if ref:
            for kind in kinds:
                found = self.read_ref(f"{ref}/{kind}")
                if found and self.exists(found):
                    return self.get(found)
        return self.resolve(ref, kinds, hint=hint)

    def _resolve_one(self, ref: str) -> Artifact:
        if len(ref) > MAX_REF_CHARS or "\x00" in ref:
            raise StoreError(f"'{ref[:40]}...' ({len(ref)} characters) is not an artifact id, ref or path",
                             "pass an id (64 hex characters, or a prefix of 4 or more), a ref or a path; see `clt ls`")
        path = Path(ref)
        try:
            is_artifact_dir = (path / MANIFEST).is_file()
        except OSError:  # a name too long for the file system, say
            is_artifact_dir = False
        if is_artifact_dir:
            return self.load(path)
        named = self.read_ref(ref) or self.read_ref(f"latest-{ref}")
        if named:
            if not self.exists(named):
                raise StoreError(f"ref '{ref}' points to {named[:SHORT]}, which is no longer in the store",
                                 "run the stage again to rebuild it")
            return self.get(named)
        lowered = ref.lower()
        if len(lowered) >= 4 and all(c in "0123456789abcdef" for c in lowered):
            shard = self.objects / lowered[:2]
            matches = []
            if shard.is_dir():
                matches = [lowered[:2] + e.name for e in shard.iterdir() if (lowered[:2] + e.name).startswith(lowered)]
            if len(matches) == 1:
                return self.get(matches[0])
            if len(matches) > 1:
                listed = ", ".join(m[:SHORT] for m in sorted(matches)[:5])
                raise StoreError(f"artifact id prefix '{ref}' is ambiguous: it matches {len(matches)} artifacts "
                                 f"({listed})", "give more characters of the id")
        known = [name for name in self.refs() if not name.startswith("memo/")]
        raise StoreError(f"no artifact '{ref}' in the store at '{self.root}'",
                         did_you_mean(ref, known) + "; `clt ls` lists artifacts" if known
                         else "the store is empty: run a stage first, or pass --artifacts DIR")

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def lock(self, artifact_id: str, blocking: bool = True) -> Iterator[bool]:
        self._ensure()
        with open(self.root / "locks" / f"{artifact_id}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def work_dir(self, artifact_id: str) -> Path:
        """A per-address folder outside objects/ that survives a crash (checkpoints for --resume)."""
        path = self.root / "tmp" / f"{artifact_id}.work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def produce(self, spec: dict[str, Any], kind: str, build: Callable[[Path], dict[str, Any]],
                refs: tuple[str, ...] = (), name: str = "") -> tuple[Artifact, bool]:
        """Return the artifact `spec` addresses, building it with `build(tmpdir)` if absent.

        `build` writes files into tmpdir and returns manifest fields (metrics, device, ...).
        Returns (artifact, cached). Two processes with one spec build it once: the second waits
        on the address's lock and then finds the first one's result.
        """
        artifact_id = address(spec)
        if not self.exists(artifact_id):
            with self.lock(artifact_id):
                if not self.exists(artifact_id):
                    self._build(artifact_id, spec, kind, build, name)
                    artifact = self.get(artifact_id)
                    self._set_refs(artifact, refs)
                    return artifact, False
        artifact = self.get(artifact_id)
        self._set_refs(artifact, refs)
        return artifact, True

    def _build(self, artifact_id: str, spec: dict[str, Any], kind: str,
               build: Callable[[Path], dict[str, Any]], name: str) -> None:
        tmp = self.root / "tmp" / f"{artifact_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            self._build_in(tmp, artifact_id, spec, kind, build, name)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"no space left on the disk of the store '{self.root}' while writing {kind} "
                                 f"{artifact_id[:SHORT]}; nothing half-written was kept",
                                 "free some space (clt gc removes leftovers of killed runs), or point --artifacts "
                                 "at another disk, then run the command again") from None
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _build_in(self, tmp: Path, artifact_id: str, spec: dict[str, Any], kind: str,
                  build: Callable[[Path], dict[str, Any]], name: str) -> None:
        started = time.time()
        fields = build(tmp) or {}
        files = {}
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                rel = str(path.relative_to(tmp))
                files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        manifest = {
            "id": artifact_id,
            "kind": kind,
            "name": name,
            "created": time.time(),
            "inputs": spec.get("inputs", {}),
            "recipe": spec.get("recipe"),
            "spec": spec,
            "wall_time_s": round(time.time() - started, 3),
            "versions": library_versions(),
            **fields,
            "files": files,
        }
        raw = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        (tmp / MANIFEST).write_bytes(raw)
        (tmp / MANIFEST_SUM).write_text(hashlib.sha256(raw).hexdigest() + "\n")
        (tmp / MANIFEST_MAC).write_text(self._sign(raw) + "\n")
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        target = self.object_path(artifact_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, target)  # the one step that makes an artifact exist: atomic

    def _set_refs(self, artifact: Artifact, extra: tuple[str, ...]) -> None:
        names = ["latest", f"latest-{artifact.kind}", *extra]
        if artifact.name:
            names.append(f"{artifact.name}/{artifact.kind}")
        for ref in names:
            self.set_ref(ref, artifact.id)

    # ------------------------------------------------------------------ upkeep
    def verify(self, artifact_id: str) -> list[str]:
        """Problems with one artifact: an edited manifest, missing, truncated or altered files."""
        path = self.object_path(artifact_id)
        try:
            artifact = self.load(path, artifact_id)
        except StoreError as err:
            return [err.message]
        problems = []
        if artifact.manifest.get("id") != artifact_id:
            problems.append(f"{MANIFEST} names id {str(artifact.manifest.get('id'))[:SHORT]}, not its address")
        for name, expected in artifact.manifest.get("files", {}).items():
            problem = _check_file(path / name, expected)
            if problem:
                problems.append(f"{name} {problem}")
        listed = set(artifact.manifest.get("files", {})) | {MANIFEST, MANIFEST_SUM, MANIFEST_MAC}
        for extra in path.rglob("*"):
            if extra.is_file() and str(extra.relative_to(path)) not in listed:
                problems.append(f"{extra.relative_to(path)} is not listed in the manifest")
        return problems

    def gc(self, damaged: bool = False) -> list[str]:
        """Remove partial builds left by killed runs (and, with damaged=True, damaged artifacts)."""
        removed = []
        tmp_root = self.root / "tmp"
        if tmp_root.is_dir():
            for entry in tmp_root.iterdir():
                artifact_id = entry.name.split(".")[0]
                if entry.name.endswith(".work") and not self.exists(artifact_id):
                    continue  # checkpoints of an unfinished run: kept for --resume
                with self.lock(artifact_id, blocking=False) as free:
                    if free:  # nobody is building this address: the folder is an orphan
                        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
                        removed.append(str(entry.relative_to(self.root)))
        if damaged:
            for artifact_id in self.ids():
                if self.verify(artifact_id):
                    target = self.object_path(artifact_id)
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
                    removed.append(f"objects/{artifact_id[:2]}/{artifact_id[2:]}")
        return removed


def _sha256_matches(path: Path, raw: bytes | None = None) -> bool:
    try:
        raw = (path / MANIFEST).read_bytes() if raw is None else raw
        return (path / MANIFEST_SUM).read_text().strip() == hashlib.sha256(raw).hexdigest()
    except (OSError, UnicodeDecodeError):
        return False


def _parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    """The manifest as a mapping with the fields every reader relies on, or a StoreError naming it."""
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    well_formed = isinstance(manifest, dict) and isinstance(manifest.get("id"), str) and \
        isinstance(manifest.get("kind"), str) and isinstance(files, dict) and all(
            isinstance(f, dict) and isinstance(f.get("sha256"), str) and isinstance(f.get("bytes"), int)
            for f in files.values()) and isinstance(manifest.get("inputs", {}), dict)
    if not well_formed:
        raise StoreError(f"artifact at '{path}' is damaged: {MANIFEST} is not a clt manifest (a JSON object with "
                         "id, kind, inputs and files)", "delete it with `clt gc --damaged` and run its stage again")
    return manifest


def _valid_ref(name: str) -> bool:
    import re

    parts = name.split("/") if isinstance(name, str) else []
    return bool(parts) and len(name) <= 250 and all(
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", part) and part != ".." for part in parts)


def default_root() -> Path:
    return Path(os.environ.get("CLT_ARTIFACTS", "artifacts"))
