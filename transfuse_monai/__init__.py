"""transfuse-monai: the TransFuse segmentation network (Zhang et al., MICCAI 2021) as MONAI components and bundles.

Importing the package makes its submodules available as attributes, so bundle configs only need
``"$import transfuse_monai"`` to reference ``transfuse_monai.<module>.<name>``.
"""

from transfuse_monai import bundle, data, engines, handlers, inferers, losses, metrics, networks, tasks, transforms, utils

__version__ = "0.1.0"

__all__ = [
    "bundle", "data", "engines", "handlers", "inferers", "losses", "metrics", "networks", "tasks", "transforms", "utils",
    "__version__",
]
