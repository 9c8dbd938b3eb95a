"""Segmentation masks among the sources (third module of the ingest: uses ``config`` and ``discover``).

Which volume files (NIfTI, NRRD, MetaImage) are label volumes, which image each belongs to, and one class table
for the whole ingest:

- nnU-Net / Medical Segmentation Decathlon raw datasets: a folder holding ``dataset.json``, ``imagesTr/``,
  ``labelsTr/`` and ``imagesTs/`` (sometimes ``labelsTs/``). ``labels`` is name -> id (nnU-Net v2) or
  id -> name (MSD); an image ``CASE_XXXX<file_ending>`` (channel XXXX of ``channel_names``, or of MSD's
  ``modality``) pairs with ``labelsTr/CASE<file_ending>`` (``labelsTs`` for ``imagesTs``), an MSD image
  ``CASE<file_ending>`` as MSD's ``training`` list says or with the label of the same name. ``file_ending`` may
  be ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` or ``.mhd`` (nnU-Net's SimpleITK reader takes the ITK ones); Only channels
  named CT are ingested (others are counted skips); the patient is the case identifier;
- LiTS: ``segmentation-N.nii[.gz]`` beside ``volume-N.nii[.gz]`` (0 background, 1 liver, 2 liver_tumor);
- a CSV given with ``--masks``: columns ``image`` and ``mask``, optionally ``patient`` (the patient key of a
  NIfTI image); relative paths are relative to the CSV's folder. An image is a NIfTI file or a DICOM file or
  folder of a series (paired with every series found there; those it does not fit are counted skips).

A label volume is never ingested as an image: every volume file in a ``labelsTr``/``labelsTs`` folder, named
like a LiTS segmentation, or named in a mask CSV is a mask, whatever folder the ingest was pointed at. A
mask whose image is not among the sources, or whose labels are unknown (no usable ``dataset.json``), is a
counted skip with its reason. DICOM SEG objects are recognised by their header (data.dicom_seg) and matched
to their series in ``plan``.

Two NIfTI, NRRD or MetaImage (``.mha``) images with the same bytes (a copy or a link of an image, as an nnU-Net raw folder often holds
beside the original) are read once: the first found keeps its name (pseudonyms, label join), and it takes the
mask of any of its copies; the others are counted skips.

Class ids: ``ClassTable`` gives one id per class name across every source (names matched in the
``[a-z0-9_]`` form of data.dicom_seg.class_name). The first source keeps its own ids where they are free, so a
single nnU-Net dataset keeps its ``dataset.json`` ids; 0 is always background.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ctssl.core.config import ConfigError
from ctssl.data.dicom_seg import class_name
from ctssl.data.ingest.discover import NIFTI_SUFFIXES, VOLUME_SUFFIXES, Sources, is_volume_file
from ctssl.data.nifti_volume import volume_kind

LABEL_FOLDERS = {"labelsTr": "imagesTr", "labelsTs": "imagesTs"}
IMAGE_FOLDERS = {v: k for k, v in LABEL_FOLDERS.items()}
LITS_MASK = re.compile(r"^segmentation-(\d+)(\.nii(\.gz)?)$")
LITS_LABELS = {1: "liver", 2: "liver_tumor"}
CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclass
class MaskRef:
    """A mask as the plan hands it to a task."""

    kind: str                     # "nifti", "nrrd" or "metaimage" (a label volume), or "seg" (a DICOM SEG)
    path: str                     # the file, which the task reads (never written anywhere)
    source_id: str                # how the report names it (pseudonym of its relative path)
    lut: dict[int, int] | None    # stored value (SEG: segment number) -> class id; None: values are ids (unnamed CSV)
    table: str                    # where its labels are defined, for reasons ("dataset.json", ...)


class ClassTable:
    """Class id -> name for the whole ingest; ``add`` maps a source's own ids to it (module docstring)."""

    def __init__(self):
        self.names: dict[int, str] = {0: "background"}
        self._ids: dict[str, int] = {"background": 0}

    def add(self, names: dict[int, str]) -> dict[int, int]:
        lut = {0: 0}
        for source_id, name in sorted(names.items()):
            if source_id == 0:
                continue
            key = class_name(name) or f"label_{source_id}"
            if key not in self._ids:
                free = [i for i in range(1, 256) if i not in self.names]
                if not free:
                    raise ConfigError("more than 255 segmentation classes across the sources; masks are stored as "
                                      "uint8 class ids")
                class_id = source_id if source_id not in self.names and source_id <= 255 else free[0]
                self.names[class_id] = _display(name) or key
                self._ids[key] = class_id
            lut[source_id] = self._ids[key]
        return lut

    def as_json(self) -> dict[str, str]:
        return {str(k): v for k, v in sorted(self.names.items())}


