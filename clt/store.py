"""Content-addressed artifact store.

Layout under the root (./artifacts, $CLT_ARTIFACTS or --artifacts):

    objects/ab/cdef…/   one finished artifact: manifest.json, manifest.sha256 and its files
    tmp/                artifacts being built; renamed into objects/ when complete
    refs/               small files naming artifacts: latest, latest-<kind>, <recipe>/<kind>, dataset/<name>
    locks/              one lock file per address, so two runs of one stage build it once
    downloads/          raw files fetched from dataset mirrors

An artifact's id is the sha256 of the canonical JSON of what determines it (stage, resolved
recipe, input ids, seed, clt version, and the fingerprint of the clt code the stage runs: see
clt/fingerprint.py); device and verbosity stay out of it. Finished
artifacts are never modified: a directory appears in objects/ by one atomic rename, and every
file's sha256 is checked when a stage reads it.
"""

from __future__ import annotations

import contextlib
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

from clt.bounded import KIB, MIB, read_regular
from clt.errors import STORE_ELSEWHERE, StoreError, did_you_mean, writing
from clt.fingerprint import stage_fingerprint
from clt.version import __version__

MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
MANIFEST_MAC = "manifest.hmac"
KEY_FILE = "store.key"
KEYED = "store.keyed"  # written with the key: its id, so that a replaced key is told from an edited manifest
# the most clt reads of each store file: a link to /dev/zero or a planted giant is refused, not read
KEY_LIMIT = 1 * KIB
MANIFEST_LIMIT = 16 * MIB
SMALL_LIMIT = 1 * KIB  # manifest.sha256, manifest.hmac, store.keyed and refs
ADOPT = ("`clt verify --adopt-key` signs, with the key in place (a new one if there is none), every artifact "
         "whose files still match their sha256")
MAX_REF_CHARS = 1000
ID_CHARS = 64
SHORT = 12


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def address(spec: dict[str, Any]) -> str:
    """The id of the artifact that `spec` (stage, recipe, inputs, seed) determines, with the
    fingerprint of the code that computes it: changed code never answers from an old result."""
    text = canonical_json({**spec, "clt_version": __version__})
    code = code_of(spec)
    # after a NUL, which canonical JSON never holds raw, so no spec of its own can spell the same text
    return hashlib.sha256((text + (f"\0{code}" if code else "")).encode()).hexdigest()


def code_of(spec: dict[str, Any]) -> str | None:
    """The fingerprint of the clt source behind `spec`'s stage (None for content-addressed data)."""
    return stage_fingerprint(str(spec.get("stage", spec.get("memo", ""))))


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
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:  # a write that failed (a full disk) leaves no half file beside the target
        tmp.unlink(missing_ok=True)


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


