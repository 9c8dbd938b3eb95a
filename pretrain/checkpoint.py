"""Checkpoints: one function builds the state; atomic writes; automatic resume; export.

``OUT/checkpoints/last.pt`` holds the model (for DINO student and teacher), the optimizer, the grad
scaler, the step and epoch, the configuration, the exported backbone's weights under ``backbone``, and
every process's random-generator states (``rng``: Python, NumPy, torch CPU and CUDA, one entry per
rank), written to a temporary name then ``os.replace``d. Loading uses ``torch.load(weights_only=True)``
and strict state-dict loading. The exported backbone is ``OUT/backbone.safetensors`` with a JSON card
``OUT/backbone.json``; for DINO it is the teacher's, as facebookresearch/dino releases.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ctssl.core.atomic import FILE_MODE, TMP_MARK, atomic_write_text, remove_stale_temporaries


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / "checkpoints" / "last.pt"


def rng_state() -> dict:
    """This process's generator states (weights_only-loadable: tensors, ints, lists)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_state(model, optimizer, scaler, step: int, epoch: int, config: dict, rng: list[dict],
                loader: list[dict] | None = None, deal: dict | None = None) -> dict:
    """``loader``: per rank, each loader worker's (epoch, slots consumed); ``deal``: the epoch dealt again after
    a resume on another world size, while it lasts (pretrain.loader)."""
    state = {"model": model.state_dict(), "backbone": model.export_backbone.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
             "step": step, "epoch": epoch, "config": config, "rng": rng, "loader": loader or []}
    if deal is not None:
        state["deal"] = deal
    return state


class CheckpointWriteError(OSError):
    """A checkpoint or export could not be written (a full disk, a quota); the previous one is intact."""


def _write_failure(path: Path, err: BaseException) -> CheckpointWriteError:
    import errno
    import shutil

    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else " ".join(str(err).split())[:160]
    try:
        free = shutil.disk_usage(path.parent).free
        if free < 64 * 2**20 and not (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)):
            reason = f"{reason}; {free / 2**20:.0f} MiB free on that disk"
    except OSError:
        pass
    return CheckpointWriteError(f"cannot write {path.name} in {path.parent} ({reason}); the previous one is intact. "
                                "Free space (or raise the quota), then rerun the same command to resume.")


def save_checkpoint(state: dict, out: str | Path) -> Path:
    path = checkpoint_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + TMP_MARK, dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:   # torch reports a failed write as a RuntimeError ("unexpected pos")
        raise _write_failure(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# Settings a resumed run may change without changing what it trains: where and how often it writes and
# monitors, the machine's share of the work.
RESUMABLE_CHANGES = ("out", "monitor.", "checkpoint_every", "stop_check_every", "data.num_workers", "compile",
                     "data.record_keys", "memory.", "resolved.num_workers", "resolved.micro_batch_size",
                     "resolved.micro_batches", "resolved.activation", "resolved.estimated", "resolved.whole_batch",
                     "resolved.budget", "resolved.channels_last", "resolved.processes", "resolved.batch_per_process")


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """Settings (dotted keys) that differ between a checkpoint's resolved configuration and this run's,
    apart from ``RESUMABLE_CHANGES``: key -> (saved, current)."""
    a, b = _flatten(saved or {}), _flatten(current)
    keys = sorted(set(a) | set(b))
    return {k: (a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)}


def clean_temporaries(out: str | Path) -> int:
    """Delete what killed writes left in ``OUT`` (checkpoints and exports under temporary names)."""
    return remove_stale_temporaries(out)


def load_checkpoint(out: str | Path) -> dict | None:
    path = checkpoint_path(out)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"Checkpoint '{path}' cannot be read ({type(err).__name__}: {str(err)[:200]}); move it "
                         "away to start over, or restore it from a backup.") from None


def restore(state: dict, model, optimizer, scaler) -> None:
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"Checkpoint does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}. "
                         "Was it written with another method or backbone?")
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def export_backbone(model, out: str | Path, card: dict, patients: dict | None = None) -> Path:
    """``backbone.safetensors`` (``model.export_backbone``: the backbone that is evaluated) and its card; with
    ``patients`` (``{"salt_check", "split", "patients"}``: whom it was pretrained on) also
    ``backbone.patients.json``, which the card references with its count, SHA-256 and the salt's check value
    (``eval.inputs.overlap`` checks every evaluation against it)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    out = Path(out)
    path = out / "backbone.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.export_backbone.state_dict().items()}
    tmp = out / f"backbone{TMP_MARK}.safetensors"
    try:
        if patients is not None:
            card = {**card, "pretraining_patients": write_patients_record(out / PATIENTS_FILE, patients)}
        save_file(tensors, str(tmp), metadata={"format": "pt", "ctssl": "backbone"})
        os.replace(tmp, path)
        atomic_write_text(out / "backbone.json", json.dumps(card, indent=1, default=str) + "\n")
    except (OSError, SafetensorError) as err:
        if tmp.exists():
            tmp.unlink()
        raise _write_failure(path, err) from None
    return path


PATIENTS_FILE = "backbone.patients.json"


def write_patients_record(path: Path, patients: dict) -> dict:
    """The pretraining patients (sorted pseudonyms) at ``path``; the card's reference to them."""
    import hashlib

    body = json.dumps({"salt_check": patients["salt_check"], "split": patients["split"],
                       "patients": sorted(patients["patients"])}, indent=0) + "\n"
    atomic_write_text(path, body)
    return {"file": path.name, "count": len(patients["patients"]), "split": patients["split"],
            "salt_check": patients["salt_check"], "sha256": hashlib.sha256(body.encode()).hexdigest()}
