"""MONAI Deploy application for 2D pictures, kept as a single-file entry point: it runs ``deploy/apps/seg2d``.

    python deploy/transfuse_seg_app.py -m bundles/polyp/models/model.ts -i image.png -o out_dir

Same arguments and outputs as ``python deploy/apps/seg2d ...`` (see ``deploy/README.md``).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "apps" / "seg2d"

if __name__ == "__main__":
    sys.path.insert(0, str(APP_DIR))
    runpy.run_path(str(APP_DIR), run_name="__main__")
