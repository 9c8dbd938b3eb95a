"""Shards from anywhere webdataset's opener reaches (shards/location.py): a local HTTP server (python's
http.server in a thread) and ``pipe:cat``; the manifest, the samples, the training loader, evaluation commands
(knn, extract, similarity) and pretraining read the same from there as from the local folder. ``s3://`` goes
through the AWS CLI: tested with a stand-in ``aws`` on PATH that records its arguments and serves the files."""

from __future__ import annotations

import functools
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ctssl.cli.main import main
from ctssl.eval.inputs.datasets import open_dataset
from ctssl.pretrain.config import resolve_pretrain_config
from ctssl.pretrain.loader import make_loader, split_shards
from ctssl.shards.location import Remote, location
from ctssl.shards.manifest import load_manifest
from ctssl.shards.reader import iter_samples

REPO = Path(__file__).resolve().parents[2]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_root(ct_shards, eval_shards):
    """http://127.0.0.1:PORT serving the folder above the session's shard folders."""
    root = Path(ct_shards).parent.parent
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def _url(http_root, folder) -> str:
    base, root = http_root
    return f"{base}/{Path(folder).relative_to(root).as_posix()}"


def _keys(spec, split="train"):
    return [s["key"] for s in iter_samples(spec, split=split)]


def test_manifest_and_samples_over_http_and_pipe_equal_local(ct_shards, http_root):
    url, pipe = _url(http_root, ct_shards), f"pipe:cat {ct_shards}/{{}}"
    assert load_manifest(url) == load_manifest(pipe) == load_manifest(ct_shards)
    local = list(iter_samples(ct_shards, split="train"))
    for spec in (url, url + "/", url + "/manifest.json", pipe):
        remote = list(iter_samples(spec, split="train"))
        assert [s["key"] for s in remote] == [s["key"] for s in local]
        assert all((a["hu"] == b["hu"]).all() for a, b in zip(remote, local))


def test_missing_remote_shards_are_one_line_errors(ct_shards, http_root):
    with pytest.raises(FileNotFoundError, match="cannot read the shard manifest .*/nowhere/manifest.json"):
        load_manifest(_url(http_root, ct_shards) + "/../nowhere")
    with pytest.raises(ValueError, match=r"needs \{\} where the file name goes"):
        location("pipe:cat /data/ct")


def test_the_training_loader_reads_the_same_batches_over_http(ct_shards, http_root):
    url = _url(http_root, ct_shards)
    batches = {}
    for spec in (str(ct_shards), url, f"pipe:cat {ct_shards}/{{}}"):
        cfg = resolve_pretrain_config(None, None, ["data.image_size=16", "data.shuffle_buffer=16"],
                                      {"data.shards": spec})
        batches[spec] = [b["keys"] for b in make_loader(cfg, None, "meta", 0, 1, 0, 6, 8, 2)]
    assert len(set(map(str, batches.values()))) == 1 and len(batches[url]) == 6
    assert all(isinstance(path, Remote) for path, _ in split_shards(url, "train"))


def test_evaluation_commands_read_shards_over_http(eval_shards, http_root, tmp_path, capsys):
    url = _url(http_root, eval_shards)
    local, remote = open_dataset(str(eval_shards), "region"), open_dataset(url, "region")
    assert remote.fingerprint == local.fingerprint
    assert {s: [e.key for e in remote.samples[s]] for s in remote.samples} == \
        {s: [e.key for e in local.samples[s]] for s in local.samples}
    common = ["--backbone", "random:resnet18:3", "--image-size", "32"]
    results = {}
    for name, data in (("local", str(eval_shards)), ("http", url)):
        out = tmp_path / name
        assert main(["knn", "--data", data, "--label", "region", *common, "--out", str(out)]) == 0
        records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        results[name] = [(r["variant"], r["test"], r["n_train"], r["n_val"], r["n_test"]) for r in records]
        assert main(["extract", "--data", data, *common, "--workers", "0", "--out", str(out)]) == 0
        assert main(["similarity", "--data", data, "--a", "random:resnet18:3", "--b", "random:resnet18:3:1",
                     "--samples", "30", "--image-size", "32", "--out", str(out), "--name", "ab",
                     "--set", "max_features=256"]) == 0
    assert results["http"] == results["local"]
    a, b = (json.loads((tmp_path / n / "similarity" / "ab.json").read_text()) for n in ("local", "http"))
    assert a["n_images"] == b["n_images"] == 30


def test_s3_goes_through_the_aws_cli(ct_shards, tmp_path, monkeypatch):
    """A stand-in ``aws`` (the AWS CLI's ``aws s3 cp s3://BUCKET/KEY -``) serving s3://bucket/ from the shards'
    parent folder, logging each call: the manifest and the samples come through it."""
    log = tmp_path / "aws.log"
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {log}
[ "$1 $2" = "s3 cp" ] && [ "$4" = "-" ] || exit 2
exec cat "{Path(ct_shards).parent}/${{3#s3://bucket/}}"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    spec = f"s3://bucket/{Path(ct_shards).name}"
    assert _keys(spec) == _keys(ct_shards)
    calls = log.read_text().splitlines()
    assert calls[0] == f"s3 cp {spec}/manifest.json -" and any(c.endswith(".tar -") for c in calls)


def test_pretraining_reads_shards_over_http_and_http_against_local_speed(ct_shards, http_root, tmp_path):
    """pretrain/main.py trains from an http:// shard folder; samples/s of the training loader (CT views rendered
    in the workers, as on CPU) from HTTP and from the local folder, in the same run, printed for the docs."""
    url = _url(http_root, ct_shards)
    run = subprocess.run([sys.executable, str(REPO / "pretrain" / "main.py"), "--shards", url, "--out",
                          str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4", "--set", "data.image_size=32",
                          "--set", "data.num_workers=1", "--set", "monitor.knn_samples=16",
                          "--set", "method.simclr.hidden_dim=32"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "backbone.safetensors").exists()
    from ctssl.pretrain.views import CTViewMaker, crop_specs

    rates = {}
    for name, spec in (("local", str(ct_shards)), ("http", url), ("local again", str(ct_shards))):
        cfg = resolve_pretrain_config(None, None, ["data.image_size=32"], {"data.shards": spec})
        maker = CTViewMaker(cfg.data, crop_specs("simclr", cfg), 3)
        steps = sum(n for _, n in split_shards(spec, "train")) // 16
        start = time.perf_counter()
        count = sum(len(b["keys"]) for b in make_loader(cfg, maker, "ct", 0, 1, 0, steps, 16, 2,
                                                        render_in_workers=True))
        rates[name] = count / (time.perf_counter() - start)
    print("training loader samples/s:", {k: round(v, 1) for k, v in rates.items()})
    assert rates["http"] > 0
