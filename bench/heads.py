"""Forward cost of each head on the CPU: ms per clip for a batch of 32 on one thread.

    python bench/heads.py

Scoring at 100x real time on 2 cores (3 s windows, 1.5 s hop) needs <= ~30 ms per window per core,
decoding included; the heads aim well under that. WavLM heads are timed on cached WavLM-Large
shapes (3 layers x 149 frames x 1024), i.e. the head alone, as training sees it.
"""

from __future__ import annotations

import time

import torch

from dfdetect.models.registry import ARCHITECTURES, build_model, count_parameters

SHAPES = {"mel": (2, 128, 301), "lfcc": (60, 301), "wave": (48000,), "wavlm": (3, 149, 1024)}


def main(batch: int = 32, repeats: int = 5) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name, arch in ARCHITECTURES.items():
        model = build_model(name).eval()
        x = {k: torch.randn(batch, *SHAPES[k]) for k in arch.inputs}
        with torch.inference_mode():
            model(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        print(f"{name:13s} {min(times) / batch * 1e3:6.2f} ms/clip forward (batch {batch}, 1 thread, "
              f"min of {repeats}; {count_parameters(model):,} params)")


if __name__ == "__main__":
    main()
