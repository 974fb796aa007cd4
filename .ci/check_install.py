"""Check that ``pip install .`` alone gives a working library: every module of ``transfuse_monai`` imports, and the
hip task reads a DICOM DX radiograph (pydicom) through the bundle's reader.

Run by ``.ci/run`` in a fresh virtual environment holding nothing but ``pip install .``, from outside the working
tree, so a run-time requirement missing from ``setup.py`` / ``requirements.txt`` fails CI here. Exits non-zero with
the module and the error on the first failure.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tempfile
import traceback
from pathlib import Path


#: module prefix -> (extra of setup.py, the top-level module that extra installs): such modules need their extra
OPTIONAL_EXTRAS = {
    "transfuse_monai.nnunet.trainer": ("nnunet", "nnunetv2"),
}


def import_every_module() -> list[str]:
    import transfuse_monai

    location = Path(transfuse_monai.__file__).resolve().parent
    if location.parent == Path(__file__).resolve().parents[1]:
        raise SystemExit(f"transfuse_monai was imported from the working tree ({location}), not an installed package")
    names = [transfuse_monai.__name__]
    names += [m.name for m in pkgutil.walk_packages(transfuse_monai.__path__, prefix="transfuse_monai.")]
    failed, optional = [], []
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            extra = next((e for prefix, e in OPTIONAL_EXTRAS.items() if name.startswith(prefix)), None)
            if extra is not None and err.name and err.name.split(".")[0] == extra[1]:
                optional.append(f"{name} (the [{extra[0]}] extra)")
                continue
            failed.append(f"{name}:\n{traceback.format_exc(limit=2)}")
        except Exception:  # noqa: BLE001 - report every module that fails, with its error
            failed.append(f"{name}:\n{traceback.format_exc(limit=2)}")
    if optional:
        print("pip install . alone: modules of optional extras skipped: " + ", ".join(optional))
    if failed:
        raise SystemExit("modules that do not import with `pip install .` alone:\n" + "\n".join(failed))
    return names


def read_dicom_radiograph() -> str:
    from monai.transforms import LoadImage

    from transfuse_monai.tasks import get_task
    from transfuse_monai.data.readers import RadiographReader

    task = get_task("hip")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(task.make_sample(Path(tmp) / "hip", n_train=1, n_val=0, n_test=0, size=(40, 48), formats=("dicom",)))
        items = task.datalist(root, "train")
        image = LoadImage(reader=RadiographReader(), image_only=True)(items[0]["image"])
        if tuple(image.shape[-2:]) != (40, 48) or not Path(items[0]["image"]).suffix == ".dcm":
            raise SystemExit(f"unexpected DICOM read: {items[0]['image']} -> shape {tuple(image.shape)}")
        return f"{Path(items[0]['image']).name} {tuple(image.shape)}"


def main() -> int:
    names = import_every_module()
    print(f"pip install . alone: {len(names)} modules of transfuse_monai import")
    print(f"pip install . alone: hip task read a generated DICOM DX radiograph: {read_dicom_radiograph()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
