# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Benchmarks of transfuse-monai: speed, memory and accuracy measurements that are run by hand, not tests.

One entry point, ``python -m benchmarks <command> [options]`` (run from the repository root; ``python -m benchmarks
--help`` lists the commands). Each command is a module of this package with ``add_arguments(parser)`` and
``run(args)``; :mod:`benchmarks.common` holds what they share. Usage: ``benchmarks/README.md``; measured figures:
``benchmarks/RESULTS.md``.
"""