def _display(name: str) -> str:
    """A class name as written to the manifest: printable ASCII, at most 64 characters."""
    return re.sub(r"[^ -~]", "", str(name)).strip()[:64]


@dataclass
class Pairing:
    """What ``pair_masks`` decided about the NIfTI sources and the mask CSVs."""

    images: list[tuple[Path, Path]] = field(default_factory=list)      # NIfTI images to ingest (file, root)
    masks: dict[str, MaskRef] = field(default_factory=dict)             # abspath of a NIfTI image -> its mask
    patients: dict[str, str] = field(default_factory=dict)              # abspath of a NIfTI image -> patient key
    skipped_images: list[tuple[Path, str]] = field(default_factory=list)   # NIfTI images refused here
    mask_skips: list[tuple[str, str, str]] = field(default_factory=list)   # (path, kind, reason): unusable masks
    dicom_masks: dict[str, list[MaskRef]] = field(default_factory=dict)    # abspath of a CSV DICOM image -> masks
    mask_files: int = 0


# --------------------------------------------------------------------------- inputs that describe masks


@dataclass
class CsvRow:
    image: str
    mask: str
    patient: str


def read_mask_csv(path: str) -> list[CsvRow]:
    """The rows of a ``--masks`` CSV with absolute paths; a ConfigError names what is wrong."""
    if not os.path.isfile(path):
        raise ConfigError(f"Mask CSV '{path}' does not exist; --masks takes a CSV with columns image, mask "
                          "(optional patient).")
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [c.strip() for c in reader.fieldnames or []]
        if not {"image", "mask"} <= set(header):
            raise ConfigError(f"Mask CSV '{path}' needs columns image and mask (optional patient); it has "
                              f"{len(header)} column(s) {sorted(header)[:6]}.")
        rows = []
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("image") or not row.get("mask"):
                raise ConfigError(f"Mask CSV '{path}', line {reader.line_num}: image and mask must both be given.")
            rows.append(CsvRow(os.path.normpath(os.path.join(base, row["image"])),
                               os.path.normpath(os.path.join(base, row["mask"])), row.get("patient", "")))
    return rows


@dataclass
class NnunetDataset:
    """The parts of a ``dataset.json`` ingest uses; ``problem`` says why its masks cannot be used."""

    folder: Path
    labels: dict[int, str] = field(default_factory=dict)
    channels: dict[int, str] = field(default_factory=dict)   # empty: not stated (every image is taken as CT)
    file_ending: str = ".nii.gz"
    training: dict[str, str] = field(default_factory=dict)   # MSD: abspath image -> abspath label
    problem: str | None = None


