"""The kNN monitor: weighted kNN accuracy (eval.knn) of the exported backbone (DINO: the teacher) during
pretraining, on a bank of labelled training samples and queries from a held-out split.

What it reads before step 0 is bounded, whatever the corpus: at most ``monitor.knn_scan`` samples of each
split, a few from each of up to 64 shards drawn at random (seeded), and from those a uniform sample of at
most ``monitor.knn_samples`` labelled ones. Unlabelled shards (an ingest without ``--labels``) turn the
monitor off with one message that names the labels the samples do carry. Damaged samples are skipped,
as the loader skips them.
"""

from __future__ import annotations

import json
import logging
import math
import random

import torch

from ctssl.pretrain.views import CTViewMaker

logger = logging.getLogger(__name__)

MAX_SHARDS = 64


def label_of(meta: dict, label: str):
    value = (meta.get("labels") or {}).get(label, meta.get(label))
    return None if value is None or isinstance(value, (dict, list)) else value


def labelled_sample(shards: str, split: str, label: str, n: int, seed: int, scan: int) -> tuple[list, dict]:
    """(up to ``n`` (image, label) pairs, what was read): a seeded uniform sample of the labelled samples
    among at most ``scan`` samples read from up to ``MAX_SHARDS`` random shards of the split."""
    from ctssl.shards.reader import ShardError, decode_image, iter_shard, shard_paths

    def skip(key, reason):
        logger.warning("kNN monitor: skipped %s: %s", key or "the rest of a shard", reason)

    rng = random.Random(seed)
    paths = shard_paths(shards, split)
    rng.shuffle(paths)
    paths = paths[:MAX_SHARDS]
    per_shard = math.ceil(scan / max(1, len(paths)))
    chosen, seen, read, names = [], 0, 0, set()
    for path in paths:
        for i, raw in enumerate(iter_shard(path, decode=False, on_error=skip)):
            read += 1
            meta = json.loads(raw["json"]) if "json" in raw else {}
            names.update(meta.get("labels") or {})
            value = label_of(meta, label)
            if value is not None:
                seen += 1
                if len(chosen) < n:
                    chosen.append(raw)
                elif (j := rng.randrange(seen)) < n:
                    chosen[j] = raw
            if i + 1 >= per_shard or read >= scan:
                break
        if read >= scan:
            break
    out = []
    for raw in chosen:
        try:
            image, meta = decode_image(raw)
        except ShardError as err:
            skip(err.key, err.reason)
            continue
        out.append((image, str(label_of(meta, label))))
    return out, {"read": read, "labelled": seen, "labels_present": sorted(names)}


class KNNMonitor:
    def __init__(self, cfg, eval_view):
        m = cfg.monitor
        self.label = m.knn_label
        shards = m.knn_shards or cfg.data.shards
        bank, bank_read = labelled_sample(shards, cfg.data.split, self.label, m.knn_samples, cfg.seed, m.knn_scan)
        query, query_read = labelled_sample(shards, m.knn_split, self.label, m.knn_samples, cfg.seed, m.knn_scan) \
            if bank else ([], {"read": 0})
        self.samples_read = bank_read["read"] + query_read["read"]
        self.classes = sorted({v for _, v in bank})
        query = [(img, v) for img, v in query if v in self.classes]
        self.enabled = len(self.classes) >= 2 and len(query) >= 1
        if not self.enabled:
            if not bank:
                present = bank_read["labels_present"]
                logger.warning("kNN monitor off: no sample among the %d read carries the label '%s' (labels in "
                               "the data: %s); set monitor.knn_label to one of them, or monitor.knn_shards to "
                               "labelled shards", bank_read["read"], self.label, present or "none")
            else:
                logger.warning("kNN monitor off: need labelled '%s' samples of >= 2 classes in split '%s' and some "
                               "in split '%s'", self.label, cfg.data.split, m.knn_split)
            return
        self.bank = eval_view([img for img, _ in bank])
        self.bank_labels = torch.tensor([self.classes.index(v) for _, v in bank])
        self.query = eval_view([img for img, _ in query])
        self.query_labels = torch.tensor([self.classes.index(v) for _, v in query])
        logger.info("kNN monitor: %d bank and %d query samples, %d classes of '%s' (%d samples read)",
                    len(bank), len(query), len(self.classes), self.label, self.samples_read)

    @torch.no_grad()
    def _features(self, backbone, images, device, channels_last):
        feats = []
        for start in range(0, len(images), 64):
            x = images[start:start + 64].to(device)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            feats.append(backbone(x).float().cpu())
        return torch.cat(feats)

    def __call__(self, backbone, device, channels_last: bool) -> float:
        from ctssl.eval.measures.knn import knn_accuracy

        was_training = backbone.training
        backbone.eval()
        bank = self._features(backbone, self.bank, device, channels_last)
        query = self._features(backbone, self.query, device, channels_last)
        backbone.train(was_training)
        return knn_accuracy(query, self.query_labels, bank, self.bank_labels, len(self.classes),
                            k=min(20, len(bank)))


def ct_eval_view(maker: CTViewMaker, data_cfg):
    """Whole slices, no augmentation, as evaluation prepares them (pretrain.views.whole_slices)."""
    from ctssl.pretrain.views import whole_slices

    windows = maker.spec.windows
    size = data_cfg.image_size

    def view(slices):
        if windows:
            return torch.cat([whole_slices(slices[i:i + 64], size, windows, data_cfg.normalize_mean,
                                           data_cfg.normalize_std) for i in range(0, len(slices), 64)])
        identity = [CTViewMaker.identity(*s.shape) for s in slices]   # min-max intensity: the renderer's own
        return torch.cat([maker.render(CTViewMaker.collate(slices[i:i + 64], identity[i:i + 64]), sizes=[size])[0]
                          for i in range(0, len(slices), 64)])
    return view


def natural_eval_batch(size: int):
    from ctssl.pretrain.views import natural_eval_view

    single = natural_eval_view(size)
    return lambda images: torch.stack([single(im) for im in images])
