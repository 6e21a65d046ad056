"""How eelsanom writes a file: the one atomic write, the output rule and the run marker.

Every output of eelsanom (maps, summaries, models, checkpoints, simulated files,
benchmark tables, reports) is written under a hidden temporary name in its
destination folder and renamed into place by :func:`atomic_write` (or its
byte-string form :func:`atomic_write_bytes`), so an interrupted run never leaves
a half-written file under a final name; an operating-system failure (a full
disk, a read-only folder) becomes a :class:`WriteFailed` that names the path
and the fix.

:func:`check_outputs` is the one rule every run applies to its output paths
before it reads any data, and :data:`RUN_MARKER` is the file in each output
folder recording what eelsanom wrote there (:func:`record_outputs`,
:func:`is_own_output`), so a later run replaces its own outputs and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError

__all__ = ["RUN_MARKER", "WriteFailed", "atomic_write", "atomic_write_bytes", "check_outputs",
           "check_run_outputs", "record_outputs", "is_own_output"]


def _tmp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name in ``path``'s folder that keeps the extension (writers pick by it)."""
    return path.with_name(f".{path.stem}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _commit(tmp: Path, path: Path, *, record: bool = True) -> None:
    """Move the complete ``tmp`` onto ``path``; an old directory is removed only afterwards.
    With ``record``, ``path`` is recorded in its folder's run marker."""
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        old = _tmp_sibling(path, "old")
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        if tmp.is_dir() and (path.exists() or path.is_symlink()):
            path.unlink()
        os.replace(tmp, path)
    if record:
        _own(path)


def _own(path: Path) -> None:
    """Record ``path`` in its folder's run marker as soon as it is written.

    Each output is recorded the moment it lands under its final name, not when the
    run ends, so a run interrupted half-way (a killed batch worker, Ctrl-C) leaves
    outputs that the next run recognises as its own and may replace.
    """
    if Path(path).name != RUN_MARKER:
        record_outputs([path])


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_output(path: Path, *, overwrite: bool, protect: Iterable[Any]) -> Path:
    path = Path(path).expanduser()
    for p in protect or ():
        if p is not None and _same_path(path, Path(p).expanduser()):
            raise InputError(
                f"refusing to write {path}: expected an output path different from the input, "
                f"found the input file {p}. Choose another output folder or name.")
    if path.exists() and not overwrite:
        raise InputError(
            f"{path} already exists; expected a new output path. Allow overwriting "
            "(overwrite=True, CLI --overwrite) or choose another name.")
    if path.is_dir() and not path.is_symlink() and path.suffix.lower() != ".zspy":
        raise InputError(f"cannot write {path}: it is an existing directory, expected a file "
                         "path. Choose another name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *,
                 record: bool = False) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes a hidden sibling, which is then renamed.

    The one atomic write of eelsanom. ``write`` receives a temporary path in the
    destination folder with ``path``'s extension (writers that choose the format by
    the extension keep working); once it returns, the temporary file (or ``.zspy``
    folder) replaces ``path`` (an existing folder is removed only after the new one is
    in place). Nothing is left behind when writing fails, and an operating-system
    failure is raised as :class:`WriteFailed`. Missing parent folders are created.

    Parameters
    ----------
    path : str or Path
        Final path of the file (or ``.zspy`` folder).
    write : callable
        ``write(tmp: Path)``: writes the complete content to ``tmp``.
    record : bool
        Also record ``path`` in its folder's :data:`RUN_MARKER` (the outputs of a run,
        which a later run may replace).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    WriteFailed
        When the machine refuses the write (no space, no permission, a read-only disk).
    """
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with _writing(path):
            write(tmp)
            _commit(tmp, path, record=record)
    except BaseException:
        _remove(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, payload: bytes, *, record: bool = True
                       ) -> Path:
    """Write ``payload`` to ``path`` atomically and durably (flushed to disk before the rename).

    Parameters
    ----------
    path : str or Path
        Output file.
    payload : bytes
        The complete content.
    record : bool
        Record ``path`` in its folder's :data:`RUN_MARKER` (default).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    WriteFailed
        When the machine refuses the write.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write, record=record)


# --------------------------------------------------------------------------- output safety
#: marker file an eelsanom run leaves in each folder it writes into: the names (with size and
#: modification time) of the outputs it wrote, so a later run can tell its own earlier outputs
#: (which it may replace) from the user's files (which it never replaces without --overwrite)
RUN_MARKER = ".eelsanom-run.json"
_MARKER_MAX_BYTES = 1 << 20


