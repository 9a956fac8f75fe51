"""sd_base's one-object curriculum: the first batches hold one-object scenes only, full-sized, then every scene."""

import torch

from training_jobs.recipes.sd_base import one_object_first


def stream(batch_size: int):
    index = 0
    while True:
        objects = [[{}] * (1 + (index + i) % 3 // 2) for i in range(batch_size)]  # 1, 1, 2, 1, 1, 2, ...
        yield {"latents": torch.arange(index, index + batch_size).float().view(-1, 1),
               "caption": [f"c{index + i}" for i in range(batch_size)],
               "groundtruth": [{"scene": {"objects": o}} for o in objects]}
        index += batch_size


def test_one_object_first_then_everything():
    batches = one_object_first(stream(6), steps=3, batch_size=6)
    early = [next(batches) for _ in range(3)]
    for batch in early:
        assert batch["latents"].shape == (6, 1) and len(batch["caption"]) == 6
        assert all(len(gt["scene"]["objects"]) == 1 for gt in batch["groundtruth"])
        assert [f"c{int(x)}" for x in batch["latents"].view(-1)] == batch["caption"]  # rows stay whole
    later = next(batches)
    assert sorted(len(gt["scene"]["objects"]) for gt in later["groundtruth"]) == [1, 1, 1, 1, 2, 2]
