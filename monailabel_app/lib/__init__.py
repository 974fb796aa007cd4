"""Tasks of the MONAI Label app beyond MONAI Label's own bundle tasks."""
