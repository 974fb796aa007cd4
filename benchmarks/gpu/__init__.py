# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The GPU run kit (``bash benchmarks/gpu/run.sh --out DIR``; ``benchmarks/gpu/README.md``): :mod:`.kit` runs the
stages (``python -m benchmarks gpu-kit``), :mod:`.report` writes their report, :mod:`.curves` draws the training
curves, :mod:`.pack_data` packs the data that travels with the kit (``python -m benchmarks gpu-pack-data``)."""
