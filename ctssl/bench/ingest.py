"""``ctssl bench ingest``: ctssl ingest vs a naive per-slice baseline, in the same run.

Corpus: synthetic 512x512 CT series (``ctssl synth`` catalogue studies written uncompressed, and
one written as JPEG 2000 lossless), cached in ``OUT/corpus``.

Measured, each on one core (one process):

- baseline: for every uncompressed slice, ``pydicom.dcmread`` + ``apply_modality_lut`` + Pillow's bilinear
  resize to the same 256x256 output as ingest + a 16-bit PNG written into a tar (what a straightforward
  script does for the same output; no grouping, no checks, no metadata);
- ``ctssl ingest`` end to end (discovery, header scan, grouping, HU, resize to 256, encode,
  shards, manifest) on the same files, ``--workers 1``;
- ``ctssl ingest`` on the JPEG 2000 series;
- shard decode (``iter_samples``) of the 256x256 shards;
- candidate sample encodings on the ingested slices: bytes per slice and decode rate.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from ctssl.bench.corpus import BENCH_SALT
from ctssl.bench.settings import IngestBench
from ctssl.core.atomic import atomic_write_text
from ctssl.core.machine import machine_info
from ctssl.data.pseudonym import fixed_salt

OUTPUT_SIZE = 256       # ingest's image_size here, and the baseline's output

# Catalogue studies of data.synth_study: 0, 4, 5 are written uncompressed, 1 as JPEG 2000.
UNCOMPRESSED = (0, 4, 5)
JPEG2000 = (1,)


def _corpus(root: Path, matrix: int) -> Path:
    from ctssl.data.synth import SynthConfig, generate_study, make_plan

    cfg = SynthConfig(out=str(root), patients=max(UNCOMPRESSED + JPEG2000) + 1, matrix=matrix, seed=0)
    for index in UNCOMPRESSED + JPEG2000:
        if not (root / make_plan(cfg, index).relpath).exists():
            (root / "dicom").mkdir(parents=True, exist_ok=True)
            generate_study(cfg, index)
    return root


def _files(root: Path, indices) -> list[Path]:
    """The CT image files of the studies (not their DICOM SEG masks: the baseline makes images only)."""
    import pydicom

    from ctssl.data.ingest.discover import looks_like_dicom

    files = []
    for index in indices:
        folder = root / "dicom" / f"case-{index:04d}"
        files += [p for p in sorted(folder.rglob("*")) if p.is_file() and looks_like_dicom(p)
                  and pydicom.dcmread(p, force=True, stop_before_pixels=True).get("Modality") == "CT"]
    return files


def naive_baseline(files: list[Path], out: Path | None, size: int = OUTPUT_SIZE) -> tuple[int, float]:
    """The same output as ingest, done plainly: per slice dcmread + modality LUT + bilinear resize to
    ``size`` x ``size`` (Pillow, float32, as ingest resizes) + a 16-bit PNG (HU + 32768) added to one tar at
    ``out``; returns (slices, seconds).

    With ``out=None`` nothing is resized or written: the read-only floor of any pydicom-based pipeline.
    """
    import tarfile

    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut

    n, start = 0, time.perf_counter()
    with contextlib.ExitStack() as stack:
        tar = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            tar = stack.enter_context(tarfile.open(out / "naive-00000.tar", "w"))
        for path in files:
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            hu = apply_modality_lut(ds.pixel_array, ds)
            frames = hu.reshape(-1, *hu.shape[-2:])         # a multi-frame file: one slice per frame
            for frame in frames if tar is not None else ():
                image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.float32), mode="F")
                image = image.resize((size, size), Image.BILINEAR)
                png = np.clip(np.rint(np.asarray(image)) + 32768, 0, 65535).astype(np.uint16)
                buf = io.BytesIO()
                Image.fromarray(png).save(buf, format="PNG")
                info = tarfile.TarInfo(f"{n:06d}.png")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
                n += 1
            if tar is None:
                n += len(frames)
    return n, time.perf_counter() - start


def _ingest(sources: list[Path], out: Path) -> tuple[int, float]:
    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest

    start = time.perf_counter()
    report = run_ingest(IngestConfig(sources=[str(s) for s in sources], out=str(out), image_size=OUTPUT_SIZE,
                                     workers=1, splits=SplitFractions(1.0, 0.0, 0.0)))
    return report["summary"]["slices_written"], time.perf_counter() - start


def _decode(shards: Path, repeats: int = 3) -> tuple[int, float, list[np.ndarray]]:
    from ctssl.shards.reader import iter_shard, shard_paths

    raw = [s for p in shard_paths(shards) for s in iter_shard(p, decode=False)]
    from ctssl.shards.encoding import decode_hu

    start = time.perf_counter()
    for _ in range(repeats):
        images = [decode_hu(s["hu"]) for s in raw]
        for s in raw:
            json.loads(s["json"])
    return len(raw) * repeats, time.perf_counter() - start, images


def _encodings(images: list[np.ndarray]) -> list[dict]:
    """Bytes per slice and decode rate of candidate encodings of the same int16 slices."""
    import zstandard
    from PIL import Image

    from ctssl.shards.encoding import decode_hu, encode_hu

    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    def png16(a):
        buf = io.BytesIO()
        Image.fromarray((a.astype(np.int32) + 32768).astype(np.uint16)).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    shape = images[0].shape
    candidates = {
        "npy (raw int16)": (npy, lambda b: np.load(io.BytesIO(b))),
        "npy + zlib-1": (lambda a: zlib.compress(npy(a), 1), lambda b: np.load(io.BytesIO(zlib.decompress(b)))),
        "png16 (Pillow)": (png16, lambda b: (np.asarray(Image.open(io.BytesIO(b)), np.int32) - 32768).astype(np.int16)),
        "int16 + zstd-3": (lambda a: zc.compress(a.tobytes()),
                           lambda b: np.frombuffer(zd.decompress(b), np.int16).reshape(shape)),
        "CTHU: shuffled int16 + zstd-3 (chosen)": (encode_hu, decode_hu),
    }
    rows = []
    for name, (enc, dec) in candidates.items():
        blobs = [enc(a) for a in images]
        start = time.perf_counter()
        decoded = [dec(b) for b in blobs]
        seconds = time.perf_counter() - start
        assert all(np.array_equal(d, a) for d, a in zip(decoded, images)), name
        rows.append({"encoding": name, "bytes_per_slice": round(float(np.mean([len(b) for b in blobs]))),
                     "decode_slices_per_s": round(len(blobs) / seconds, 1)})
    return rows


def result_path(cfg: IngestBench) -> Path:
    return Path(cfg.out) / "ingest-bench.json"


def run(cfg: IngestBench) -> dict:
    """Measure, write OUT/ingest-bench.json and return the result."""
    out, matrix = Path(cfg.out), cfg.matrix
    corpus = _corpus(out / "corpus", matrix)
    plain, j2k = _files(corpus, UNCOMPRESSED), _files(corpus, JPEG2000)
    with tempfile.TemporaryDirectory(dir=out) as tmp, fixed_salt(BENCH_SALT):
        tmp = Path(tmp)
        base_n, base_s = naive_baseline(plain, tmp / "naive")
        read_n, read_s = naive_baseline(plain, None)
        plain_src = [corpus / "dicom" / f"case-{i:04d}" for i in UNCOMPRESSED]
        ing_n, ing_s = _ingest(plain_src, tmp / "shards")
        j2k_n, j2k_s = _ingest([corpus / "dicom" / f"case-{i:04d}" for i in JPEG2000], tmp / "shards-j2k")
        dec_n, dec_s, images = _decode(tmp / "shards")
        shard_bytes = sum(p.stat().st_size for p in (tmp / "shards").glob("*.tar"))
        encodings = _encodings(images)
        shutil.rmtree(tmp / "naive")
    rows = {
        "naive_baseline_slices_per_s_per_core": round(base_n / base_s, 1),
        "ingest_slices_per_s_per_core": round(ing_n / ing_s, 1),
        "ingest_vs_baseline": round((ing_n / ing_s) / (base_n / base_s), 2),
        "read_only_slices_per_s_per_core": round(read_n / read_s, 1),
        "ingest_vs_read_only": round((ing_n / ing_s) / (read_n / read_s), 2),
        "ingest_jpeg2000_slices_per_s_per_core": round(j2k_n / j2k_s, 1),
        "shard_decode_slices_per_s_per_core": round(dec_n / dec_s, 1),
        "shard_bytes_per_slice": round(shard_bytes / ing_n),
    }
    result = {"benchmark": "ingest", "input_matrix": matrix, "output_size": OUTPUT_SIZE,
              "slices": {"uncompressed": len(plain), "jpeg2000": len(j2k)}, "results": rows,
              "encodings": encodings, "machine": machine_info()}
    atomic_write_text(result_path(cfg), json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    r = result["results"]
    lines = [f"ingest benchmark ({result['slices']['uncompressed']} uncompressed + "
             f"{result['slices']['jpeg2000']} JPEG 2000 slices, {result['input_matrix']}^2 -> 256^2, one core)",
             f"  naive baseline (dcmread + LUT + resize + PNG16)   {r['naive_baseline_slices_per_s_per_core']:>9.1f} slices/s",
             f"  read only (dcmread + modality LUT, no output)    {r['read_only_slices_per_s_per_core']:>9.1f} slices/s",
             f"  ctssl ingest, uncompressed                        {r['ingest_slices_per_s_per_core']:>9.1f} slices/s"
             f"  ({r['ingest_vs_baseline']:.2f}x baseline, {r['ingest_vs_read_only']:.2f}x read only)",
             f"  ctssl ingest, JPEG 2000 lossless                  {r['ingest_jpeg2000_slices_per_s_per_core']:>9.1f} slices/s",
             f"  shard decode (256^2)                              {r['shard_decode_slices_per_s_per_core']:>9.1f} slices/s",
             f"  shard bytes per slice                             {r['shard_bytes_per_slice']:>9d}",
             "  candidate encodings (same slices):"]
    for row in result["encodings"]:
        lines.append(f"    {row['encoding']:<40s} {row['bytes_per_slice']:>8d} B/slice  "
                     f"{row['decode_slices_per_s']:>9.1f} decodes/s")
    return "\n".join(lines)


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    return [["ingest 512→256, one core", f"{r['ingest_slices_per_s_per_core']:,.0f} slices/s",
             f"naive pydicom + resize + PNG16 {r['naive_baseline_slices_per_s_per_core']:,.1f}/s",
             f"{r['ingest_vs_baseline']:.1f}x"],
            ["ingest, JPEG 2000 input, one core", f"{r['ingest_jpeg2000_slices_per_s_per_core']:,.0f} slices/s", "", ""],
            ["shard decode, one core", f"{r['shard_decode_slices_per_s_per_core']:,.0f} slices/s",
             f"bare dcmread + LUT {r['read_only_slices_per_s_per_core']:,.0f}/s",
             f"{r['shard_decode_slices_per_s_per_core'] / r['read_only_slices_per_s_per_core']:.1f}x"],
            ["shard size", f"{r['shard_bytes_per_slice']:,} bytes/slice", "", ""]]
