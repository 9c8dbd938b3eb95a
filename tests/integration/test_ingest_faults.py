"""Fault injection: an archive of good CT (our own files and the CT files pydicom ships) mixed with damaged,
absurd, mislabelled and oddly named inputs. `ctssl ingest` must finish (no crash, no hang), count every bad
input with a reason, write the good data exactly as a clean run does, and let no header value, and no
path as typed, reach any output byte or the console. Then damaged shards: every reader notices.

The archive's size and fault kinds are listed in docs/ingest.md ("Fault injection")."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit

from ctssl.shards.reader import iter_samples
from tests.dicom_factory import ct_dataset, enhanced_ct, phantom_stored, save

SALT = "fault-injection-salt-0123456789"
# Identifiers planted in the headers and in a folder name; none may reach any output.
MARKS = ["FAULTMARK", "MRN7734521", "Quixotic^Zebedee", "St Swithin Infirmary", "19451108",
         "1.2.826.0.1.3680043.2.1125.04.7", "Zebedee lives at 12 Acacia Avenue"]
TESTS = Path(pydicom.__file__).parent / "data" / "test_files"
REAL_CT = ["CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"]


def _identified(ds, n: int):
    """Plant identifiers: patient name/ID, birth date, institution, an image comment, and a study UID with
    a leading zero in a component (invalid: pydicom's validation warning quotes it)."""
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Quixotic^Zebedee", f"MRN7734521{n}", "19451108"
    ds.InstitutionName, ds.ImageComments = "St Swithin Infirmary", "Zebedee lives at 12 Acacia Avenue"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.04.7"
    return ds


def _good(root: Path, rng) -> dict:
    """Two good series (6 and 4 slices; explicit and RLE), one enhanced CT, pydicom's real CT files."""
    folder = root / "FAULTMARK_Zebedee"          # a folder named after the patient, as archives often are
    for s, (n, syntax) in enumerate(((6, "explicit"), (4, "rle"))):
        for k in range(n):
            ds = _identified(ct_dataset(phantom_stored(rng), 2.5 * k, series_uid=f"1.2.3.77.{s}", instance=k + 1), s)
            save(ds, folder / f"series{s}" / f"img{k:02d}.dcm", syntax)
    frames = np.stack([phantom_stored(rng) for _ in range(3)])
    enh = _identified(enhanced_ct(frames, [0.0, 3.0, 6.0], [1.0] * 3, [-1024.0] * 3, series_uid="1.2.3.77.9"), 9)
    save(enh, folder / "enhanced" / "multi.dcm")
    for name in REAL_CT:
        (folder / "pydicom").mkdir(parents=True, exist_ok=True)
        shutil.copy(TESTS / name, folder / "pydicom" / name)
    return {"series": 3 + len(REAL_CT)}


def _faults(root: Path, rng) -> list[tuple[str, Path]]:
    """(fault kind, path) of every damaged input, each in a folder of its own (its report pseudonym)."""
    faults = []

    def put(kind: str, data: bytes | None = None, name: str = "f.dcm", ds=None, syntax="explicit") -> Path:
        folder = root / "faults" / f"{len(faults):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        if ds is not None:
            save(ds, path, syntax)
        else:
            path.write_bytes(data)
        faults.append((kind, path))
        return path

    counter = iter(range(1000))

    def fresh(n: int | None = None, **kw):
        """A new CT image of its own series (its own SOP instance: no fault shadows another as a duplicate)."""
        n = next(counter) if n is None else n
        return _identified(ct_dataset(phantom_stored(rng), 0.0, series_uid=f"1.2.3.88.{n}", **kw), 100 + n)

    def blob(syntax: str = "explicit") -> bytes:
        scratch = root / "scratch" / "x.dcm"
        data = save(fresh(), scratch, syntax).read_bytes()
        scratch.unlink()
        return data

    for fraction in (0.02, 0.5, 0.98):
        data = blob()
        put(f"truncated at {fraction:.0%}", data[:int(len(data) * fraction)])
    for syntax in ("rle", "jpeg2000"):
        data = blob(syntax)
        put(f"truncated {syntax} pixel data", data[:len(data) - 300])
    for seed in range(3):
        data = bytearray(blob())
        for offset in np.random.default_rng(seed).integers(132, 600, 8):
            data[offset] ^= 0xFF
        put("byte flips in the header", bytes(data))
    for seed, syntax in enumerate(("rle", "jpeg2000")):
        data = bytearray(blob(syntax))
        for offset in np.random.default_rng(10 + seed).integers(len(data) - 3000, len(data) - 10, 40):
            data[offset] ^= 0xFF
        put(f"byte flips in {syntax} pixel data", bytes(data))
    whole = blob()
    # Absurd header values.
    frames = np.stack([phantom_stored(rng) for _ in range(2)])
    huge = _identified(enhanced_ct(frames, [0.0, 3.0], [1.0] * 2, [-1024.0] * 2, series_uid="1.2.3.88.20"), 120)
    huge.NumberOfFrames = 50_000_000
    put("Number of Frames 50,000,000", ds=huge)
    odd = _identified(enhanced_ct(frames, [0.0, 3.0], [1.0] * 2, [-1024.0] * 2, series_uid="1.2.3.88.21"), 121)
    odd.NumberOfFrames = 7
    put("Number of Frames disagreeing with the per-frame groups", ds=odd)
    for kind, change in (
            ("Pixel Spacing 0", lambda d: setattr(d, "PixelSpacing", [0, 0])),
            ("Rescale Slope NaN", lambda d: setattr(d, "RescaleSlope", "NaN")),
            ("Image Position NaN", lambda d: setattr(d, "ImagePositionPatient", [0, 0, "NaN"])),
            ("Image Orientation degenerate", lambda d: setattr(d, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0])),
            ("Rows 60000", lambda d: setattr(d, "Rows", 60000)),
            ("secondary capture with Modality CT", lambda d: setattr(d, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")),
            ("derived secondary image", lambda d: setattr(d, "ImageType", ["DERIVED", "SECONDARY", "MPR"]))):
        ds = fresh()
        change(ds)
        put(kind, ds=ds)
    colour = fresh()                          # a colour picture (a dose report, say) labelled CT
    colour.SamplesPerPixel, colour.PhotometricInterpretation, colour.PlanarConfiguration = 3, "RGB", 0
    colour.BitsAllocated, colour.BitsStored, colour.HighBit, colour.PixelRepresentation = 8, 8, 7, 0
    colour.PixelData = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8).tobytes()
    put("colour image (Samples per Pixel 3) with Modality CT", ds=colour)
    # A real colour screenshot relabelled CT, and compressed data under the wrong transfer syntax.
    shot = pydicom.dcmread(TESTS / "SC_rgb_rle.dcm")
    shot.Modality = "CT"
    shot.ImageOrientationPatient, shot.ImagePositionPatient, shot.PixelSpacing = [1, 0, 0, 0, 1, 0], [0, 0, 0], [1, 1]
    shot.save_as(put("colour screenshot (SC_rgb_rle.dcm) relabelled CT", b"", "shot.dcm"))
    mislabelled = pydicom.dcmread(put("JPEG 2000 data labelled JPEG Baseline", blob("jpeg2000")))
    mislabelled.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    mislabelled.save_as(faults[-1][1])
    no_pixels = pydicom.dcmread(put("compressed file without Pixel Data", blob("rle")))
    del no_pixels.PixelData
    no_pixels.save_as(faults[-1][1])
    # A truncated duplicate that sorts before the intact copy of a good slice (its folder sorts first).
    good_copy = root / "FAULTMARK_Zebedee" / "series0" / "img03.dcm"
    folder = root / "000_duplicates"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(good_copy.read_bytes()[:-400])
    faults.append(("truncated duplicate of a good slice", folder / "a.dcm"))
    # NIfTI.
    put("garbage .nii", os.urandom(4096), "x.nii")
    put(".nii.gz that is not gzip", b"plain bytes, not gzip" * 100, "y.nii.gz")
    put("truncated .nii.gz", gzip.compress(os.urandom(20000))[:3000], "z.nii.gz")
    # Names and links.
    weird = root / "faults" / "names"
    weird.mkdir(parents=True)
    bad_name = os.fsdecode(b"caf\xe9-\xff.dcm")                      # not UTF-8
    (weird / bad_name).write_bytes(whole)
    faults.append(("non-UTF-8 file name (a good file: ingested)", weird / bad_name))
    os.symlink("loop_b", weird / "loop_a")
    os.symlink("loop_a", weird / "loop_b")
    faults.append(("symbolic link loop", weird / "loop_a"))
    os.symlink(weird / "nowhere", weird / "dangling.dcm")
    faults.append(("dangling symbolic link", weird / "dangling.dcm"))
    os.mkfifo(weird / "fifo.dcm")
    faults.append(("FIFO", weird / "fifo.dcm"))
    os.symlink("..", weird / "up")                          # a cycle through the folder tree, if followed
    faults.append(("link to an ancestor folder", weird / "up"))
    os.symlink("up/names/cycle", weird / "cycle")           # loops through that folder link back to itself
    faults.append(("symbolic link loop through a folder link", weird / "cycle"))
    # Files that are neither DICOM nor NIfTI, and a folder the ingest of test_every_file_on_disk cannot list.
    (weird / "README.txt").write_text("exported from the PACS\n")
    (root / "faults" / "locked").mkdir()
    for name in ("a.dcm", "b.txt"):
        (root / "faults" / "locked" / name).write_text("not an image\n")
    return faults


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    rng = np.random.default_rng(42)
    root = tmp_path_factory.mktemp("archive")
    clean, faulty = root / "clean", root / "faulty"
    _good(clean, np.random.default_rng(42))
    _good(faulty, np.random.default_rng(42))          # the same good files...
    faults = _faults(faulty, rng)                     # ...plus the faults
    return clean, faulty, faults


def _ingest(src: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "CTSSL_SALT": SALT}
    return subprocess.run([sys.executable, "-m", "ctssl", "ingest", str(src), "--out", str(out), "--image-size", "0",
                           "--set", "splits.train=1", "--set", "splits.val=0", "--set", "splits.test=0",
                           "--file-seconds", "30", *extra], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def runs(archive, tmp_path_factory):
    clean, faulty, faults = archive
    out = tmp_path_factory.mktemp("runs")
    a, b = _ingest(clean, out / "clean"), _ingest(faulty, out / "faulty")
    return out / "clean", out / "faulty", a, b


def _outcomes(report: dict, root: Path, path: Path) -> list[str]:
    """The report's reasons for the input at ``path``: a file-level skip, or its series' outcome and notes
    (sources are keyed pseudonyms of paths relative to the source root)."""
    from ctssl.data.pseudonym import pseudonym

    ids = {"src-" + pseudonym(SALT.encode(), "path", Path(os.path.relpath(p, root)).as_posix())
           for p in (path, path.parent)}
    found = [f["reason"] for f in report["skipped_files"] if f["source"] in ids]
    for s in report["series"]:
        if s["source"] in ids:
            found += [s["reason"]] if s["outcome"] == "skipped" else []
            found += [note for note in s.get("slice_notes", {}) if not note.endswith("(kept)")]
    return found


def test_the_faulty_archive_finishes_and_counts_every_fault(archive, runs):
    _, faulty, faults = archive
    _, faulty_out, _, run = runs
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((faulty_out / "ingest-report.json").read_text())
    missed = {}
    for kind, path in faults:
        reasons = _outcomes(report, faulty, path)
        if kind.startswith("non-UTF-8"):
            assert not reasons, reasons           # a good file with an odd name is a good file
        elif kind.startswith("byte flips in") and "pixel data" in kind:
            # DICOM carries no checksum: flipped bits inside lossless pixel data may still decode (RLE
            # flips here fail, J2K flips may not). Either way the file was handled, and never crashed the run.
            continue
        elif not reasons:
            missed[kind] = path.name
    assert not missed, missed                     # every damaged input has a counted reason
    reasons = " | ".join(report["summary"]["skip_reasons"]) + " | " + " | ".join(report["summary"]["slice_notes"])
    for expected in ("Number of Frames above the limit", "disagrees with the per-frame", "invalid Rescale Slope",
                     "missing or invalid geometry", "missing or invalid Pixel Spacing", "colour image",
                     "secondary capture", "derived secondary", "symbolic link loop", "broken symbolic link",
                     "not a regular file", "too small for its Rows", "Rows or Columns above",
                     "duplicate SOP Instance UID", "codestream does not match its transfer syntax"):
        assert expected in reasons, (expected, report["summary"]["skip_reasons"])
    nifti = [r for r in report["series"] if r["kind"] == "nifti"]
    assert len(nifti) == 3 and all(r["outcome"] == "skipped" and r["reason"] for r in nifti)
    # Library messages were counted, not shown.
    assert report["summary"]["library_messages"]


def test_good_data_is_written_exactly_as_a_clean_run_writes_it(archive, runs):
    clean_out, faulty_out, clean_run, _ = runs
    assert clean_run.returncode == 0, clean_run.stderr[-3000:]

    def raw(folder):
        from ctssl.shards.reader import iter_shard, shard_paths

        return {s["key"]: (s["hu"], s["json"]) for p in shard_paths(folder) for s in iter_shard(p, decode=False)}

    clean, faulty = raw(clean_out), raw(faulty_out)
    assert len(clean) == 6 + 4 + 3 + len(REAL_CT)
    for key, value in clean.items():
        assert faulty.get(key) == value, key          # byte for byte, the truncated duplicate notwithstanding
    # Besides: the good file with a non-UTF-8 name, and at most the two images whose pixel-data flips decode.
    assert 1 <= len(faulty) - len(clean) <= 3


def test_real_ct_files_are_ingested_with_pydicoms_hu(runs):
    clean_out, _, _, _ = runs
    slices = [s for s in iter_samples(clean_out) if s["meta"]["source_slices"] == 1 and s["meta"]["kernel"] != "B30"]
    assert len(slices) == len(REAL_CT)
    expected = []
    for name in REAL_CT:
        ds = pydicom.dcmread(TESTS / name)
        expected.append(np.clip(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds), -1024, 3071))
    got = sorted((s["hu"] for s in slices), key=lambda a: a.shape + (int(a.sum()),))
    expected = sorted((np.rint(e).astype(np.int16) for e in expected), key=lambda a: a.shape + (int(a.sum()),))
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_no_header_value_or_path_reaches_any_output_or_the_console(runs):
    _, faulty_out, _, run = runs
    marks = [m.encode() for m in MARKS]
    for path in faulty_out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [m for m in marks if m in data], path
    console = (run.stdout + run.stderr).encode()
    assert not [m for m in marks if m in console]
    assert b"Invalid value" not in console                # pydicom's validation text


def test_every_file_on_disk_is_in_the_report(archive, tmp_path, monkeypatch):
    """Every file and link under the source is accounted for in ingest-report.json: named with its reason, in a
    series of its folder, counted as ignored in its folder, or under a folder that could not be listed (root
    lists every folder, so that one is injected into os.scandir)."""
    import errno

    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
    from ctssl.data.ingest import discover as module
    from ctssl.data.ingest.discover import looks_like_dicom

    _, faulty, _ = archive
    real = os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and os.path.basename(path) == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(module.os, "scandir", scandir)
    monkeypatch.setenv("CTSSL_SALT", SALT)
    report = run_ingest(IngestConfig(sources=[str(faulty)], out=str(tmp_path / "out"), image_size=0,
                                     file_seconds=30, report_paths=True, splits=SplitFractions(1.0, 0.0, 0.0)))
    named = {e["source"] for e in report["skipped_files"]} | {e["source"] for e in report["series"] if e["kind"] == "nifti"}
    series_folders = {e["source"] for e in report["series"] if e["kind"] == "dicom"}
    unlisted = {e["source"] for e in report["skipped_files"] if "cannot be listed" in e["reason"]}
    ignored = {e["source"]: e["files"] for e in report["ignored_files"]}
    assert unlisted == {"faults/locked"} and ignored["faults/names"] == 1
    unaccounted, ignored_on_disk, checked = [], {}, 0
    for folder, dirs, files in os.walk(faulty):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            checked += 1
            path = Path(folder) / name
            rel, parent = path.relative_to(faulty).as_posix(), path.parent.relative_to(faulty).as_posix()
            if rel in named or any(rel.startswith(u + "/") for u in unlisted):
                continue
            regular = path.is_file()                       # a file, or a link to one
            if regular and not name.endswith((".nii", ".nii.gz")) and not looks_like_dicom(path):
                ignored_on_disk[parent] = ignored_on_disk.get(parent, 0) + 1
            elif not (regular and looks_like_dicom(path) and parent in series_folders):
                unaccounted.append(rel)
    assert checked >= 45 and not unaccounted, unaccounted
    assert ignored_on_disk == ignored
    assert report["summary"]["ignored_files"] == sum(ignored.values())


def test_strict_stops_at_the_first_bad_input(archive, tmp_path):
    _, faulty, _ = archive
    run = _ingest(faulty, tmp_path / "strict", "--strict")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "src-" in run.stderr and "FAULTMARK" not in run.stderr


def test_a_second_ingest_into_the_same_folder_is_locked_out(archive, tmp_path):
    from ctssl.core.lock import OutputLock

    clean, _, _ = archive
    with OutputLock(tmp_path / "busy", "a test holder"):
        run = _ingest(clean, tmp_path / "busy")
    assert run.returncode == 2 and "in use by a test holder" in run.stderr and "Traceback" not in run.stderr


def _tar_members(path: Path):
    data = path.read_bytes()
    offset = 0
    while offset + 512 <= len(data) and data[offset]:
        size = int(data[offset + 124:offset + 136].split(b"\0")[0].strip() or b"0", 8)
        yield offset, size
        offset += 512 + (size + 511) // 512 * 512


@pytest.mark.parametrize("damage", ["bit flip in .hu", "bit flip in .json", "tar header damaged",
                                    "cut at a member boundary", "cut inside a member"])
def test_damaged_shards_are_noticed_by_every_reader(runs, tmp_path, damage):
    from ctssl.shards.verify import verify_shards

    clean_out, _, _, _ = runs
    copy = tmp_path / "shards"
    shutil.copytree(clean_out, copy)
    shard = sorted(copy.glob("train-*.tar"))[0]
    members = list(_tar_members(shard))
    data = bytearray(shard.read_bytes())
    if damage == "bit flip in .hu":
        offset, size = members[0]
        data[offset + 512 + size // 2] ^= 0x10
    elif damage == "bit flip in .json":
        offset, size = members[1]
        data[offset + 512 + size // 3] ^= 0x04
    elif damage == "tar header damaged":
        offset, _ = members[3]
        data[offset + 130] ^= 0x7F
    elif damage == "cut at a member boundary":
        data = data[:members[6][0]]
    else:
        offset, size = members[6]
        data = data[:offset + 512 + size // 2]
    shard.write_bytes(bytes(data))
    problems, _ = verify_shards(copy)
    assert problems
    found = []
    samples = list(iter_samples(copy, on_error=lambda key, reason: found.append((key, reason))))
    assert found, damage
    assert len(samples) < sum(1 for _ in iter_samples(clean_out))
