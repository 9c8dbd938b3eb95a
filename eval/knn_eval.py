"""kNN evaluation of one backbone on labelled shards: the bank is one split's frozen features,
the queries other splits' (patients never cross splits). Used by ``ctssl knn`` and ``ctssl demo``.
"""

from __future__ import annotations

import torch

from eval.features import eval_transform, extract, load_backbone
from eval.knn import faiss_knn_predict
from eval.metrics import accuracy, balanced_accuracy


def evaluate_knn(source: str, shards: str, label: str, ks=(10, 20, 100, 200), bank_split: str = "train",
                 query_splits=("val", "test"), temperature: float = 0.07, image_size: int = 64,
                 index: str = "flat") -> list[dict]:
    """One record per k: accuracy and balanced accuracy of weighted kNN (eval.knn) for the
    backbone ``source`` (``random:NAME:IN_CHANS`` or an exported ``backbone.safetensors``).
    Queries whose class is absent from the bank are left out (counted in ``n_query``)."""
    from pretrain.loader import data_kind

    model, card = load_backbone(source)
    transform = eval_transform(card, data_kind(shards), image_size)
    # Features once per backbone; every k reuses them.
    bank, bank_labels, _ = extract(model, shards, [bank_split], label, transform)
    query, query_labels, _ = extract(model, shards, list(query_splits), label, transform)
    classes = sorted(set(bank_labels))
    keep = [i for i, v in enumerate(query_labels) if v in classes]
    b = torch.tensor([classes.index(v) for v in bank_labels])
    q = torch.tensor([classes.index(query_labels[i]) for i in keep])
    records = []
    for k in ks:
        pred = faiss_knn_predict(query[keep], bank, b, len(classes), k, temperature, index=index).argmax(1)
        records.append({"backbone": source, "method": card.get("method"), "label": label, "k": k,
                        "index": index, "temperature": temperature, "bank": bank_split,
                        "queries": list(query_splits), "n_bank": len(b), "n_query": len(q),
                        "accuracy": round(accuracy(q.numpy(), pred.numpy()), 4),
                        "balanced_accuracy": round(balanced_accuracy(q.numpy(), pred.numpy()), 4)})
    return records
