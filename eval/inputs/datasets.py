"""Downstream datasets: labelled images with their split and their patient (group).

One spec string names a dataset; ``open_dataset(spec, label)`` reads it into a ``Dataset`` whose
``split(name)`` lists ``Sample(image, target, group, key)``:

=====================================  ===========================================================
a ctssl shard folder (``manifest.json``)  CT (``.hu``) or natural-image shards; ``label`` is a key of
                                       the samples' labels (``ctssl ingest --labels``), or
                                       ``a+b+c`` for a multi-label task of 0/1 columns, or ``""``
                                       for every sample, labelled or not (images only); splits and
                                       patients come from ingest (patient-level already);
                                       ``FOLDER@key=value`` keeps the samples whose metadata has
                                       that value (e.g. ``@manufacturer=SIEMENS``, ``@source=nifti``:
                                       one scanner or one source format as a domain)
``imagefolder:ROOT``                   ``ROOT/{train,val,test}/CLASS/*.png|jpg``
``FILE.csv``                           columns ``path``, ``patient``, a label column (``label``
                                       picks it; ``label`` by default; ``a+b+c``: 0/1 columns)
                                       and optionally ``split``; paths relative to the CSV; without
                                       ``split`` the split is a hash of the patient ID alone
                                       (70/15/15): a patient's images never cross splits, and
                                       adding rows never moves another patient. No ``patient``
                                       column is an error unless ``FILE.csv@patients=per-image``
                                       (each image its own patient; a warning). 8-bit images are
                                       pictures as stored; 16-bit grey images (CT exported as
                                       PNG16/TIFF) are CT: HU = stored value - 1024, or
                                       ``@hu_offset=N``; never reduced to 8 bits
``FILE.npz``                           MedMNIST (``{train,val,test}_images``/``_labels``); labels
                                       (N, 1) are classes, (N, C > 1) multi-label (ChestMNIST)
=====================================  ===========================================================

A label that no sample carries is an error that lists the labels the samples do carry (``ctssl ingest``
without ``--labels`` writes none).

Privacy: file names and patient IDs of ImageFolder and CSV datasets may carry identifiers, so
sample keys and patients are keyed pseudonyms (``data.pseudonym``, HMAC-SHA256) under a key
derived from the dataset's own content (its listing or CSV bytes): stable for that dataset,
irreversible without it; nothing outside the dataset ever holds a raw path or ID.

Images are kept as they are stored: int16 HU arrays for CT shards, PIL images or uint8 arrays
otherwise (``eval.inputs`` prepares them for a backbone). Shard datasets are opened from the
samples' JSON metadata alone; ``iter_images`` streams a split's images for feature extraction and
``split`` loads them into memory only where a command needs them all (fine-tuning, similarity,
confounders). ``Dataset.fingerprint`` identifies the
content (manifest or file hash) for caches and provenance.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
DEFAULT_LABEL = "region"     # the label evaluated unless one is named (body region of ctssl's CT shards)
IMAGES_ONLY = ""             # the label of commands that use images only: every sample, labelled or not
UNIT_ROWS = 512          # samples per unit of work for in-memory datasets (shard datasets: one shard)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Sample:
    image: object                  # np.ndarray (int16 HU or uint8) or PIL.Image; None until loaded (shards)
    target: object                 # class name (str) or tuple of 0/1 (multi-label)
    group: str                     # patient pseudonym (or the sample's own key)
    key: str


@dataclass
class Dataset:
    spec: str
    label: str
    kind: str                      # "ct" (HU arrays) or "image" (8-bit pictures)
    fingerprint: str
    samples: dict[str, list[Sample]]
    classes: list[str] = field(default_factory=list)   # class names, or label columns if multi-label
    multilabel: bool = False
    # Shard datasets are opened from the samples' metadata only; their images are streamed, unit by unit
    # (a unit is a shard), so feature extraction never holds a whole corpus in memory and its workers and
    # array tasks can divide the units. In-memory datasets have units of UNIT_ROWS samples.
    units: dict[str, list[int]] = field(default_factory=dict)        # split -> samples per unit, in order
    unit_stream: Callable[[str, int], Iterator[tuple[str, object]]] | None = None   # (key, image) of one unit
    # Shard datasets: split -> samples left out as damaged (each logged with its reason when opened).
    damaged: dict[str, int] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)   # the labels the samples carry, for messages
    intensity: str = ""             # how stored values became the images (CSV: 8-bit as stored, 16-bit as HU)
    # Shard datasets: the salt's check value of their patient pseudonyms (shards.patients), which a backbone's
    # pretraining patients are compared under (eval.inputs.overlap); "" for datasets with other patient IDs.
    salt_check: str = ""
    unlabelled: dict[str, int] = field(default_factory=dict)   # split -> samples left out for lacking the label

    def __post_init__(self):
        if self.unit_stream is None:           # in memory: blocks of rows
            self.units = {s: [min(UNIT_ROWS, len(v) - i) for i in range(0, len(v), UNIT_ROWS)]
                          for s, v in self.samples.items()}
            self.unit_stream = self._memory_unit

    def _memory_unit(self, split: str, unit: int) -> Iterator[tuple[str, object]]:
        for s in self.samples[split][unit * UNIT_ROWS:(unit + 1) * UNIT_ROWS]:
            yield s.key, s.image

    def stream(self, split: str) -> Iterator[object]:
        """The split's images in sample order."""
        for unit in range(len(self.units.get(split, []))):
            for _key, image in self.unit_stream(split, unit):
                yield image

    def unit_offsets(self, split: str) -> list[int]:
        """The row of each unit's first sample."""
        return [int(v) for v in np.concatenate([[0], np.cumsum(self.units[split])])[:-1]]

    def entries(self, name: str) -> list[Sample]:
        """The split's samples (targets, patients, keys); images may not be loaded."""
        if name not in self.samples or not self.samples[name]:
            which = f" with label '{self.label}'" if self.label else ""
            raise ValueError(f"Dataset '{self.spec}' has no samples{which} in split '{name}' (splits with samples: "
                             f"{[s for s in self.samples if self.samples[s]]}).")
        return self.samples[name]

    def split(self, name: str) -> list[Sample]:
        """The split's samples with their images loaded (kept in memory from then on)."""
        samples = self.entries(name)
        if samples[0].image is None:
            for sample, image in zip(samples, self.stream(name), strict=True):
                sample.image = image
        return samples

    def iter_images(self, name: str) -> Iterator[object]:
        """The split's images in sample order, streamed when not loaded."""
        samples = self.entries(name)
        if samples[0].image is None:
            return self.stream(name)
        return (s.image for s in samples)

    def has(self, split: str) -> bool:
        return bool(self.samples.get(split))

    def targets(self, split: str) -> np.ndarray:
        """(N,) class indices or (N, C) 0/1 for multi-label."""
        samples = self.entries(split)
        if self.multilabel:
            return np.asarray([s.target for s in samples], dtype=np.int64)
        index = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([index.get(s.target, -1) for s in samples], dtype=np.int64)

    def groups(self, split: str) -> np.ndarray:
        return np.asarray([s.group for s in self.entries(split)])

    def patients(self) -> dict[str, set]:
        """The patients of each split (with the label)."""
        return {s: {x.group for x in v} for s, v in self.samples.items()}

    def describe(self) -> dict:
        described = {"spec": self.spec, "label": self.label, "kind": self.kind, "fingerprint": self.fingerprint,
                     "classes": self.classes, "multilabel": self.multilabel,
                     "counts": {s: len(v) for s, v in self.samples.items()}}
        if self.unlabelled:
            described["unlabelled"] = dict(self.unlabelled)
        return {**described, "intensity": self.intensity} if self.intensity else described


