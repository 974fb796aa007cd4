"""Generic helpers shared by the library, the bundles and the benchmarks."""

from transfuse_monai.utils.io import absolute_path, atomic_path, atomic_write_json, atomic_write_text, partial_name

__all__ = ["absolute_path", "atomic_path", "atomic_write_json", "atomic_write_text", "partial_name"]
