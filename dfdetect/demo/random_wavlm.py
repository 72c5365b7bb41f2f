"""A randomly initialised WavLM saved as a local model folder: the demo's WavLM (no downloads), and
the one the tests and benchmarks load through the same code path as microsoft/wavlm-large."""

from __future__ import annotations

from pathlib import Path

import torch


def save_random_wavlm(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised WavLM as a local model directory; returns the directory.

    These are random weights, for tests ("tiny") and benchmarks ("large"); the real model comes
    from the hub (microsoft/wavlm-large). The directory has the layout of a real local copy
    (config.json, model.safetensors, preprocessor_config.json with do_normalize=True), so it loads
    through the same `load_wavlm(WavLMConfig(model=dir))` path.

    "tiny": hidden 32, 2 layers, 2 heads, 32 conv channels, with WavLM's real conv kernel/stride
        schedule (48,000 samples -> 149 frames); loads and runs in milliseconds.
    "large": microsoft/wavlm-large's architecture (hidden 1024, 24 layers, 16 heads, FFN 4096,
        7 x 512 conv channels, layer-norm CNN, pre-norm transformer), ~315M parameters, ~1.3 GB.
    """
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel
    from transformers import WavLMConfig as HFWavLMConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    common = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=False,
                  conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
    if size == "tiny":
        hf_config = HFWavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                                  num_conv_pos_embedding_groups=2, num_buckets=16,
                                  max_bucket_distance=32, **common)
    elif size == "large":
        hf_config = HFWavLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  intermediate_size=4096, conv_dim=(512,) * 7,
                                  num_conv_pos_embeddings=128,
                                  num_conv_pos_embedding_groups=16, num_buckets=320,
                                  max_bucket_distance=800, **common)
    else:
        raise ValueError(f"size must be 'tiny' or 'large', got {size!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WavLMModel(hf_config)
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(path)
    return path