def _labels(raw) -> dict[int, str]:
    """``labels`` of dataset.json, name -> id (nnU-Net v2) or id -> name (MSD), as id -> name."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError("dataset.json has no 'labels' mapping")
    if any(isinstance(v, (list, dict)) for v in raw.values()):
        raise ValueError("region-based labels (lists in dataset.json 'labels') are not supported")
    if all(str(k).strip().isdigit() for k in raw):                       # MSD: {"0": "background", ...}
        out = {int(k): str(v) for k, v in raw.items()}
    elif all(isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit()) for v in raw.values()):
        out = {int(v): str(k) for k, v in raw.items()}                   # nnU-Net v2: {"background": 0, ...}
    else:
        raise ValueError("dataset.json 'labels' is neither name -> id nor id -> name")
    if any(not 0 <= k <= 255 for k in out):
        raise ValueError("dataset.json labels outside 0..255")
    return out


def _channels(raw) -> dict[int, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(str(k).strip().isdigit() for k in raw):
        raise ValueError("dataset.json 'channel_names' is not a mapping of channel numbers to names")
    return {int(k): str(v) for k, v in raw.items()}


def read_dataset(folder: Path) -> NnunetDataset:
    """The nnU-Net / MSD ``dataset.json`` of ``folder``; a problem is recorded, never raised."""
    dataset = NnunetDataset(folder)
    try:
        raw = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        dataset.problem = "no dataset.json beside labelsTr (label names unknown)"
        return dataset
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        dataset.problem = f"dataset.json unreadable ({type(err).__name__})"
        return dataset
    try:
        if not isinstance(raw, dict):
            raise ValueError("dataset.json is not a JSON object")
        dataset.labels = _labels(raw.get("labels"))
        dataset.channels = _channels(raw.get("channel_names", raw.get("modality")))
        dataset.file_ending = str(raw.get("file_ending", ".nii.gz"))
        for pair in raw.get("training", []) or []:
            if isinstance(pair, dict) and pair.get("image") and pair.get("label"):
                dataset.training[os.path.abspath(folder / pair["image"])] = os.path.abspath(folder / pair["label"])
    except (ValueError, TypeError, AttributeError) as err:
        dataset.problem = str(err) if isinstance(err, ValueError) else "dataset.json has an unexpected structure"
    return dataset


# --------------------------------------------------------------------------- pairing


def _volume_suffix(name: str) -> str:
    """The volume-file suffix ``name`` ends with (``.nii.gz`` before ``.nii``; ITK suffixes in any case)."""
    lower = name.lower()
    return next((name[len(name) - len(s):] for s in VOLUME_SUFFIXES if lower.endswith(s) and
                 (s in NIFTI_SUFFIXES) <= name.endswith(s)), "")


def _mask_kind(path: Path, csv_masks: set[str]) -> str | None:
    """How ``path`` is known to be a label volume: "csv", "nnunet", "lits", or None (an image)."""
    if os.path.abspath(path) in csv_masks:
        return "csv"
    if path.parent.name in LABEL_FOLDERS:
        return "nnunet"
    if LITS_MASK.match(path.name):
        return "lits"
    return None


class _Pairer:
    """Builds a Pairing (see ``pair_masks``)."""

    def __init__(self, csv_rows: list[CsvRow], mask_labels: dict[str, str], table: ClassTable, name_of):
        self.rows, self.table, self.name_of = csv_rows, table, name_of
        self.csv_masks = {row.mask for row in csv_rows}
        self.datasets: dict[Path, NnunetDataset] = {}
        self.luts: dict[object, dict[int, int]] = {}
        self.csv_names = {int(k): v for k, v in mask_labels.items()}
        self.out = Pairing()

    def dataset(self, folder: Path) -> NnunetDataset:
        if folder not in self.datasets:
            self.datasets[folder] = read_dataset(folder)
        return self.datasets[folder]

    def lut(self, key, names: dict[int, str]) -> dict[int, int]:
        if key not in self.luts:
            self.luts[key] = self.table.add(names)
        return self.luts[key]

    def mask_ref(self, path: Path, kind: str) -> MaskRef | str:
        """The MaskRef of a label volume, or the reason it cannot be used."""
        if kind == "nnunet":
            dataset = self.dataset(path.parent.parent)
            if dataset.problem:
                return dataset.problem
            return MaskRef(volume_kind(path), str(path), self.name_of(path), self.lut(dataset.folder, dataset.labels),
                           "dataset.json")
        if kind == "lits":
            return MaskRef(volume_kind(path), str(path), self.name_of(path), self.lut("lits", LITS_LABELS),
                           "the LiTS labels")
        lut = self.lut("csv", self.csv_names) if self.csv_names else None
        return MaskRef(volume_kind(path), str(path), self.name_of(path), lut, "mask_labels")

    def image_info(self, path: Path) -> tuple[list[str], str | None, str | None]:
        """(candidate mask paths, patient key, skip reason) of a NIfTI image from its dataset layout."""
        lits = re.match(r"^volume-(\d+)\.nii(\.gz)?$", path.name)
        if lits:
            return [str(path.parent / f"segmentation-{lits.group(1)}{s}") for s in NIFTI_SUFFIXES], None, None
        if path.parent.name not in IMAGE_FOLDERS:
            return [], None, None
        dataset = self.dataset(path.parent.parent)        # without a usable dataset.json: its masks are skips
        ending = dataset.file_ending if path.name.endswith(dataset.file_ending) else _volume_suffix(path.name)
        stem = path.name[: -len(ending)]
        match = CHANNEL.match(stem)
        case = match.group(1) if match else stem
        label = dataset.training.get(os.path.abspath(path)) or \
            str(path.parent.parent / IMAGE_FOLDERS[path.parent.name] / (case + ending))
        if match and dataset.channels:
            channel = int(match.group(2))
            name = dataset.channels.get(channel)
            if name is None:
                return [label], case, f"channel {channel:04d} is not in dataset.json channel_names"
            if name.strip().upper() != "CT":
                return [label], case, f"not a CT channel (dataset.json names channel {channel:04d} " \
                                      f"{_display(name)[:16]!r})"
        return [label], case, None


def _content_key(path: Path, limit: int | None = None) -> str | None:
    """SHA-256 of the file's first ``limit`` bytes (all without a limit); None when it cannot be read."""
    try:
        digest, left = hashlib.sha256(), limit
        with open(path, "rb") as handle:
            while left is None or left > 0:
                block = handle.read(1 << 20 if left is None else min(1 << 20, left))
                if not block:
                    break
                digest.update(block)
                left = None if left is None else left - len(block)
        return digest.hexdigest()
    except OSError:
        return None


