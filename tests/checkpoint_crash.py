"""Stop a checkpoint save at one of its two risky moments, for the crash tests.

- "write": the new checkpoint's model.safetensors is half written (in its temporary directory);
- "swap": the old checkpoint has been renamed aside and the new one is not yet in its place.

`interrupt_save(stage, action)` patches tinygrad_gpt.checkpoint so that `action()` runs at that moment:
raise to simulate a crash in-process, or sleep so that a test can `kill -9` the process. Run as a script,

    python tests/checkpoint_crash.py STAGE [flags of python -m tinygrad_gpt.train]

trains with a save that prints "checkpoint: pausing at STAGE" on stderr and then sleeps there.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tinygrad_gpt import checkpoint

STAGES = ("write", "swap")


def interrupt_save(stage: str, action, setattr=setattr) -> None:
    """Run action() at `stage` of every later save; `setattr` may be pytest's monkeypatch.setattr (undone after)."""
    if stage == "write":
        write_synced = checkpoint._write_synced

        def half_write_then_act(path, data: bytes) -> None:
            if Path(path).name != "model.safetensors":
                return write_synced(path, data)
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                action()
                f.write(data[len(data) // 2 :])
                f.flush()
                os.fsync(f.fileno())

        setattr(checkpoint, "_write_synced", half_write_then_act)
    elif stage == "swap":
        rename = checkpoint._rename

        def rename_then_act(src: Path, dst: Path) -> None:
            rename(src, dst)
            if dst.name.endswith(".old"):  # the old checkpoint moved aside, the new one not yet in place
                action()

        setattr(checkpoint, "_rename", rename_then_act)
    else:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def _pause(stage: str) -> None:
    print(f"checkpoint: pausing at {stage}", file=sys.stderr, flush=True)
    time.sleep(60)


if __name__ == "__main__":
    from tinygrad_gpt import train

    stage = sys.argv[1]
    interrupt_save(stage, lambda: _pause(stage))
    sys.exit(train.main(sys.argv[2:]))
