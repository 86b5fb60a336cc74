"""The trainer's data loader with worker processes (``--dataloader_num_workers``): started by forkserver, they feed
the same batches as the trainer's own process, so the run's losses are the same."""

from __future__ import annotations

from videox_fun.training.trainer import train


def test_workers_train_as_the_main_process_does(make_config, tmp_path):
    runs = {}
    for workers in (0, 2):
        config = make_config("t2v", output_dir=str(tmp_path / f"w{workers}"), max_train_steps=2,
                             dataloader_num_workers=workers)  # fmt: skip
        runs[workers] = train(config).losses
    assert len(runs[2]) == 2 and runs[2] == runs[0]