@dataclass(frozen=True)
class KeyState:
    """What this process can do with the store's key.

    ok: it reads, and it is the key that signed the store. unkeyed: no key and no trace of one (a new
    store, or one written before signatures): checked by sha256 only, and signed only when asked.
    unreadable: another user's key (a shared store): read-only for this user, checked by sha256 only.
    missing / replaced: the store was signed, but its key is gone or is another one: signatures cannot
    be checked, so its artifacts are neither read nor written, and never counted as damaged.
    """

    state: str
    message: str = ""
    hint: str = ""

    @property
    def checks_signatures(self) -> bool:
        return self.state == "ok"

    @property
    def readable(self) -> bool:
        return self.state in ("ok", "unkeyed", "unreadable")


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._key_state: KeyState | None = None
        self._cached_key: bytes | None = None
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
        """Before any write: the store's folders, and a key that is its own (a new store gets one)."""
        for sub in ("objects", "tmp", "refs", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self.key_state().state == "unkeyed" and not self.ids():
            self._create_key()
        state = self.key_state()
        if not state.checks_signatures:  # never re-sign by itself: that would bless edits made meanwhile
            raise StoreError(state.message, state.hint)
        if not os.path.lexists(self.root / KEYED):  # keyed by a clt from before store.keyed
            write_atomic(self.root / KEYED, _key_id(self._cached_key or b"") + "\n")

    # ------------------------------------------------------------------ the key
    def key_state(self) -> KeyState:
        """What this process can do with the store's key (probed once per Store object)."""
        if self._key_state is None:
            self._key_state = self._probe_key()
        return self._key_state

    def check_readable(self) -> KeyState:
        """The key state, or the StoreError saying why this store's artifacts cannot be read."""
        state = self.key_state()
        if not state.readable:
            raise StoreError(state.message, state.hint)
        return state

    def _probe_key(self) -> KeyState:
        path = self.root / KEY_FILE
        try:
            key = self._read_key(path)
        except FileNotFoundError:
            if not self._was_signed():
                return KeyState("unkeyed", f"the store '{self.root}' has artifacts but no {KEY_FILE}: a clt from "
                                "before signatures wrote it, or its key and signatures were deleted, and clt does "
                                "not sign what it cannot check unless asked",
                                f"check it with `clt verify`, then {ADOPT}")
            return KeyState("missing", f"{path} is missing, but the store's artifacts were signed with it",
                            f"restore {KEY_FILE} from a backup, or {ADOPT}")
        except PermissionError:
            return KeyState("unreadable", f"store key unreadable: {path} cannot be read by this user, so the store "
                            "is read-only for you, checked by sha256 only",
                            "run as the store's owner to write to it, or pass --artifacts with a store of your own")
        marker = self._read_marker()
        if not (marker == _key_id(key) if marker is not None else self._made_a_signature(key)):
            return KeyState("replaced", f"{path} is not the key that signed this store (it was replaced, or copied "
                            "from another store)", f"put the store's own {KEY_FILE} back, or {ADOPT}")
        self._cached_key = key
        return KeyState("ok")

    def _read_key(self, path: Path) -> bytes:
        try:
            key = bytes.fromhex(read_regular(path, KEY_LIMIT, "the store's key").decode("ascii").strip())
        except (FileNotFoundError, PermissionError):
            raise
        except ValueError:  # not hex, or not ASCII
            key = b""
        except OSError as err:
            raise StoreError(f"the store's key {path} cannot be read ({err})", "check its permissions") from None
        if len(key) != 32:
            raise StoreError(f"the store's key {path} is not a clt key (not 32 bytes in hex)",
                             f"a key that was edited cannot be repaired: restore it from a backup, or delete it "
                             f"and {ADOPT}")
        return key

    def _read_marker(self) -> str | None:
        try:
            return read_regular(self.root / KEYED, SMALL_LIMIT, "the store's key id").decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except OSError:
            return ""  # unreadable: matches no key

    def _was_signed(self) -> bool:
        """Any trace of a key: store.keyed, or a signed manifest (a store keyed before store.keyed)."""
        return os.path.lexists(self.root / KEYED) or any(
            os.path.lexists(self.object_path(i) / MANIFEST_MAC) for i in self.ids())

    def _made_a_signature(self, key: bytes) -> bool:
        """For a store keyed before store.keyed: a key is its own if it made one of its signatures
        (or there are none to contradict it)."""
        import hmac

        signed = False
        for artifact_id in self.ids():
            path = self.object_path(artifact_id)
            try:
                signature = read_regular(path / MANIFEST_MAC, SMALL_LIMIT, "the store file").strip()
                raw = read_regular(path / MANIFEST, MANIFEST_LIMIT, "the store file")
            except (OSError, StoreError):
                continue
            signed = True
            if hmac.compare_digest(signature, _mac(key, raw).encode()):
                return True
        return not signed

    def _create_key(self) -> None:
        """A random key (mode 0600) for a store with no artifacts yet. Under a lock: two first writes
        make one key; the loser finds the winner's."""
        with open(self.root / "locks" / f"{KEY_FILE}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._key_state = None
            if self.key_state().state == "unkeyed" and not self.ids():
                self._publish_key(os.urandom(32))
            self._key_state = None

    def _publish_key(self, key: bytes) -> None:
        """store.key, written whole or not at all, then its id in store.keyed."""
        partial = self.root / f".{KEY_FILE}.{uuid.uuid4().hex[:8]}"
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(key.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, self.root / KEY_FILE)
        write_atomic(self.root / KEYED, _key_id(key) + "\n")

    def adopt_key(self) -> tuple[list[str], list[str]]:
        """Make the key in place (a new one where there is none) this store's key, on purpose: every
        artifact whose files match their sha256 is signed with it, the others are left as damage.
        Returns (signed ids, skipped ids). Edits made while the key was gone cannot be told apart."""
        for sub in ("objects", "tmp", "refs", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        with open(self.root / "locks" / f"{KEY_FILE}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._key_state = None
            state = self.key_state()
            if state.state in ("ok", "unreadable"):
                raise StoreError(state.message or f"{self.root / KEY_FILE} is the key that signed this store: "
                                 "nothing to adopt", state.hint or "`clt verify` checks the store")
            key = self._read_key(self.root / KEY_FILE) if state.state == "replaced" else os.urandom(32)
            signed, skipped = [], []
            for artifact_id in sorted(self.ids()):
                path = self.object_path(artifact_id)
                if self.verify(artifact_id):  # sha256 only, in this state: content damage is not signed
                    skipped.append(artifact_id)
                    continue
                raw = read_regular(path / MANIFEST, MANIFEST_LIMIT, "the store file")
                write_atomic(path / MANIFEST_MAC, _mac(key, raw) + "\n")
                signed.append(artifact_id)
            self._publish_key(key)  # last: a run cut short leaves the store refusing, and is run again
            self._key_state = None
        return signed, skipped

    def _key(self) -> bytes | None:
        """The store's secret for signatures, when this process can use it."""
        return self._cached_key if self.key_state().checks_signatures else None

    def _sign(self, raw: bytes) -> str:
        key = self._key()
        if key is None:
            state = self.key_state()
            raise StoreError(state.message or f"the store '{self.root}' has no readable {KEY_FILE}",
                             state.hint or "check the folder's permissions")
        return _mac(key, raw)

    def sign(self, raw: bytes) -> str:
        """The signature of `raw` with the store's key, for files kept outside objects/ (checkpoints)."""
        return self._sign(raw)

    # ------------------------------------------------------------------ reading
    def exists(self, artifact_id: str) -> bool:
        # lexists: a manifest replaced by a link or a device is there, and refused by name on read
        return os.path.lexists(self.object_path(artifact_id) / MANIFEST)

    def get(self, artifact_id: str) -> Artifact:
        return self.load(self.object_path(artifact_id), artifact_id)

    def load(self, path: Path, artifact_id: str | None = None, *, signed: bool = True) -> Artifact:
        """The artifact in folder `path`, checked: manifest sha256, signature (unless signed=False,
        for `verify` where the key cannot be used) and that the manifest names its own address."""
        try:
            raw = read_regular(path / MANIFEST, MANIFEST_LIMIT, "the store file")
        except OSError:
            raise StoreError(f"'{path}' is not an artifact: it has no {MANIFEST}",
                             "pass an artifact id, a ref (clt ls) or an artifact directory") from None
        if not _sha256_matches(path, raw):
            raise StoreError(f"artifact at '{path}' is damaged: {MANIFEST} was edited or its checksum is missing",
                             "delete it with `clt gc --damaged` and run the stage that made it again")
        if signed:
            self._check_signature(path, raw)
        manifest = _parse_manifest(raw, path)
        expected = artifact_id or self._address_at(path)
        if expected is not None and manifest["id"] != expected:  # e.g. a signed folder copied over another
            raise StoreError(f"artifact at '{path}' is damaged: {MANIFEST} names id {manifest['id'][:SHORT]}, not "
                             f"its address {expected[:SHORT]}",
                             "delete it with `clt gc --damaged` and run the stage that made it again")
        return Artifact(manifest["id"], path, manifest)

    def _address_at(self, path: Path) -> str | None:
        """The id that a folder's place under objects/ gives it (None for a folder elsewhere)."""
        for base, where in ((self.objects.absolute(), path.absolute()), (self.objects.resolve(), path.resolve())):
            with contextlib.suppress(ValueError):
                parts = where.relative_to(base).parts
                return parts[0] + parts[1] if len(parts) == 2 else None
        return None

    def _check_signature(self, path: Path, raw: bytes) -> None:
        """A store with a key signs every manifest it writes: one edited or made outside clt is refused."""
        import hmac

        state = self.key_state()
        if not state.checks_signatures:
            if state.readable:
                return  # no key ever, or another user's: checked by sha256 only
            raise StoreError(f"artifact at '{path}' cannot be checked: {state.message}", state.hint)
        key = self._cached_key or b""
        try:
            signature = read_regular(path / MANIFEST_MAC, SMALL_LIMIT, "the store file").strip()
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
        with writing(self.root, STORE_ELSEWHERE):
            write_atomic(self.ref_path(name), artifact_id + "\n")

    def read_ref(self, name: str) -> str | None:
        if not _valid_ref(name):
            return None
        return _read_ref_file(self.ref_path(name))

    def refs(self) -> dict[str, str]:
        base = self.root / "refs"
        if not base.is_dir():
            return {}
        found = {str(p.relative_to(base)): _read_ref_file(p) for p in sorted(base.rglob("*"))
                 if not p.is_dir() and not p.name.startswith(".")}
        return {name: target for name, target in found.items() if target is not None}

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
        with writing(self.root, STORE_ELSEWHERE):  # the first write of every writing stage
            self._ensure()
            held = open(self.root / "locks" / f"{artifact_id}.lock", "a+")
        with held as fh:
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
        try:
            # a full or read-only disk, objects/ on another file system than tmp/: a WriteError
            with writing(self.root, STORE_ELSEWHERE):
                tmp.mkdir(parents=True)
                self._build_in(tmp, artifact_id, spec, kind, build, name)
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
            "code": code_of(spec),
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
    def is_stale(self, artifact: Artifact) -> bool:
        """Made by other clt code than this one's (or by a clt from before code fingerprints): its id
        is no longer the address its spec gets, so no stage will use it again."""
        spec = artifact.manifest.get("spec")
        return isinstance(spec, dict) and artifact.manifest.get("code") != code_of(spec)

    def gc_stale(self) -> list[str]:
        """Remove the artifacts other code made (never implicit: `clt gc --stale`), and refs to them."""
        gone = set()
        for artifact in self.all():
            if self.is_stale(artifact):
                with self.lock(artifact.id):
                    shutil.rmtree(artifact.path, ignore_errors=True)
                gone.add(artifact.id)
        for name, artifact_id in self.refs().items():
            if artifact_id in gone:
                self.ref_path(name).unlink(missing_ok=True)
        return [f"objects/{artifact_id[:2]}/{artifact_id[2:]}" for artifact_id in sorted(gone)]

    def verify(self, artifact_id: str) -> list[str]:
        """Problems with one artifact: an edited manifest, missing, truncated or altered files."""
        path = self.object_path(artifact_id)
        try:  # a key that cannot be used is not damage: then the content is checked by sha256 alone
            artifact = self.load(path, artifact_id, signed=self.key_state().checks_signatures)
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
            self.key_state()  # a key that is not a key at all stops here, before anything is removed
            for artifact_id in self.ids():
                if self.verify(artifact_id):
                    target = self.object_path(artifact_id)
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
                    removed.append(f"objects/{artifact_id[:2]}/{artifact_id[2:]}")
        return removed


def _sha256_matches(path: Path, raw: bytes | None = None) -> bool:
    try:
        raw = read_regular(path / MANIFEST, MANIFEST_LIMIT, "the store file") if raw is None else raw
        written = read_regular(path / MANIFEST_SUM, SMALL_LIMIT, "the store file")
        return written.decode("ascii").strip() == hashlib.sha256(raw).hexdigest()
    except (OSError, UnicodeDecodeError):
        return False


def _read_ref_file(path: Path) -> str | None:
    """A ref's target; None where there is none (or a folder of refs such as 'dataset')."""
    try:
        return read_regular(path, SMALL_LIMIT, "the ref").decode("utf-8", "replace").strip()
    except OSError:
        return None


def _mac(key: bytes, raw: bytes) -> str:
    import hmac

    return hmac.new(key, raw, hashlib.sha256).hexdigest()


def _key_id(key: bytes) -> str:
    """What store.keyed records: names the key without revealing it (a hash of 32 random bytes)."""
    return hashlib.sha256(b"clt store key id\n" + key).hexdigest()


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
