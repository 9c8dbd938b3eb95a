"""The kNN measure's former path, kept only for pretraining's online kNN monitor (``pretrain/train.py``
imports ``knn_accuracy`` from here); new code imports ``ctssl.eval.measures.knn``. Remove this module when
the monitor imports that one."""

from ctssl.eval.measures.knn import knn_accuracy

__all__ = ["knn_accuracy"]