def open_dataset(spec: str, label: str = DEFAULT_LABEL) -> Dataset:
    """Read the dataset named by ``spec`` (module docstring); ``label`` ``""``: every sample (images only)."""
    if spec.startswith("imagefolder:"):
        data = _imagefolder(spec, Path(spec.split(":", 1)[1]))
    elif spec.endswith(".csv") or ".csv@" in spec:
        data = _csv(spec, label)
    elif spec.endswith(".npz"):
        data = _medmnist(spec, Path(spec), label)
    else:
        path, _, where = spec.partition("@")
        if where and "=" not in where:
            raise ValueError(f"Filter '@{where}' in '{spec}' must be @key=value.")
        from ctssl.shards.location import location

        data = _shards(spec, location(path), label, tuple(where.split("=", 1)) if where else None)
    if data.label == IMAGES_ONLY:
        data.classes = []              # images only: no classes, every target unseen (-1)
    elif not data.multilabel:
        # Classes are those of the training split; others are counted as unseen where used.
        data.classes = sorted({s.target for s in data.samples.get("train", [])} or
                              {s.target for v in data.samples.values() for s in v})
    return data


def missing_label(spec: str, label: str, present: list[str]) -> str:
    """The one-line error for a label that no sample of ``spec`` carries: the labels its samples do carry."""
    wanted = label.split("+")
    absent = [c for c in wanted if c not in present]
    what = f"label '{label}'" if len(wanted) == 1 else f"label column(s) {absent} of '{label}'"
    if not present:
        return (f"'{spec}' has no {what}: its samples carry no labels (ctssl ingest writes labels only with "
                f"--labels FILE.csv). Commands that need a label cannot run on it; similarity, gap and extract can.")
    return f"'{spec}' has no {what}; its samples carry the labels {present}: name one of them as the label."


