"""The batch's inputs (folders, globs, unique output names) and its resume rule (``done.json``)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..io import check_outputs
from ..pipeline import input_stem, planned_outputs
from .records import _GLOB_CHARS, BATCH_EXTENSIONS, DONE_NAME, SUMMARY_CSV, SUMMARY_JSON


def _is_input(p: Path) -> bool:
    return p.suffix.lower() in BATCH_EXTENSIONS and not p.name.startswith(".")


def _scan(folder: Path, exclude: Sequence[Path]) -> list[Path]:
    """Files with :data:`BATCH_EXTENSIONS` under ``folder`` (recursive, sorted); ``.zspy``
    folders count as files, hidden entries and ``exclude`` folders are skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rp = Path(root)
        keep = []
        for d in sorted(dirs):
            dp = rp / d
            if d.startswith(".") or any(_inside(dp, e) for e in exclude):
                continue
            if _is_input(dp):
                found.append(dp)  # a .zspy dataset folder
            else:
                keep.append(d)
        dirs[:] = keep
        found.extend(rp / f for f in sorted(files) if _is_input(rp / f))
    return sorted(found)


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def expand_inputs(inputs: Iterable[str | os.PathLike], *, exclude: Sequence[str | os.PathLike] = ()
                  ) -> tuple[list[Path], list[str]]:
    """Turn the command line's INPUTS into a list of files.

    Parameters
    ----------
    inputs : iterable of str or Path
        Files (any extension; ``.zspy`` folders count as files), directories
        (scanned recursively for ``.dm3/.dm4/.hspy/.zspy/.emd``) or glob patterns
        (``data/*.dm4``, ``runs/**/*.hspy``).
    exclude : sequence of paths
        Folders never scanned (the batch's output folder).

    Returns
    -------
    files : list of Path
        Absolute paths, duplicates removed, in the order given (directories and
        globs sorted).
    missing : list of str
        Inputs naming nothing that exists (globs that matched nothing included).
    """
    excl = [Path(e).expanduser() for e in exclude]
    files: list[Path] = []
    missing: list[str] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        p = Path(os.path.abspath(p))
        key = os.path.normcase(str(p.resolve()))
        if key not in seen:
            seen.add(key)
            files.append(p)

    for item in inputs:
        s = os.fspath(item)
        p = Path(s).expanduser()
        if p.exists():
            matches = [p]
        elif _GLOB_CHARS.search(s):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(s), recursive=True))]
            matches = [m for m in matches if m.is_file() or _is_input(m)
                       or (m.is_dir() and not m.name.startswith("."))]
        else:
            matches = []
        if not matches:
            missing.append(s)
            continue
        for m in matches:
            if m.is_dir() and m.suffix.lower() != ".zspy":
                for f in _scan(m, excl):
                    add(f)
            elif not any(_inside(m, e) for e in excl) or p.exists():
                add(m)
    return files, missing


def _clean_name(s: str) -> str:
    s = re.sub(r"[\\/:\x00-\x1f]", "_", s).strip() or "input"
    if s.startswith("."):
        s = "_" + s[1:]
    if s.lower() in (SUMMARY_JSON, SUMMARY_CSV):
        s += "_file"
    return s


def folder_names(paths: Sequence[Path]) -> list[str]:
    """A unique (case-insensitively) output folder name per input path.

    The stem (``data/a/x.dm4`` -> ``x``); where stems collide, the parent
    folder's name is put in front (``a_x``), then the extension is kept
    (``a_x_dm4``), and last a hash of the path is appended (``x-1a2b3c4d``).

    Parameters
    ----------
    paths : sequence of Path
        The input files.

    Returns
    -------
    list of str
        One folder name per path, in the same order (path separators, control
        characters and a leading ``.`` replaced by ``_``).
    """
    def level(p: Path, k: int) -> str:
        stem = input_stem(p)
        if k == 0:
            return stem
        if k == 1:
            return f"{p.parent.name}_{stem}"
        if k == 2:
            return f"{p.parent.name}_{stem}_{p.suffix.lstrip('.').lower()}"
        digest = hashlib.sha1(os.path.normcase(str(p)).encode()).hexdigest()[:8]
        return f"{stem}-{digest}"

    levels = [0] * len(paths)
    while True:
        names = [_clean_name(level(p, k)) for p, k in zip(paths, levels)]
        low = [n.lower() for n in names]
        clash = [i for i, n in enumerate(low) if low.count(n) > 1 and levels[i] < 3]
        if not clash:
            return names
        for i in clash:
            levels[i] += 1


def _fingerprint(p: Path) -> dict[str, Any]:
    """Size and modification time of a file (or of the newest file in a ``.zspy`` folder)."""
    if p.is_dir():
        size, mtime = 0, p.stat().st_mtime_ns
        for root, _dirs, files in os.walk(p):
            for f in files:
                st = os.stat(os.path.join(root, f))
                size += st.st_size
                mtime = max(mtime, st.st_mtime_ns)
        return {"size": size, "mtime_ns": mtime}
    st = p.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex).

    Parameters
    ----------
    path : str or Path
        The file (read in 1 MiB blocks).

    Returns
    -------
    str
        The 64-character hexadecimal digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_done(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DONE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _complete(folder: Path, path: Path, model_sha256: str, settings: dict[str, Any]
              ) -> dict[str, Any] | None:
    """The ``done.json`` of ``folder`` when it records this input, model and settings and its
    outputs all exist; else None."""
    done = _read_done(folder)
    if not done or done.get("status") != "done":
        return None
    try:
        fp = _fingerprint(path)
    except OSError:
        return None
    if (done.get("input") != str(path) or done.get("size") != fp["size"]
            or done.get("mtime_ns") != fp["mtime_ns"] or done.get("model_sha256") != model_sha256
            or done.get("settings") != settings):
        return None
    if not all(Path(v).exists() for v in (done.get("outputs") or {}).values()):
        return None
    return done


def _check_batch_outputs(out: Path, files: Sequence[Path], names: Sequence[str], model: str,
                         method: str, formats: str | None, *, overwrite: bool, force: bool,
                         sha: str, settings: dict[str, Any]) -> None:
    """:func:`eelsanom.io.check_outputs` on everything the batch will write (the summaries,
    each input's folder and maps), before any cluster starts: no output is an input, every
    folder is writable, and no file eelsanom did not write is replaced without ``overwrite``."""
    inputs = [*map(str, files), model]
    paths: list[Path] = [out / SUMMARY_JSON, out / SUMMARY_CSV]
    for path, name in zip(files, names):
        folder = out / name
        if not force and _complete(folder, path, sha, settings) is not None:
            continue  # skipped: nothing is written there
        paths += [folder / DONE_NAME,
                  *planned_outputs(folder, name, method, formats=formats)]
    check_outputs(paths, inputs, overwrite=overwrite, what="--out")