def _real(p: Any) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(p)))))


def _same_or_inside(out: str, inp: str) -> bool:
    """``out`` is ``inp``, or lies inside ``inp`` (a ``.zspy`` folder), or holds it."""
    return out == inp or out.startswith(inp + os.sep) or inp.startswith(out + os.sep)


#: a ``.zspy`` folder holding more entries than this is never recognised as an output (its
#: stamp would take too long to compute)
_MAX_DIR_ENTRIES = 200_000


def _dir_stamp(p: Path) -> dict[str, Any]:
    """What a ``.zspy`` output folder holds: its entries' names, sizes and modification times,
    hashed, so that any file added, removed or changed inside it since it was written shows."""
    h = hashlib.sha256()
    n = total = 0
    for root, dirs, names in os.walk(p):
        dirs.sort()
        for name in sorted(names + [d + os.sep for d in dirs]):
            q = os.path.join(root, name.rstrip(os.sep))
            st = os.lstat(q)
            rel = os.path.relpath(q, p)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
            n += 1
            total += int(st.st_size) if not name.endswith(os.sep) else 0
            if n > _MAX_DIR_ENTRIES:
                return {"dir": True, "entries": -1}
    return {"dir": True, "entries": n, "size": total, "sha256": h.hexdigest()}


def _stamp(p: Path) -> dict[str, Any]:
    if p.is_dir():
        return _dir_stamp(p)
    st = p.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _read_marker(folder: Path) -> dict[str, Any]:
    m = folder / RUN_MARKER
    try:
        if m.is_symlink() or not m.is_file() or m.stat().st_size > _MARKER_MAX_BYTES:
            return {}
        d = json.loads(m.read_text(encoding="utf-8"))
        out = d.get("outputs") if isinstance(d, dict) else None
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _is_own_model(p: Path) -> bool:
    """An eelsanom model file (HDF5 whose ``format`` attribute says so)."""
    try:
        import h5py

        with h5py.File(p, "r") as f:
            return f.attrs.get("format") == "eelsanom-model"
    except Exception:  # noqa: BLE001 - not HDF5, unreadable: not ours
        return False


def is_own_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an output an earlier eelsanom run wrote and nobody changed since.

    Parameters
    ----------
    path : str or Path
        An existing file or ``.zspy`` folder.

    Returns
    -------
    bool
        True when the folder's :data:`RUN_MARKER` lists the name with the file's
        current size and modification time (for a ``.zspy`` folder: the names, sizes and
        times of everything inside it, so a file the user added there counts as a
        change), or the file is an eelsanom model file.
    """
    p = Path(path).expanduser()
    if p.is_symlink() or not p.exists():
        return False
    rec = _read_marker(p.parent).get(p.name)
    if isinstance(rec, dict):
        try:
            if rec.get("entries") != -1 and rec == _stamp(p):
                return True
        except OSError:
            return False
    return p.is_file() and p.suffix.lower() in (".h5", ".hdf5") and _is_own_model(p)


def _nearest_existing(folder: Path) -> Path:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_folder(folder: Path, what: str) -> None:
    """Refuse a folder that is a file, or lies under a file, or cannot be written into, or
    whose run marker is not a plain file (a folder or a link there would be met only after
    the work, or followed to a record that is not this folder's)."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise InputError(
            f"{what}: cannot write into {folder}: {base} is an existing file, expected a folder. "
            "Choose another output folder (--out) or move that file away.")
    marker = folder / RUN_MARKER
    if marker.is_symlink() or (marker.exists() and not marker.is_file()):
        kind = "a symbolic link" if marker.is_symlink() else "a folder"
        raise InputError(
            f"{what}: {marker} is {kind}; expected eelsanom's run marker there to be a plain "
            "file (or absent). Remove or rename it, or choose another output folder (--out).")
    try:
        fd, probe = tempfile.mkstemp(prefix=".eelsanom-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"{what}: cannot write into {base} ({exc.strerror or exc}); expected a writable "
            "folder. Choose a folder you can write (--out), or fix its permissions.") from exc


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[Any] = (), *,
                  overwrite: bool = False, what: str = "output") -> list[Path]:
    """The one rule for every output path of a run, checked before any data is read.

    1. No output may be, lie inside or hold any input of the run (data, mask and
       model files), however spelled: symlinks, ``..`` and hard links are resolved.
    2. Its folder must be a folder (not an existing file) that can be written into.
    3. An existing file is replaced only when an earlier eelsanom run wrote it (the
       folder's :data:`RUN_MARKER` lists it unchanged, or it is an eelsanom model file),
       or with ``overwrite``; an existing folder is never replaced by a file.

    Parameters
    ----------
    outputs : iterable of str or Path
        Every path the run will write.
    inputs : iterable of str or Path or None
        Every file the run reads (``None`` entries are ignored).
    overwrite : bool
        Also replace existing files that eelsanom did not write (CLI ``--overwrite``).
    what : str
        The option that chose the outputs, for the messages (``--out``, ``--model-out``).

    Returns
    -------
    list of Path
        The output paths, absolute.

    Raises
    ------
    InputError
        Naming the path and the fix, when any rule is broken.
    """
    ins = [(i, _real(i)) for i in inputs if i is not None]
    outs = [Path(os.path.abspath(os.path.expanduser(os.fspath(o)))) for o in outputs]
    probed: set[Path] = set()
    for p in outs:
        rp = _real(p)
        for i, ri in ins:
            same = _same_or_inside(rp, ri)
            if not same and p.exists() and Path(i).exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(p, i)
            if same:
                raise InputError(
                    f"{what}: refusing to write {p}: it is (or resolves to) the input {i}, and "
                    "inputs are never modified. Expected an output path that is none of the "
                    "run's inputs; choose another output folder or name.")
        if p.parent not in probed:
            _probe_folder(p.parent, what)
            probed.add(p.parent)
        if p.exists() or p.is_symlink():
            if p.is_dir() and not p.is_symlink() and p.suffix.lower() != ".zspy":
                raise InputError(f"{what}: cannot write {p}: it is an existing folder, expected "
                                 "a file name. Choose another output folder or name.")
            if not overwrite and not is_own_output(p):
                raise InputError(
                    f"{what}: {p} already exists and is not an output that an earlier eelsanom "
                    "run left there (its maps, summaries and models are replaced; other files "
                    "never silently); expected a new output path. Choose another output folder "
                    "or name, or pass --overwrite to replace it.")
    return outs


