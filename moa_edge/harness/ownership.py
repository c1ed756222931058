"""Which files in a project folder moa-edge wrote. `convert` leaves a marker file listing every
file it wrote (size and SHA-256) and folder it made; verbs that later write into the folder
(--json, report, run --outputs) add theirs. A folder may be replaced only when every entry in
it is provably moa-edge's: anything else there is the user's and must survive."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import tempfile

MARKER = ".moa-edge-project.json"
# Written by `moa-edge build` or a plain `scons` in the project: the build tree as a whole.
BUILD_OUTPUTS = ("build", ".sconsign.dblite")


def _digest(path: Path) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def _entries(folder: Path):
    """Every entry under folder as (relative posix path, path), parents before children, sorted."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        for name in sorted(files) + [d for d in dirs if (base / d).is_symlink()]:
            yield (base / name).relative_to(folder).as_posix(), base / name
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]  # never walk into a link
        for d in dirs:
            yield (base / d).relative_to(folder).as_posix() + "/", base / d


def _load(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
            or not isinstance(manifest.get("folders"), list):
        return None
    return manifest


def ordinary_mode(bits: int) -> int:
    """The permission bits a plain open()/mkdir() would give (mkstemp and mkdtemp give 0o600/0o700)."""
    mask = os.umask(0)
    os.umask(mask)
    return bits & ~mask


def _save(folder: Path, manifest: dict) -> None:
    """Atomically: a reader never sees half a manifest."""
    fd, tmp = tempfile.mkstemp(prefix=MARKER + ".", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        os.chmod(tmp, ordinary_mode(0o666))
        os.replace(tmp, folder / MARKER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(folder: Path) -> None:
    """Record everything in folder (just written by convert) as moa-edge's."""
    folder = Path(folder)
    files, folders = {}, []
    for rel, path in _entries(folder):
        if rel.endswith("/"):
            folders.append(rel.rstrip("/"))
        elif rel != MARKER:
            files[rel] = _digest(path)
    _save(folder, {"written_by": "moa-edge convert; other moa-edge verbs add the files they write here",
                   "files": files, "folders": folders, "build_outputs": list(BUILD_OUTPUTS)})


def claim(path) -> None:
    """A moa-edge verb wrote `path`: if it sits directly in a project folder, list it there."""
    path = Path(path)
    folder = path.parent
    manifest = _load(folder)
    if manifest is None or not path.is_file() or path.is_symlink():
        return
    manifest["files"][path.name] = _digest(path)
    try:
        _save(folder, manifest)
    except OSError:  # unlisted, the file is taken for the user's: convert then refuses, the safe side
        pass


def changed_files(folder: Path, wanted) -> list[str]:
    """Files convert listed (of those `wanted(name)` picks) that are gone or differ now; none for
    a folder without a manifest. Only regular files inside the folder are read."""
    folder = Path(folder)
    manifest = _load(folder)
    changed = []
    for rel, record in sorted((manifest or {"files": {}})["files"].items()):
        if not wanted(rel) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            continue
        path = folder / rel
        if path.is_symlink() or not path.is_file() or _digest(path) != record:
            changed.append(rel)
    return changed


def is_project(folder: Path) -> bool:
    return _load(Path(folder)) is not None


def _ours(rel: str, path: Path, manifest: dict) -> bool:
    if path.is_symlink():
        return False
    if rel == MARKER or rel.split("/")[0].rstrip("/") in BUILD_OUTPUTS:
        return True
    if rel.endswith("/"):
        return rel.rstrip("/") in manifest["folders"]
    return rel in manifest["files"] and _digest(path) == manifest["files"][rel]


def foreign_entry(folder: Path) -> str | None:
    """The first entry of a project folder that moa-edge did not write, or changed since
    (None: all of it is moa-edge's). The folder must hold a readable marker."""
    folder = Path(folder)
    manifest = _load(folder)
    return next((rel for rel, path in _entries(folder) if not _ours(rel, path, manifest)), None)


def remove_owned(folder: Path) -> bool:
    """Delete every entry that is moa-edge's (found by walking the folder, never by trusting the
    manifest's paths), deepest first; True if the folder itself (or an empty one) is then gone."""
    folder = Path(folder)
    manifest = _load(folder)
    for rel, path in reversed(list(_entries(folder)) if manifest else []):
        if rel != MARKER and _ours(rel, path, manifest):
            if rel.endswith("/"):
                try:
                    path.rmdir()
                except OSError:  # not empty: something not ours is inside
                    pass
            else:
                path.unlink()
    (folder / MARKER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        return False
    return True