def _hash_file(path) -> str:
    from ctssl.shards.location import open_binary

    digest = hashlib.sha256()
    with open_binary(path) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _shards(spec: str, path, label: str, where: tuple[str, str] | None = None) -> Dataset:
    """A shard folder, local or remote (``path``: a Path or a shards.location.Remote)."""
    import json

    from ctssl.shards.location import Remote, remote_text
    from ctssl.shards.reader import decode_image
    from ctssl.shards.manifest import MANIFEST_NAME, load_manifest
    from ctssl.shards.patients import salt_check_of
    from ctssl.shards.reader import expected_counts, iter_shard, shard_paths

    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if isinstance(manifest, Remote):
        load_manifest(manifest)        # unreadable or not a manifest: a one-line error naming the location
    elif not manifest.is_file():
        raise FileNotFoundError(f"'{spec}' is not a shard folder (no {MANIFEST_NAME}), imagefolder:ROOT, "
                                ".csv or .npz dataset.")
    columns = label.split("+") if "+" in label else None
    names: set[str] = set()                       # the labels the samples carry, for a missing label's message
    matched = [0]                                 # samples that pass the filter

    def passes(meta: dict) -> bool:
        return str(meta.get(where[0], (meta.get("labels") or {}).get(where[0]))) == where[1]

    def target_of(meta: dict):
        """The sample's target, or None when it is filtered out or lacks the label."""
        if where and not passes(meta):
            return None
        matched[0] += 1
        labels = {**(meta.get("labels") or {}), **({"class": meta["class"]} if "class" in meta else {})}
        names.update(k for k, v in labels.items() if v not in (None, ""))
        if label == IMAGES_ONLY:
            return ""
        if columns:
            return None if any(c not in labels for c in columns) else tuple(int(float(labels[c]) > 0) for c in columns)
        value = labels.get(label)
        return None if value in (None, "") else str(value)

    damaged = {s: 0 for s in SPLITS}
    unlabelled = {s: 0 for s in SPLITS}           # samples without the label (counted, logged, recorded)

    def skip(key, reason, split=None):   # a damaged sample, left out of both passes alike; counted when opened
        if split is not None and key is not None:
            damaged[split] += 1
            logger.warning("%s: sample %s skipped: %s", spec, key, reason)
        elif split is not None:
            logger.warning("%s: %s", spec, reason)     # a shard cut short or unreadable from here on

    # Metadata only (the JSON member); images are decoded when streamed, one shard (unit) at a time.
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    shards = {s: shard_paths(manifest, s) for s in SPLITS}
    expected = expected_counts(manifest)
    units: dict[str, list[int]] = {s: [] for s in SPLITS}
    kind = None
    for split in SPLITS:
        for shard in shards[split]:
            count = 0
            report = functools.partial(skip, split=split)
            for raw in iter_shard(shard, decode=False, on_error=report, expected=expected.get(shard.name)):
                kind = kind or ("ct" if "hu" in raw else "image")
                meta = json.loads(raw["json"])
                target = target_of(meta)
                if target is not None:
                    samples[split].append(Sample(None, target, str(meta.get("patient") or raw["key"]), raw["key"]))
                    count += 1
                elif not where or passes(meta):
                    unlabelled[split] += 1
            units[split].append(count)

    def unit_stream(split: str, unit: int) -> Iterator[tuple[str, object]]:
        for raw in iter_shard(shards[split][unit], decode=False, on_error=skip):
            if target_of(json.loads(raw["json"])) is not None:
                yield raw["key"], decode_image(raw)[0]

    if any(damaged.values()):
        logger.warning("%s: damaged samples left out: %s (`ctssl shards verify` tells more)", spec,
                       ", ".join(f"{n} in {split}" for split, n in damaged.items() if n))
    if where and not matched[0]:
        raise ValueError(f"No sample of '{spec}' has {where[0]} = {where[1]}.")
    if label != IMAGES_ONLY and not any(samples.values()):
        raise ValueError(missing_label(spec, label, sorted(names)))
    if any(unlabelled.values()):
        logger.info("%s: samples without label '%s' left out: %s", spec, label,
                    ", ".join(f"{n} of {n + len(samples[s])} {s}" for s, n in unlabelled.items() if n))
    fingerprint = _hash_file(manifest) + (f"@{where[0]}={where[1]}" if where else "")
    text = remote_text(manifest) if isinstance(manifest, Remote) else manifest.read_text()
    salt_check = salt_check_of(json.loads(text).get("config")) or ""
    return Dataset(spec, label, kind or "ct", fingerprint, samples, classes=columns or [], multilabel=bool(columns),
                   units=units, unit_stream=unit_stream, damaged={s: n for s, n in damaged.items() if n},
                   label_names=sorted(names), salt_check=salt_check,
                   unlabelled={s: n for s, n in unlabelled.items() if n})