def check_run_outputs(groups: Mapping[str, Iterable[str | os.PathLike]],
                      inputs: Iterable[Any] = (), *, overwrite: bool = False) -> list[Path]:
    """:func:`check_outputs` for every output of a run at once, compared with each other too.

    ``groups`` maps the option that chose some outputs (``--out``, ``--model-out``) to its
    paths. Besides the rules of :func:`check_outputs` (applied to each group), no output may
    be, lie inside or hold another output of the same run: ``--model-out`` equal to one of
    the maps, or to the ``--out`` folder itself, would replace one result by another.

    Parameters
    ----------
    groups : mapping of str to iterable of path
        The option (for the messages) and the paths it makes the run write.
    inputs : iterable of path
        Every file the run reads.
    overwrite : bool
        As :func:`check_outputs`.

    Returns
    -------
    list of Path
        Every output path, absolute, in order.

    Raises
    ------
    InputError
        Naming both paths and the fix when two outputs collide; else as
        :func:`check_outputs`.
    """
    seen: dict[str, tuple[Path, str]] = {}  # real path -> (output, option)
    holders: dict[str, tuple[Path, str]] = {}  # every folder above an output -> that output
    for what, paths in groups.items():
        for o in paths:
            p = Path(os.path.abspath(os.path.expanduser(os.fspath(o))))
            rp = _real(p)
            clash = seen.get(rp) or holders.get(rp)
            up = os.path.dirname(rp)
            while clash is None and up != os.path.dirname(up):
                clash, up = seen.get(up), os.path.dirname(up)
            if clash is not None and clash != (p, what):
                qp, qwhat = clash
                raise InputError(
                    f"{what}: refusing to write {p}: it is, holds or lies inside {qp}, which "
                    f"{qwhat} also writes in this run; expected every output of a run to be a "
                    f"path of its own. Choose another {what} (a name outside the --out folder "
                    "and different from its maps).")
            seen[rp] = (p, what)
            up = os.path.dirname(rp)
            while up != os.path.dirname(up):
                holders.setdefault(up, (p, what))
                up = os.path.dirname(up)
    out: list[Path] = []
    for what, paths in groups.items():
        out += check_outputs(paths, inputs, overwrite=overwrite, what=what)
    return out


