"""``python -m machine_translation.train [key=value ...]``: train a model.

With no arguments it trains English→French on the corpora shipped in ``data/`` and
leaves ``runs/en-fr/<timestamp>/checkpoints/best.pt``, which ``translate`` and
``evaluate`` find by themselves. Any config field can be overridden
(``model=base optim.lr=3e-4 trainer.max_minutes=60``); ``+experiment=multi30k``
selects a whole experiment; ``resume=true`` continues the latest run. Under
``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel.

``--config-name gpt`` trains the GPT mode instead (``conf/gpt.yaml``): a decoder-only
language model on Tiny Shakespeare, with the same loop, for ``sample``.
"""

from __future__ import annotations

import sys

STARTUP_INTERRUPTED = "interrupted before training started: nothing saved"

try:  # Ctrl+C while torch and the rest load (a few seconds) is one line too
    import hydra
    from omegaconf import DictConfig

    from machine_translation.checkpoints.files import CheckpointError
    from machine_translation.config.compose import register_configs, to_train_config
    from machine_translation.data.corpus import DataError
    from machine_translation.runtime.allocator import keep_freed_memory
    from machine_translation.training.distributed import shutdown_distributed
    from machine_translation.training.recipes import train
    from machine_translation.training.state import NonFiniteLossError
except KeyboardInterrupt:
    print(STARTUP_INTERRUPTED, file=sys.stderr)
    sys.exit(130)

register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """The command line: compose the config, train, turn known errors into one line."""
    try:
        train(to_train_config(cfg))
    except (DataError, CheckpointError, NonFiniteLossError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before training started (then Ctrl+C saves)
        print(STARTUP_INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    keep_freed_memory()  # a command that trains and exits: reuse freed blocks
    main()