def _load_image(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in SIXTEEN_BIT:
            raise ValueError(f"An ImageFolder dataset holds a 16-bit image ({image.mode}); it would lose its values "
                             "as an 8-bit picture. List 16-bit CT images in a CSV dataset (HU + offset, see "
                             "docs/evaluation.md).")
        return image.copy()


def _imagefolder(spec: str, root: Path) -> Dataset:
    from ctssl.data.pseudonym import pseudonym

    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root '{root}' does not exist.")
    files = {split: [(class_dir.name, file) for class_dir in sorted(p for p in (root / split).glob("*") if p.is_dir())
                     for file in sorted(class_dir.iterdir()) if file.suffix.lower() in IMAGE_SUFFIXES]
             for split in SPLITS}
    digest = hashlib.sha256()
    for split, entries in files.items():
        for name, file in entries:
            digest.update(f"{split}/{name}/{file.name}:{file.stat().st_size}".encode())
    if not any(files.values()):
        raise ValueError(f"No images under '{root}/{{train,val,test}}/CLASS/'.")
    key = digest.digest()
    samples = {split: [] for split in SPLITS}
    for split, entries in files.items():
        for name, file in entries:
            k = pseudonym(key, "image", f"{split}/{name}/{file.name}")
            samples[split].append(Sample(_load_image(file), name, k, k))   # each image its own group
    return Dataset(spec, "class", "image", digest.hexdigest(), samples)


def split_of(patient: str, fractions=(0.7, 0.15, 0.15)) -> str:
    """A stable split for a patient without one: a hash of its ID into [0, 1). It depends on that ID alone, so
    adding or removing other rows (or patients) never moves a patient between splits."""
    u = int(hashlib.sha256(f"split\0{patient}".encode("utf-8", "surrogateescape")).hexdigest()[:12], 16) / 16 ** 12
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


HU_OFFSET = 1024          # 16-bit images of a CSV dataset hold HU + this (CT exported as PNG16), unless told
CSV_OPTIONS = {"patients": "per-image: each image is its own patient (no patient column)",
               "hu_offset": "N: 16-bit images hold HU + N (default 1024)"}
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _csv_options(spec: str) -> tuple[Path, dict[str, str]]:
    """``FILE.csv`` or ``FILE.csv@key=value,key=value`` -> (path, options); unknown options are an error."""
    path, _, tail = spec.rpartition(".csv@") if ".csv@" in spec else (spec[:-4], "", "")
    options = {}
    for item in filter(None, tail.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in CSV_OPTIONS:
            raise ValueError(f"Unknown CSV dataset option '{item}' in '{spec}'. Valid options are "
                             f"{[f'{k}={v}' for k, v in CSV_OPTIONS.items()]}.")
        options[key] = value
    if options.get("patients", "per-image") != "per-image":
        raise ValueError(f"CSV option patients={options['patients']} in '{spec}': the only value is per-image.")
    return Path(path + ".csv"), options


def _csv_image(file: Path, row: int, csv_name: str, offset: int):
    """(image, bits) of one listed file: 8-bit images as stored (PIL); 16-bit grey images as int16 HU arrays, HU
    = stored value - ``offset`` (never reduced to 8 bits). Errors name the row, never the file's path (paths
    of archives carry patient names)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            if image.mode not in SIXTEEN_BIT:
                if image.mode == "F" or image.mode.startswith("I"):
                    raise ValueError(f"row {row} of '{csv_name}' is a {image.mode} image; CSV datasets take 8-bit "
                                     "images and 16-bit grey ones (HU + offset)")
                return image.copy(), 8
            stored = np.asarray(image, dtype=np.int64)
    except UnidentifiedImageError:
        raise ValueError(f"Row {row} of '{csv_name}' is not an image Pillow reads (PNG, JPEG, TIFF, ...). DICOM "
                         "files go through ctssl ingest, which writes CT shards.") from None
    except OSError as err:
        raise ValueError(f"Row {row} of '{csv_name}' could not be read ({type(err).__name__}; a truncated or "
                         "damaged image).") from None
    return np.clip(stored - offset, -32768, 32767).astype(np.int16), 16


def _csv(spec: str, label: str = DEFAULT_LABEL) -> Dataset:
    """A CSV of images (module docstring): ``label`` names the label column (the default label, when the CSV
    has no such column: ``label``; ``""``: images only); ``patient`` is required unless the spec says
    ``@patients=per-image``; the split, when not given, follows the patient ID alone (``split_of``)."""
    from ctssl.data.pseudonym import pseudonym

    path, options = _csv_options(spec)
    if not path.is_file():
        raise FileNotFoundError(f"CSV dataset '{path}' does not exist.")
    offset = int(options.get("hu_offset", HU_OFFSET))
    key = bytes.fromhex(_hash_file(path))      # keys the pseudonyms; the splits do not depend on it
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    bits: set[int] = set()
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        wanted = label.split("+") if label else []
        if label == DEFAULT_LABEL and label not in columns:
            wanted = ["label"]
        missing = [c for c in ["path", *wanted] if c not in columns]
        if missing:
            present = [c for c in columns if c not in ("path", "split", "patient")]
            raise ValueError(f"CSV dataset '{path}' lacks column(s) {missing} (its columns: {columns}); it needs "
                             f"path, a label column (--label names it; labels present: {present}), and patient "
                             "(split optional).")
        per_image = "patients" in options
        if "patient" not in columns and not per_image:
            raise ValueError(f"CSV dataset '{path}' has no patient column, so images of one patient could land in "
                             "train and test. Add a patient column (any ID; it is pseudonymised), or, if each image "
                             f"really is its own patient, say so: '{path}@patients=per-image'.")
        if per_image:
            logger.warning("CSV dataset '%s': each image is its own patient (patients=per-image, as asked); "
                           "neighbouring slices of one scan would land in different splits.", path.name)
        for n, row in enumerate(reader, start=2):          # row 1 is the header
            file = path.parent / row["path"]
            if not file.is_file():
                raise FileNotFoundError(f"The file of row {n} of '{path}' does not exist (paths are relative to "
                                        "the CSV's folder).")
            patient = row["path"] if per_image else row.get("patient") or ""
            if not patient:
                raise ValueError(f"Row {n} of '{path}' has an empty patient.")
            split = row.get("split") or split_of(patient)
            if split not in samples:
                raise ValueError(f"Unknown split '{split}' in row {n} of '{path}' (valid: {list(SPLITS)}).")
            image, depth = _csv_image(file, n, str(path), offset)
            bits.add(depth)
            if len(wanted) > 1:
                target = tuple(int(float(row[c] or 0) > 0) for c in wanted)
            else:
                target = row[wanted[0]] if wanted else IMAGES_ONLY
            samples[split].append(Sample(image, target, pseudonym(key, "patient", patient),
                                         pseudonym(key, "image", row["path"])))
    if bits == {8, 16}:
        raise ValueError(f"CSV dataset '{path}' mixes 8-bit and 16-bit images; one dataset holds one kind (16-bit: "
                         "CT as HU + offset; 8-bit: pictures).")
    ct = bits == {16}
    intensity = (f"16-bit images as CT: HU = stored value - {offset} (hu_offset), never reduced to 8 bits"
                 if ct else "8-bit images as stored")
    if per_image:
        intensity += "; each image its own patient (patients=per-image)"
    name = "+".join(wanted) if wanted else IMAGES_ONLY
    return Dataset(spec, name, "ct" if ct else "image", _hash_file(path) + (f"@{offset}" if ct else ""), samples,
                   classes=wanted if len(wanted) > 1 else [], multilabel=len(wanted) > 1,
                   label_names=[c for c in columns if c not in ("path", "split", "patient")], intensity=intensity)


def _medmnist(spec: str, path: Path, label: str) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file '{path}' does not exist (nothing is downloaded).")
    data = np.load(path)
    needed = [f"{s}_{p}" for s in SPLITS for p in ("images", "labels")]
    missing = [k for k in needed if k not in data.files]
    if missing:
        raise ValueError(f"'{path}' is not a MedMNIST file: missing arrays {missing}.")
    multilabel = data["train_labels"].ndim == 2 and data["train_labels"].shape[1] > 1
    samples: dict[str, list[Sample]] = {}
    for split in SPLITS:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        samples[split] = [
            Sample(images[i], tuple(int(v) for v in labels[i]) if multilabel else str(int(labels[i].reshape(-1)[0])),
                   f"{split}-{i}", f"{split}-{i}")
            for i in range(len(images))]
    classes = [str(c) for c in range(data["train_labels"].shape[1])] if multilabel else []
    name = label if label not in (DEFAULT_LABEL, IMAGES_ONLY) else "label"
    return Dataset(spec, name, "image", _hash_file(path), samples,
                   classes=classes, multilabel=multilabel)


def image_to_array(image) -> np.ndarray:
    """A PIL image or uint8 array as float32 (C, H, W) in [0, 1]."""
    if hasattr(image, "mode"):
        image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = arr.transpose(2, 0, 1)
    scale = 255.0 if arr.dtype == np.uint8 else (65535.0 if arr.dtype == np.uint16 else 1.0)
    return arr.astype(np.float32) / scale

