"""Every study recipe resolves, keeps the numbers its source gives, and trains two steps on CPU at a tiny
size (so none can rot); --help lists them; bad settings are one clear error."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctssl.core.config import ConfigError, recipe_names
from ctssl.pretrain.config import RECIPES, resolve_pretrain_config, validate

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.image_size=32", "data.global_batch_size=4", "max_steps=2", "data.num_workers=0",
        "method.dino.output_dim=128", "method.dino.hidden_dim=64", "method.dino.bottleneck_dim=32",
        "method.dino.local_size=16", "method.dino.local_crops=2", "method.simclr.hidden_dim=64",
        "monitor.knn_samples=8", "monitor.tensorboard=false", "checkpoint_every=0", "data.shuffle_buffer=8"]


def test_there_are_the_study_recipes_and_each_cites_a_source():
    assert set(recipe_names(RECIPES)) == {"simclr_rn50_radnet12m", "simclr_rn50_ct", "simclr_rn50_imagenet",
                                          "dino_rn50_ct", "dino_rn50_imagenet", "dino_vits16_ct", "dino_vits16_imagenet",
                                          "dino_continued_ct"}
    for name in recipe_names(RECIPES):
        text = (RECIPES / f"{name}.yaml").read_text()
        assert text.startswith("#") and "Source:" in text, name
        assert isinstance(yaml.safe_load(text), dict)


def test_recipes_hold_their_published_numbers():
    radnet = resolve_pretrain_config("simclr_rn50_radnet12m")
    assert (radnet.data.global_batch_size, radnet.optim.lr, radnet.method.simclr.temperature, radnet.epochs,
            radnet.data.image_size, radnet.data.intensity, radnet.method.simclr.gather_distributed,
            radnet.model.sync_bn) == (4096, 4.8, 0.5, 100, 256, "minmax", False, False)
    ours = resolve_pretrain_config("simclr_rn50_ct")
    assert (ours.data.intensity, ours.method.simclr.gather_distributed, ours.model.sync_bn) == ("windows", True, True)
    vit = resolve_pretrain_config("dino_vits16_imagenet")
    assert (vit.optim.weight_decay, vit.optim.weight_decay_end, vit.optim.clip_grad, vit.model.drop_path,
            vit.method.dino.local_crops, vit.data.global_batch_size) == (0.04, 0.4, 3.0, 0.1, 8, 512)
    rn50 = resolve_pretrain_config("dino_rn50_ct")
    assert (rn50.optim.name, rn50.optim.base_lr, rn50.method.dino.global_scale, rn50.data.kind) == (
        "sgd", 0.03, [0.14, 1.0], "ct")
    # The user's file and --set come after the recipe.
    assert resolve_pretrain_config("dino_rn50_ct", None, ["optim.base_lr=0.1"]).optim.base_lr == 0.1
    with pytest.raises(ConfigError, match="Unknown recipe 'nope'"):
        resolve_pretrain_config("nope")


@pytest.mark.parametrize("name", ["simclr_rn50_radnet12m", "simclr_rn50_ct", "simclr_rn50_imagenet",
                                  "dino_rn50_ct", "dino_rn50_imagenet", "dino_vits16_ct", "dino_vits16_imagenet"])
def test_every_recipe_trains_two_steps(name, ct_shards, natural_shards, tmp_path):
    from ctssl.pretrain.train import train

    natural = name.endswith("imagenet")
    label = ["monitor.knn_label=class"] if natural else []
    cfg = resolve_pretrain_config(name, None, [*TINY, *label],
                                  {"data.shards": str(natural_shards if natural else ct_shards), "out": str(tmp_path)})
    validate(cfg)
    before = signal.getsignal(signal.SIGTERM)
    result = train(cfg)
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])
    assert signal.getsignal(signal.SIGTERM) is before      # the preemption handler lives only while training
    card = json.loads((tmp_path / "backbone.json").read_text())
    assert card["config"]["resolved"]["global_batch"] == 4
    assert card["exported"] == ("teacher" if name.startswith("dino") else "backbone")


def test_help_lists_the_recipes_and_bad_settings_are_one_line():
    run = subprocess.run([sys.executable, str(REPO / "pretrain" / "main.py"), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and all(name in run.stdout for name in recipe_names(RECIPES))
    for bad, expect in ((["--set", "precision=fp8"], "precision"), (["--set", "data.batch_size=0"], "batch_size"),
                        (["--set", "data.windows=[lung,nope]"], "nope"), (["--recipe", "nope"], "Unknown recipe"),
                        (["--shards", "/nonexistent/shards"], "/nonexistent/shards")):
        run = subprocess.run([sys.executable, str(REPO / "pretrain" / "main.py"), *bad, "--out", "/tmp/ctssl-x"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and expect in run.stderr and "Traceback" not in run.stderr, (bad, run.stderr)
