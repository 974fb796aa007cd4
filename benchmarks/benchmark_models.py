# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Inference benchmark: TransFuse-S/L/L* against MONAI peers (and optionally the authors' TransFuse_S), with fast paths.

One command measures, for every model x input size x device x path: parameters, GMACs, output parity with fp32 eager,
set-up time (ONNX export / torch.compile), batch-1 latency (median, IQR, min-max), batch-B throughput (images/s) and
peak memory, and writes a Markdown report and JSON with ratios to TransFuse-S (fp32 eager) per size and device.

    python benchmarks/benchmark_models.py                                  # default: CPU (+ CUDA if present)
    python benchmarks/benchmark_models.py --authors-repo /tmp/authors      # + the authors' TransFuse_S
    python benchmarks/benchmark_models.py --models transfuse_s unet --paths eager bf16 onnx --sizes 352x352 \\
        --warmup 1 --repeats 3                                             # a selection
    python benchmarks/benchmark_models.py --models transfuse_s authors_s --authors-repo /tmp/authors \
        --paths eager channels_last+bf16 onnx --interleave-rounds 20       # + round-robin latency
    python benchmarks/benchmark_models.py --rejudge benchmarks/output/models/results.json  # re-apply parity rules
    python benchmarks/benchmark_models.py --smoke                          # seconds-scale check that it all runs

Models (``--models``): ``transfuse_s``, ``transfuse_l``, ``transfuse_lstar`` (``transfuse_monai`` TransFuse, eval
mode, random weights: timing does not depend on them), MONAI ``unet``, ``attention_unet``, ``flexible_unet``
(ResNet-34), ``swin_unetr`` (needs ``einops``), and ``authors_s``: the authors' ``TransFuse_S`` imported at run time
from ``--authors-repo`` (never part of this repository). The authors' forward hard-codes a 12x16 token grid and their
DeiT a 12x16 position embedding; at other sizes this script resamples the position embedding (bilinear,
align_corners=True, as their own code does from 14x14) and returns the transformer output as a tensor subclass whose
``view(B, -1, 12, 16)`` uses the real grid -- their code is run unmodified. The final map (``map_2``) is timed.

Paths (``--paths``; a path is a ``+``-joined set of modifiers, e.g. ``channels_last+bf16``):

* ``eager``: fp32 eager PyTorch, the reference of every parity check and of the ratios.
* ``channels_last``: NHWC weights and input.
* ``bf16`` / ``fp16``: ``torch.autocast`` (bf16 on CPU and CUDA; fp16 on CUDA only).
* ``sdpa`` / ``no_sdpa``: force fused scaled-dot-product attention on / off in the transformer blocks (``fused_attn``
  of TransFuse's ``DeviceAwareAttention``, which even when on uses explicit products under bf16/fp16 on a CPU, where
  the fused CPU kernel is slower; MONAI ``WindowAttention.use_flash_attention`` in SwinUNETR). A model's
  library default is one of the two (timm: fused; SwinUNETR: unfused) and is then not measured again but reported as
  "= eager"; models without such attention report n/a.
* ``compile``: ``torch.compile`` (inductor, ``dynamic=False``); compile time (first call at batch 1 and at batch B)
  is reported separately as set-up time. Not in the default paths (it takes minutes per model and input shape on 2
  cores): add it with ``--paths ... compile``; ``--compile-models`` (default ``transfuse_s``) limits it further.
* ``onnx``: ``torch.onnx.export(dynamo=True)`` (dynamic batch) run by ONNX Runtime's CPU provider with as many
  intra-op threads as torch uses; export + session creation is the set-up time. CPU only.
* ``onnx+int8``: the ``onnx`` graph statically quantised to int8 by ``transfuse_monai.export.quantize_onnx_int8`` (the
  library's ``onnx-int8`` export: QDQ, per-channel int8 weights of Conv/MatMul/Gemm, uint8 activations, the
  segmentation head in float32), calibrated on 4 random images (the weights are random too); judged like the
  reduced-precision paths (mask flips, which a random-weight network's near-zero logits make meaningless for int8).
  ``benchmarks/int8_parity.py`` measures a trained checkpoint on real images. CPU only.
* ``trt``: TensorRT through MONAI's ``convert_to_trt`` (the converter behind ``monai.bundle trt_export``), fp16 or fp32
  (``trt+fp32``). CUDA only; on a machine without GPU it is reported as skipped.

Measurements:

* parameters; GMACs of one batch-1 forward from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2; it counts
  convolutions, matrix products and attention, not element-wise operations).
* parity with fp32 eager on the same batch-1 input: max |path - eager| and the share of pixels whose thresholded
  prediction (logit > 0, i.e. probability > 0.5) flips. fp32 paths (channels-last, attention kernels, compile, ONNX,
  TensorRT fp32) pass when max |diff| <= 1e-4 * max(1, max|eager|): they compute the same function up to float
  rounding. Reduced-precision paths (bf16, fp16, TensorRT fp16) pass when at most 0.5% of the mask pixels flip: with
  8 (bf16) or 11 (fp16) mantissa bits, logits of an untrained network drift by several percent of their range, which
  says little about a trained one; the mask is what a segmentation user keeps (``bundle_fast_paths.py`` measures the
  metric change of a trained checkpoint on real data). The weights are random, but BatchNorm statistics are first set
  from a train-mode pass on two random images (``--no-calibrate-bn`` skips this), so that eval-mode logits have a
  realistic scale instead of growing to |100| and more through the residual stages. ``--rejudge results.json``
  rebuilds the report from a previous run's figures with the current criteria, without timing anything.
* batch-1 latency over ``--repeats`` calls (default 3, to keep the default run of every model, size and path within
  about 15 minutes on 2 CPU cores) after ``--warmup`` extra untimed calls: median, interquartile range, min and max.
  The first call at batch 1 (memory, parity) and at batch B (memory) always comes first and warms up.
* throughput: images/s = B / median time of ``--throughput-iters`` calls (default 1) at batch B (``--batch``; default
  16 on CUDA and ``--cpu-batch`` 4 on CPU, recorded in the report).
* peak memory, batch 1 and batch B, on the first call at each batch size after the path is set up (after compilation
  for ``compile``). CPU: the growth of the process's peak RSS over its RSS just before the call; glibc's free memory
  is first returned to the OS (``malloc_trim``) and the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``
  "5"), so the figure is the extra resident memory the call needed (activations, workspaces, ONNX Runtime's arena
  growth), not the weights. CUDA: ``torch.cuda.max_memory_allocated`` growth over the allocation before the call.

Output: the Markdown report on stdout and in ``<out>/results.md``, everything in ``<out>/results.json`` (default
``benchmarks/output/models``, git-ignored). The load average is recorded: compare figures taken on a quiet machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelbench.cli import main  # noqa: E402  (benchmarks/modelbench: models, paths, timing, report)

if __name__ == "__main__":
    main(description=__doc__, script=__file__)
