"""Reading and validating a labelled image dataset.

Layout (the same for the synthetic set and for a user's own data)::

    DATASET/
      images/000000.png ...   any of .png .jpg .jpeg .bmp .gif, any size, colour or grey
      labels.csv              image,<task ids...>; 1 compliant, 0 non-compliant, -1 not applicable
                              optional column "split" with train / val / test
      meta.json               optional: {"tasks": [...], "groups": {...}} for non-ICAO task sets,
                              {"thresholds": {task: t}} for severities.csv
      severities.csv          optional: image,<task ids...>; the continuous severity behind each label
                              (non-compliant when above the task's threshold; empty: unknown)
      pose.csv                optional: image,roll,yaw,pitch; the head's pose in degrees (empty: unknown)
      landmarks.csv           optional: image,left_eye_x,left_eye_y,...; face points, fractions of the side

Image names in ``labels.csv`` are looked up in ``images/`` first, then relative to ``DATASET/``.
Every problem is reported before any training starts, with the file, row and column concerned and
the fix. A row is refused only when a :class:`ColumnMapping` maps one of its codes to "no answer";
the :class:`ReadReport` says how many rows were read and kept, and why the others were refused.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError

#: The columns of ``pose.csv``: the head's rotation in the image plane, left-right and up-down, degrees.
POSE_AXES = ("roll", "yaw", "pitch")
#: The points of ``landmarks.csv``, image-left first (as MTCNN names a photo's eyes): the eye centres, the
#: face's outline at the eyes' height, the tip of the nose, the centre of the mouth and the bottom of the
#: chin. Roll tilts all of them; yaw and pitch move the eyes, nose and mouth (on the curved face) against
#: the outline points (cheeks, chin), which stay where the head's silhouette is.
LANDMARK_POINTS = ("left_eye", "right_eye", "left_cheek", "right_cheek", "nose", "mouth", "chin")
#: For each point, the index of the point a horizontal flip turns it into (the left eye becomes the right).
LANDMARK_MIRROR = (1, 0, 3, 2, 4, 5, 6)
#: Its columns: ``<point>_x, <point>_y`` for each point, fractions of the image side from the top-left corner.
LANDMARK_COLUMNS = tuple(f"{p}_{c}" for p in LANDMARK_POINTS for c in ("x", "y"))
from ..requisites import GROUPS, IDS, LABEL_CODES

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}
_MAX_LISTED = 10


class DatasetError(ConfigError):
    """A dataset cannot be used as it is; the message says where and how to fix it."""


@dataclass(frozen=True)
class ColumnMapping:
    """How to read a labels CSV exported by another tool (e.g. the FVC-ICAO ground truth).

    Attributes:
        image: name of the column holding image file names.
        columns: source column name -> task id (columns not listed keep their name).
        values: source code -> label (1, 0 or -1), or ``None`` to refuse the row (e.g. ``-99``: no
            answer). Codes not listed must already be 1, 0 or -1.
        ignore: source columns to ignore.
        split: name of the split column, if the CSV has one.

    Example, a mapping file (JSON)::

        {"image": "file", "columns": {"MouthOpen": "mouth", "Blurred": "blurred"},
         "values": {"-99": null, "2": -1}, "ignore": ["subject"]}
    """

    image: str = "image"
    columns: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    ignore: tuple = ()
    split: str = "split"

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ColumnMapping":
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"Column mapping file {path} not found. Fix: pass the path of a JSON file such as "
                               '{"columns": {"MouthOpen": "mouth"}, "values": {"-99": null}}.')
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"Column mapping file {path} is not valid JSON: {exc}. Fix: correct the JSON syntax."
                               ) from exc
        unknown = set(raw) - {"image", "columns", "values", "ignore", "split"}
        if unknown:
            raise DatasetError(f"Column mapping file {path} has unknown keys {sorted(unknown)}. "
                               "Fix: use only the keys image, columns, values, ignore, split.")
        return cls(image=raw.get("image", "image"), columns=dict(raw.get("columns", {})),
                   values={_code_key(k): v for k, v in raw.get("values", {}).items()},
                   ignore=tuple(raw.get("ignore", ())), split=raw.get("split", "split"))


def _code_key(value) -> str:
    """Canonical text of a label code: '1', '1.0' and ' 1 ' are the same code."""
    text = str(value).strip()
    try:
        f = float(text)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return text


@dataclass
class ReadReport:
    """What happened while reading a dataset."""

    path: Path
    rows_read: int = 0
    rows_kept: int = 0
    refused: dict = field(default_factory=dict)  # reason -> number of rows
    images_checked: str = "decode"

    def summary(self) -> str:
        text = f"{self.path}: {self.rows_read} rows read, {self.rows_kept} kept"
        if self.refused:
            text += "; refused: " + "; ".join(f"{n} {reason}" for reason, n in self.refused.items())
        return text


@dataclass
class LabeledDataset:
    """Image paths and their labels.

    Attributes:
        root: dataset directory.
        names: image names as written in ``labels.csv``, length n.
        paths: absolute image paths, length n.
        labels: int8 array of shape (n, n_tasks), values in {1, 0, -1}.
        tasks: task ids, in column order.
        groups: task groups (for grouped architectures), group name -> task ids.
        split: array of shape (n,) with "train" / "val" / "test", or None when the CSV has no split.
        report: the :class:`ReadReport`.
        meta: the dataset's meta.json (empty dict if none).
        severities: float32 array of shape (n, n_tasks), the continuous severity behind each label
            (``severities.csv``; NaN where unknown), or None when the dataset has none.
        pose: float32 array of shape (n, 3), the head's roll, yaw and pitch in degrees (``pose.csv``,
            columns :data:`POSE_AXES`; NaN where unknown), or None when the dataset has none.
        landmarks: float32 array of shape (n, 14), the :data:`LANDMARK_POINTS` as ``x, y`` pairs in
            fractions of the image side (``landmarks.csv``; NaN where unknown), or None.
    """

    root: Path
    names: list
    paths: list
    labels: np.ndarray
    tasks: tuple
    groups: dict
    split: np.ndarray | None = None
    report: ReadReport | None = None
    meta: dict = field(default_factory=dict)
    severities: np.ndarray | None = None
    pose: np.ndarray | None = None
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index) -> "LabeledDataset":
        """The rows ``index`` (integer array or boolean mask), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return LabeledDataset(root=self.root, names=[self.names[i] for i in index],
                              paths=[self.paths[i] for i in index], labels=self.labels[index], tasks=self.tasks,
                              groups=self.groups, split=None if self.split is None else self.split[index],
                              report=self.report, meta=self.meta,
                              severities=None if self.severities is None else self.severities[index],
                              pose=None if self.pose is None else self.pose[index],
                              landmarks=None if self.landmarks is None else self.landmarks[index])

    def thresholds(self) -> np.ndarray:
        """The severity above which each task is non-compliant, shape (n_tasks,): ``meta.json``'s
        ``thresholds`` where given, else the midpoint between the highest severity of a compliant
        image and the lowest of a non-compliant one (NaN for a task with no severity of either class).

        Raises:
            ValueError: the dataset has no severities.
        """
        if self.severities is None:
            raise ValueError(f"{self.root} has no severities.csv.")
        given = self.meta.get("thresholds") or {}
        out = np.full(len(self.tasks), np.nan, np.float32)
        for j, t in enumerate(self.tasks):
            if t in given:
                out[j] = float(given[t])
                continue
            s, y = self.severities[:, j], self.labels[:, j]
            ok, bad = s[(y == 1) & np.isfinite(s)], s[(y == 0) & np.isfinite(s)]
            if len(ok) and len(bad):
                out[j] = 0.5 * (ok.max() + bad.min())
        return out

    def label_counts(self) -> dict[str, dict[int, int]]:
        """Per task: {1: compliant, 0: non-compliant, -1: not applicable}."""
        return {t: {c: int((self.labels[:, j] == c).sum()) for c in LABEL_CODES} for j, t in enumerate(self.tasks)}

    def fingerprint(self) -> str:
        """A short hash of names and labels: changes whenever the dataset's content does."""
        import hashlib

        h = hashlib.sha256()
        h.update("\n".join(self.tasks).encode())
        h.update("\n".join(self.names).encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        for p in self.paths[:: max(1, len(self.paths) // 64)]:  # sample of file sizes and times
            try:
                st = os.stat(p)
                h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
            except OSError:
                pass
        return h.hexdigest()[:16]


def _fail(header: str, problems: list[str], fix: str) -> DatasetError:
    listed = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return DatasetError(f"{header}\n  " + "\n  ".join(listed) + more + f"\nFix: {fix}")


def _read_csv(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"{path} not found. Fix: a dataset directory needs labels.csv with a header line "
                           "'image,<task ids>' (see data/README.md).")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path} is empty. Fix: write a header line 'image,<task ids>' and one row per image.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path} is empty. Fix: write a header line 'image,<task ids>' and one row per image."
                           ) from exc
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path} is not a valid CSV file ({exc}). Fix: check the quoting and the number of "
                           "fields in each row.") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _resolve_tasks(root: Path, tasks, meta: dict) -> tuple[tuple, dict]:
    if tasks is not None:
        tasks = tuple(tasks)
    elif meta.get("tasks"):
        tasks = tuple(meta["tasks"])
    else:
        tasks = IDS
    if not tasks:
        raise DatasetError("No tasks to read. Fix: pass at least one task id.")
    if len(set(tasks)) != len(tasks):
        raise DatasetError(f"Task ids are repeated in {list(tasks)}. Fix: give each task once.")
    groups = meta.get("groups") or (GROUPS if set(tasks) <= set(IDS) else {"all": list(tasks)})
    groups = {g: tuple(t for t in members if t in tasks) for g, members in groups.items()}
    groups = {g: m for g, m in groups.items() if m}
    ungrouped = [t for t in tasks if not any(t in m for m in groups.values())]
    if ungrouped:
        groups["other"] = tuple(ungrouped)
    return tasks, groups


