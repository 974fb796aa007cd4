# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The inference benchmark behind ``benchmarks/benchmark_models.py`` (its entry point; see its docstring for usage).

* :mod:`.models`: the model zoo (TransFuse variants, MONAI peers, the authors' TransFuse_S) and how each is built;
* :mod:`.paths`: execution paths (eager, channels_last, bf16, fp16, sdpa, compile, onnx, trt) and parity checks;
* :mod:`.timing`: latency, throughput and peak-memory measurement, including the interleaved rounds;
* :mod:`.report`: ratios, best paths, the Markdown report and ``results.json``;
* :mod:`.cli`: the command line.
"""
