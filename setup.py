"""Install transfuse_monai: ``pip install -e .`` (requirements are read from requirements.txt)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="transfuse-monai",
    version="0.1.0",
    description="TransFuse (Zhang et al., MICCAI 2021) as MONAI networks, losses and bundles",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["transfuse_monai", "transfuse_monai.*"]),
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "dev": read_requirements("requirements-dev.txt"),
        # kept for existing install commands: the export's requirements are part of install_requires now
        "export": [],
        # OpenVINO IR export and runtime, and its int8 export (NNCF):
        # python -m transfuse_monai.export <bundle> --formats openvino openvino-int8
        "openvino": ["openvino>=2025.0", "nncf>=2.14"],
        # TransFuse inside nnU-Net v2: nnUNetv2_train <dataset> 2d <fold> -tr nnUNetTrainerTransFuse
        # (python -m transfuse_monai.nnunet env prints the nnUNet_extTrainer line that makes nnU-Net find it);
        # nnU-Net's dynamic-network-architectures 0.4 caps timm below 1.0.23, within requirements.txt's range
        "nnunet": ["nnunetv2>=2.8.1,<2.9"],
        # experiment tracking: python -m monai.bundle run ... --tracking mlflow (a local SQLite store by default)
        "mlflow": ["mlflow-skinny>=3", "sqlalchemy", "alembic"],
    },
    entry_points={"console_scripts": ["transfuse-export=transfuse_monai.export:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