def read_dataset(path: str | os.PathLike, *, tasks=None, mapping: ColumnMapping | None = None,
                 check_images: str = "decode", workers: int | None = None) -> LabeledDataset:
    """Read and validate the dataset at ``path``.

    Args:
        path: dataset directory holding ``labels.csv`` and ``images/``.
        tasks: task ids to read (default: ``meta.json``'s ``tasks``, else the 23 requisites).
        mapping: how to read other column names and codes (default: none needed).
        check_images: ``"decode"`` (decode every image once: finds corrupt and truncated files),
            ``"exists"`` (only check the files exist) or ``"none"``.
        workers: threads for the image check (default: number of cores).

    Returns:
        A :class:`LabeledDataset`; its ``report`` says what was read, kept and refused.

    Raises:
        DatasetError: naming the file, row, column or image at fault, and the fix.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"Dataset directory {root} not found. Fix: pass --data with a directory holding images/ "
                           "and labels.csv, or generate the synthetic set: python -m icao_mtl.synth --out " f"{root}")
    if check_images not in ("decode", "exists", "none"):
        raise ValueError(f"check_images must be 'decode', 'exists' or 'none'. Received: {check_images!r}")
    mapping = mapping or ColumnMapping()
    meta = {}
    if (root / "meta.json").is_file():
        try:
            meta = json.loads((root / "meta.json").read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{root / 'meta.json'} is not valid JSON ({exc}). Fix: correct or delete it.") from exc
    tasks, groups = _resolve_tasks(root, tasks, meta)
    csv_path = root / "labels.csv"
    table = _read_csv(csv_path)
    report = ReadReport(path=root, images_checked=check_images)

    # Columns: image, split, tasks, ignored; nothing else.
    image_col = mapping.image
    if image_col not in table.columns:
        looks_like_data = any(Path(c).suffix.lower() in IMAGE_EXTENSIONS for c in table.columns) or all(
            _code_key(c) in {"1", "0", "-1"} for c in table.columns[1:])
        if looks_like_data:
            raise DatasetError(f"{csv_path} has no header line: its first line is {list(table.columns)[:4]}... "
                               f"Fix: add a first line 'image,{','.join(tasks[:3])},...' naming the columns.")
        raise DatasetError(f"{csv_path} has no image column {image_col!r} (columns: {list(table.columns)}). "
                           "Fix: rename the column holding file names to 'image', or set \"image\" in a column "
                           "mapping.")
    renamed = {c: mapping.columns.get(c, c) for c in table.columns}
    table = table.rename(columns=renamed)
    split_col = mapping.columns.get(mapping.split, mapping.split)
    ignored = {mapping.columns.get(c, c) for c in mapping.ignore}
    declared = set(meta.get("tasks") or IDS)  # the dataset's own tasks: unselected ones are skipped, not unknown
    known = set(tasks) | declared | {image_col, split_col} | ignored
    unknown = [c for c in table.columns if c not in known]
    if unknown:
        hint = [c for c in unknown if c in IDS]
        raise DatasetError(
            f"{csv_path} has columns that are not tasks of this dataset: {unknown}. Tasks are: {list(tasks)}. "
            + "Fix: " + ("some are requisite ids: pass them as tasks; otherwise " if hint else "")
            + "map them to task ids with a column mapping ('columns'), or list them under 'ignore'.")
    missing = [t for t in tasks if t not in table.columns]
    if missing:
        raise DatasetError(f"{csv_path} lacks the task columns {missing}. Fix: add them (1 / 0 / -1), map "
                           "existing columns to them with a column mapping, or choose the tasks with --tasks.")
    dup_cols = [c for c in set(table.columns) if list(table.columns).count(c) > 1]
    if dup_cols:
        raise DatasetError(f"{csv_path}: after mapping, the columns {dup_cols} appear more than once. "
                           "Fix: map each source column to a different task id.")
    report.rows_read = len(table)
    if len(table) == 0:
        raise DatasetError(f"{csv_path} has a header but no rows. Fix: add one row per image.")

    # Image names: present and unique.
    names = [n.strip() for n in table[image_col].tolist()]
    empty = [f"row {i + 2}" for i, n in enumerate(names) if not n]
    if empty:
        raise _fail(f"{csv_path}: empty image name in {len(empty)} row(s):", empty, "write the file name of the image.")
    seen: dict[str, int] = {}
    dups = []
    for i, n in enumerate(names):
        if n in seen:
            dups.append(f"{n!r} in rows {seen[n] + 2} and {i + 2}")
        else:
            seen[n] = i
    if dups:
        raise _fail(f"{csv_path}: {len(dups)} duplicate image name(s):", dups,
                    "keep one row per image (remove or rename the duplicates).")

    # Labels: map codes, refuse 'no answer' rows, reject anything else outside {1, 0, -1}.
    values = {_code_key(k): v for k, v in mapping.values.items()}
    labels = np.zeros((len(table), len(tasks)), np.int8)
    keep = np.ones(len(table), bool)
    bad = []
    for j, t in enumerate(tasks):
        col = table[t].tolist()
        for i, raw in enumerate(col):
            code = _code_key(raw)
            if code in values:
                mapped = values[code]
                if mapped is None:
                    if keep[i]:
                        reason = f"with no answer ({raw!r}) in at least one task"
                        report.refused[reason] = report.refused.get(reason, 0) + 1
                    keep[i] = False
                    continue
                code = _code_key(mapped)
            if code not in ("1", "0", "-1"):
                bad.append(f"row {i + 2} (image {names[i]!r}), column {t!r}: {raw!r}")
                continue
            labels[i, j] = int(code)
    if bad:
        raise _fail(f"{csv_path}: {len(bad)} label(s) outside 1 / 0 / -1 (after mapping):", bad,
                    "correct the values, or map these codes in a column mapping "
                    "(e.g. \"values\": {\"-99\": null} to refuse rows with no answer, {\"2\": -1} for not applicable).")

    # Split column.
    split = None
    if split_col in table.columns:
        raw_split = [s.strip().lower() for s in table[split_col].tolist()]
        wrong = [f"row {i + 2} (image {names[i]!r}): {s!r}" for i, s in enumerate(raw_split) if s not in _SPLIT_ALIASES]
        if wrong:
            raise _fail(f"{csv_path}: {len(wrong)} value(s) in the split column {split_col!r} are not "
                        "train / val / test:", wrong, "use train, val or test (or remove the column to split "
                        "automatically).")
        split = np.array([_SPLIT_ALIASES[s] for s in raw_split])

    # Image files.
    idx = np.flatnonzero(keep)
    paths = [_resolve_image(root, names[i]) for i in range(len(names))]
    wrong_ext = [f"row {i + 2}: {names[i]!r}" for i in idx if Path(names[i]).suffix.lower() not in IMAGE_EXTENSIONS]
    if wrong_ext:
        raise _fail(f"{csv_path}: {len(wrong_ext)} image(s) of an unsupported type:", wrong_ext,
                    f"convert them to one of {', '.join(IMAGE_EXTENSIONS)}.")
    if check_images != "none":
        missing_files = [f"row {i + 2}: {names[i]!r} (looked in {root / 'images'} and {root})" for i in idx
                         if not os.path.isfile(paths[i])]
        if missing_files:
            raise _fail(f"{root}: {len(missing_files)} image file(s) listed in labels.csv are missing:", missing_files,
                        "restore the files, or remove their rows from labels.csv.")
    if check_images == "decode":
        broken = _undecodable([paths[i] for i in idx], workers)
        if broken:
            raise _fail(f"{root}: {len(broken)} image file(s) cannot be decoded (corrupt, truncated or not images):",
                        [f"{p}: {why}" for p, why in broken],
                        "replace these files with valid images, or remove their rows from labels.csv.")

    report.rows_kept = int(keep.sum())
    if report.rows_kept == 0:
        raise DatasetError(f"{csv_path}: every row was refused ({report.summary()}). Fix: check the column "
                           "mapping's values.")
    ds = LabeledDataset(root=root, names=names, paths=paths, labels=labels, tasks=tasks, groups=groups,
                        split=split, report=report, meta=meta,
                        severities=_read_numbers(root / "severities.csv", names, tasks, "severities"),
                        pose=_read_numbers(root / "pose.csv", names, POSE_AXES, "pose"),
                        landmarks=_read_numbers(root / "landmarks.csv", names, LANDMARK_COLUMNS, "landmarks"))
    return ds.subset(idx) if report.rows_kept < len(names) else ds


def _read_numbers(path: Path, names: list, columns, what: str) -> np.ndarray | None:
    """An optional per-image table of numbers (``severities.csv``, ``pose.csv``) as a float32
    (len(names), len(columns)) array in the order of ``names`` (NaN where a row, a column or a value is
    missing), or None when the file does not exist.

    Raises:
        DatasetError: the file is not a CSV with an image column, or holds values that are not numbers.
    """
    if not path.is_file():
        return None
    table = _read_csv(path)
    if "image" not in table.columns:
        raise DatasetError(f"{path} has no 'image' column (columns: {list(table.columns)[:6]}). Fix: name the "
                           f"first column 'image', as in labels.csv, or delete the file ({what} are optional).")
    row_of = {n.strip(): i for i, n in enumerate(table["image"].tolist())}
    out = np.full((len(names), len(columns)), np.nan, np.float32)
    where = np.array([row_of.get(n, -1) for n in names])
    found = where >= 0
    bad = []
    for j, c in enumerate(columns):
        if c not in table.columns:
            continue
        col = table[c].tolist()
        for i in np.flatnonzero(found):
            raw = col[where[i]].strip()
            if not raw:
                continue
            try:
                out[i, j] = float(raw)
            except ValueError:
                bad.append(f"row {where[i] + 2} (image {names[i]!r}), column {c!r}: {raw!r}")
    if bad:
        raise _fail(f"{path}: {len(bad)} value(s) that are not numbers:", bad,
                    f"write a number or leave the cell empty (unknown), or delete the file ({what} are optional).")
    return out


def _resolve_image(root: Path, name: str) -> str:
    p = root / "images" / name
    if p.is_file():
        return str(p)
    return str(root / name)


def _check_one(path: str) -> str | None:
    """Decode one image with the decoder training uses (TensorFlow's, as the pipelines do): a file that
    another library opens but TensorFlow cannot (a TIFF named .jpg, a truncated JPEG) is reported here,
    not in the middle of the first epoch."""
    import tensorflow as tf

    try:
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False)
        if img.shape[0] < 1 or img.shape[1] < 1:
            return "empty image"
    except (tf.errors.OpError, ValueError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def _undecodable(paths: list[str], workers: int | None) -> list[tuple[str, str]]:
    with cf.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(_check_one, paths, chunksize=64))
    return [(p, r) for p, r in zip(paths, results) if r is not None]