def record_outputs(paths: Iterable[str | os.PathLike]) -> None:
    """Add ``paths`` (just written by this run) to their folders' :data:`RUN_MARKER`.

    Parameters
    ----------
    paths : iterable of str or Path
        Files or ``.zspy`` folders this run wrote; missing ones are skipped.
    """
    by_folder: dict[Path, dict[str, Any]] = {}
    for q in paths:
        p = Path(os.path.abspath(os.path.expanduser(os.fspath(q))))
        if p.exists() and not p.is_symlink():
            by_folder.setdefault(p.parent, {})[p.name] = _stamp(p)
    for folder, new in by_folder.items():
        rec = _read_marker(folder)
        rec.update(new)
        text = json.dumps({"written_by": "eelsanom", "eelsanom_version": __version__,
                           "note": "outputs of eelsanom runs in this folder; eelsanom replaces "
                                   "only these (unchanged) without --overwrite",
                           "outputs": rec}, indent=1) + "\n"
        atomic_write_bytes(folder / RUN_MARKER, text.encode("utf-8"), record=False)


_WRITE_FIX = {
    errno.ENOSPC: "free some disk space or choose an output folder on another disk (--out)",
    errno.EDQUOT: "free some of your quota or choose another output folder (--out)",
    errno.EACCES: "choose a folder you can write (--out) or fix its permissions",
    errno.EPERM: "choose a folder you can write (--out) or fix its permissions",
    errno.EROFS: "the disk is read-only: choose an output folder on a writable disk (--out)",
    errno.EFBIG: "the file is larger than the disk or your file-size limit allows: choose an "
                 "output folder on another disk (--out) or raise the limit (ulimit -f)",
}


class WriteFailed(InputError, OSError):
    """Writing an output failed for a reason of the machine (a full disk, no permission):
    an :class:`~eelsanom.errors.InputError` (the CLI exits 2 naming the path and the fix)
    that is also an ``OSError``, so callers catching the operating-system error still do."""


def _quiet_hdf5_dealloc() -> None:
    """Install (once) a filter of ``sys.unraisablehook`` that drops h5py's "Exception ignored
    in ObjectID.__dealloc__ ... file write failed" tracebacks: after a disk fills inside an
    HDF5 write, every handle of the failed file prints one as it is freed; the failure itself
    is reported once, as a :class:`WriteFailed`."""
    prev = sys.unraisablehook
    if getattr(prev, "_eelsanom", False):
        return

    def hook(u: Any) -> None:
        text = f"{getattr(u, 'exc_value', '')} {getattr(u, 'object', '')}"
        if "write failed" in text and "h5py" in repr(getattr(u, "object", "")) + text:
            return
        prev(u)

    hook._eelsanom = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    prev_except = sys.excepthook  # Cython prints the same error through it first

    def excepthook(kind: Any, value: Any, tb: Any) -> None:
        frames, t = [], tb
        while t is not None:
            frames.append(t.tb_frame.f_code.co_filename)
            t = t.tb_next
        if "write failed" in str(value) and any("h5py" in f for f in frames):
            return
        prev_except(kind, value, tb)

    sys.excepthook = excepthook


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an operating-system failure while writing ``path`` into an InputError that names
    the path and the fix (a full disk, a read-only folder, ...)."""
    _quiet_hdf5_dealloc()
    try:
        yield
    except InputError:
        raise
    except (OSError, RuntimeError) as exc:
        code = _errno_of(exc)
        if not isinstance(exc, OSError) and code is None:
            raise  # a RuntimeError that is not the machine's: not a write failure
        fix = _WRITE_FIX.get(code or 0, "check the output folder (space, permissions)")
        why = os.strerror(code) if code else " ".join(str(exc).split())[:200]
        failed = WriteFailed(
            f"could not write {path}: {why}; expected a writable folder with free "
            f"space. {fix[0].upper() + fix[1:]}. Nothing partial was left under that name.")
        # HDF5 reports a failed write in its message (``errno = N``) and keeps the file open
        # inside the library, which crashes the interpreter when it flushes it at exit: the
        # command line then ends without that flush (see eelsanom.cli.main)
        failed.hdf5_left_open = not (isinstance(exc, OSError) and exc.errno) and code is not None
        raise failed from exc


def _errno_of(exc: BaseException) -> int | None:
    """The operating-system error number behind ``exc``: its ``errno``, or the ``errno = N``
    that HDF5 writes into its messages (a disk that fills inside an HDF5 write reaches
    Python as ``RuntimeError: ... file write failed: ..., errno = 28, ...``)."""
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    m = re.search(r"errno\s*=\s*(\d+)", str(exc))
    return int(m.group(1)) if m else None



