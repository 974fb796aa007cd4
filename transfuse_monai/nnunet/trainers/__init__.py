# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""The folder that ``nnUNet_extTrainer`` points at (``python -m transfuse_monai.nnunet env``): nnU-Net imports every
module of it by file name and looks for the ``-tr`` trainer's class there."""