def _same_bytes(paths: list[Path]) -> dict[str, str]:
    """abspath -> abspath of the first of ``paths`` (files of one size) with the same bytes. Files are told
    apart by their first MiB, and hashed whole only when that agrees, so an archive of equal-sized files is not
    read twice."""
    first_of: dict[str, str] = {}
    by_head: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        head = _content_key(path, 1 << 20)
        if head is not None:
            by_head[head].append(path)
    for group in by_head.values():
        seen: dict[str, str] = {}
        for path in group if len(group) > 1 else ():
            key = _content_key(path)
            if key is None:
                continue
            if key in seen:
                first_of[os.path.abspath(path)] = seen[key]
            else:
                seen[key] = os.path.abspath(path)
    return first_of


def _duplicates(images: list[tuple[Path, Path]]) -> dict[str, str]:
    """abspath of an image -> abspath of the first image with the same bytes (sizes compared first). Headers of
    detached data (``.mhd``, ``.nhdr``) are left out: equal headers may name different data files."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path, _root in images:
        if path.name.lower().endswith((".mhd", ".nhdr")):
            continue
        try:
            by_size[os.path.getsize(path)].append(path)
        except OSError:
            continue
    first_of: dict[str, str] = {}
    for paths in by_size.values():
        if len(paths) > 1:
            first_of.update(_same_bytes(paths))
    return first_of


def pair_masks(found: Sources, cfg, table: ClassTable, name_of) -> Pairing:
    """Sort the discovered NIfTI files into images and masks, pair them, and read the mask CSVs
    (module docstring). ``name_of(path)`` is how the report names a file. Raises ConfigError on a bad CSV."""
    rows = [row for path in cfg.masks for row in read_mask_csv(path)]
    pairer = _Pairer(rows, cfg.mask_labels, table, name_of)
    out = pairer.out
    masks, images = _sort_nifti(found, rows, pairer, out)
    wanted: dict[str, list[str]] = {}          # image abspath -> candidate mask abspaths
    blocked: dict[str, str] = {}               # mask abspath -> why its image is not ingested
    for path, root in images:
        candidates, patient, reason = pairer.image_info(path)
        if reason:
            out.skipped_images.append((path, reason))
            blocked.update({os.path.abspath(c): f"its image is not ingested: {reason}" for c in candidates})
            continue
        out.images.append((path, root))
        if patient:
            out.patients[os.path.abspath(path)] = patient
        wanted[os.path.abspath(path)] = [os.path.abspath(c) for c in candidates]
    for row in rows:
        wanted[row.image] = [row.mask]
        if row.patient:
            out.patients[row.image] = row.patient
    refs: dict[str, MaskRef | str] = {}
    used: set[str] = set()
    for image, candidates in wanted.items():
        mask = next((c for c in candidates if c in masks), None)
        if mask is None:
            continue
        if mask not in refs:
            refs[mask] = pairer.mask_ref(*masks[mask])
        used.add(mask)
        if not isinstance(refs[mask], str):
            out.masks[image] = refs[mask]
    _keep_one_copy(out)
    known = {os.path.abspath(p) for p, _ in out.images}
    for image in list(out.masks):     # CSV images that are no NIfTI source: DICOM files or folders, matched in plan
        if image not in known:
            out.dicom_masks.setdefault(image, []).append(out.masks.pop(image))
    for mask, (path, _kind) in sorted(masks.items()):
        if isinstance(refs.get(mask), str):
            out.mask_skips.append((str(path), volume_kind(path), refs[mask]))
        elif mask not in used:
            out.mask_skips.append((str(path), volume_kind(path), blocked.get(mask, "its image is not among the sources "
                                                                          "(missing image)")))
    return out


def check_names(masks, table: ClassTable) -> None:
    """Unnamed ``--masks`` CSV masks (ids as they are) cannot share an ingest with named masks: a ConfigError."""
    if any(ref.lut is None for ref in masks) and len(table.names) > 1:
        raise ConfigError("--masks CSV masks have no class names while other masks do; name their label values "
                          "with --set 'mask_labels={1: liver, 2: tumour}' so class ids agree across sources.")


def _sort_nifti(found: Sources, rows: list[CsvRow], pairer: _Pairer, out: Pairing):
    """(masks {abspath: (path, kind)}, images [(path, root)]) of the discovered NIfTI files and the CSVs' masks."""
    masks: dict[str, tuple[Path, str]] = {}
    images: list[tuple[Path, Path]] = []
    for path, root in found.volumes:
        kind = _mask_kind(path, pairer.csv_masks)
        if kind is None:
            images.append((path, root))
        else:
            masks[os.path.abspath(path)] = (path, kind)
    for row in rows:       # a CSV's masks need not lie under a source
        if row.mask in masks:
            continue
        if not is_volume_file(os.path.basename(row.mask)):
            out.mask_skips.append((row.mask, "nifti", "a CSV mask must be a label volume: NIfTI, NRRD or MetaImage "
                                                      "(a DICOM SEG is "
                                                      "matched to its image by its references)"))
        elif not os.path.isfile(row.mask):
            out.mask_skips.append((row.mask, volume_kind(row.mask), "the mask file named in the CSV does not exist"))
        else:
            masks[row.mask] = (Path(row.mask), "csv")
    out.mask_files = len(masks) + len(out.mask_skips)
    return masks, images


def _keep_one_copy(out: Pairing) -> None:
    """Drop NIfTI images whose bytes another image already has; the kept one takes a copy's mask."""
    first_of = _duplicates(out.images)
    kept = []
    for path, root in out.images:
        here = os.path.abspath(path)
        first = first_of.get(here)
        if first is None:
            kept.append((path, root))
            continue
        mask = out.masks.pop(here, None)
        if mask is not None and first not in out.masks:
            out.masks[first] = mask
        elif mask is not None:
            out.mask_skips.append((mask.path, mask.kind, "its image is a copy of another image, which has a mask "
                                                       "already"))
        out.patients.pop(here, None)
        out.skipped_images.append((path, "duplicate NIfTI file (the same bytes as another source file; read once)"))
    out.images = kept
