"""The sweep's task registry (eval.sweep.tasks): every task's jobs, run and done check come from one entry, and
the job list is built from them."""

from __future__ import annotations

from ctssl.eval.sweep.config import SweepConfig
from ctssl.eval.sweep.jobs import jobs, missing_jobs, validate
from ctssl.eval.sweep.tasks import TASKS, confounder_name, job_spec


def _config(tmp_path, **changes) -> SweepConfig:
    return SweepConfig(**{"out": str(tmp_path), "data": "d", "backbones": ["a", "b"], "tasks": list(TASKS),
                          "fractions": [0.5, 1.0], "seeds": [0, 1], **changes})


def test_the_job_list_is_each_tasks_dimensions_per_backbone(tmp_path):
    cfg = _config(tmp_path)
    validate(cfg)
    listed = jobs(cfg)
    assert [j["index"] for j in listed] == list(range(len(listed)))
    for task, entry in TASKS.items():
        mine = [j for j in listed if j["task"] == task]
        assert len(mine) == 2 * len(entry.dims(cfg)) and {j["backbone_order"] for j in mine} == {0, 1}
    counts = {t: len([j for j in listed if j["task"] == t]) for t in TASKS}
    assert counts == {"knn": 8, "probe": 8, "finetune": 8, "truncated": 2 * 4 * 4, "hidden": 2 * 5,
                      "confounders": 2 * 3 * 2, "segment": 2 * 2 * 2 * 2}


def test_done_follows_the_records_and_files(tmp_path):
    cfg = _config(tmp_path, tasks=["finetune", "hidden", "confounders"], fractions=[1.0], seeds=[0])
    finetune = next(j for j in jobs(cfg) if j["task"] == "finetune")
    hidden = next(j for j in jobs(cfg) if j["task"] == "hidden")
    confounders = next(j for j in jobs(cfg) if j["task"] == "confounders")
    finished = {("finetune", finetune["backbone"], 1.0, 0, "best_val"),
                ("hidden", hidden["backbone"], 1.0, 0, "fold 0")}
    assert TASKS["finetune"].done(cfg, finetune, finished) and TASKS["hidden"].done(cfg, hidden, finished)
    assert not TASKS["finetune"].done(cfg, finetune, {("finetune", finetune["backbone"], 1.0, 0, "final")})
    assert not TASKS["confounders"].done(cfg, confounders, finished)
    (tmp_path / "confounders").mkdir()
    (tmp_path / "confounders" / f"{confounder_name(confounders)}.json").write_text("{}")
    assert TASKS["confounders"].done(cfg, confounders, set())
    assert confounders not in missing_jobs(cfg) and finetune in missing_jobs(cfg)


def test_a_job_narrows_the_spec_to_its_backbone_fraction_and_seed(tmp_path):
    cfg = _config(tmp_path, image_size=32, grey_window="soft_tissue", n_boot=7)
    spec = job_spec(cfg, {"backbone": "b", "fraction": 0.5, "seed": 1})
    assert (spec.backbones, spec.fractions, spec.seeds, spec.image_size, spec.grey_window, spec.n_boot) == (
        ["b"], [0.5], [1], 32, "soft_tissue", 7)
